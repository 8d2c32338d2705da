"""kdcore is a library: it must not import the service (DESIGN.md section 1)."""

import ast
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


def test_kdcore_imports_neither_app_nor_worker():
    files = list((ROOT / "kdcore").rglob("*.py"))
    assert len(files) > 10
    offenders = {str(f.relative_to(ROOT)): imported_roots(f) & {"app", "worker"} for f in files}
    assert {f: r for f, r in offenders.items() if r} == {}


def test_kdcore_reads_no_environment_variables():
    for f in (ROOT / "kdcore").rglob("*.py"):
        text = f.read_text()
        assert "os.environ" not in text and "getenv" not in text, f


def test_the_client_imports_only_httpx_pydantic_and_the_standard_library():
    """kdservice.client is what other programs embed: no server, no torch."""
    files = list((ROOT / "kdservice").rglob("*.py"))
    assert len(files) >= 6
    allowed = {"kdservice", "httpx", "pydantic", "yaml", "__future__"}
    import sys

    for f in files:
        foreign = {r for r in imported_roots(f) if r not in sys.stdlib_module_names} - allowed
        assert foreign == set(), (f, foreign)
