"""What importing costs, and what the packages may depend on outside the project.
The directions between our own packages are import-linter contracts (pyproject.toml,
`make lint`); these are the checks it cannot make."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def loaded_after(code: str) -> set[str]:
    """Top-level modules loaded by a fresh interpreter after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def test_the_spec_is_a_leaf_without_torch():
    loaded = loaded_after("import kdcore.spec, kdcore.errors, kdcore")
    assert not loaded & {"torch", "torchvision", "matplotlib", "numpy"}, loaded


def test_the_kd_command_loads_neither_torch_nor_the_server():
    loaded = loaded_after(
        "from kdservice.cli import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()): main(['--help'])"
    )
    assert not loaded & {"torch", "sqlalchemy", "fastapi", "celery", "app", "worker", "kdcore"}, (
        loaded
    )


def test_kdcore_reads_no_environment_variables():
    for f in (ROOT / "kdcore").rglob("*.py"):
        text = f.read_text()
        assert "os.environ" not in text and "getenv" not in text, f


def test_the_client_imports_only_httpx_pydantic_and_the_standard_library():
    """kdservice.client is what other programs embed: no server, no torch."""
    files = list((ROOT / "kdservice" / "client").rglob("*.py"))
    assert len(files) >= 6
    allowed = {"kdservice", "httpx", "pydantic", "yaml", "__future__"}
    for f in files:
        foreign = {r for r in imported_roots(f) if r not in sys.stdlib_module_names} - allowed
        assert foreign == set(), (f, foreign)
