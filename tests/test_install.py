"""`make run` installs what serving needs, not the development tools: the dev extra
(pytest, mypy, ruff, selenium, schemathesis, moto, mlflow...) belongs to `make test`.

Read from the Makefile's own recipe (`make -n`, for a venv that does not exist yet, as on
a fresh clone) and from the packages' metadata: what `pip install -e .` pulls in is the
closure of kdservice's requirements without extras."""

from __future__ import annotations

import shlex
import subprocess
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# the tools that made a serving venv 6.4 GB: each must stay out of `make run`
HEAVY_TOOLS = {"pytest", "mypy", "ruff", "schemathesis", "selenium", "moto", "mlflow"}


def requirement_closure(name: str) -> set[str]:
    """The distributions `pip install NAME` (no extras) brings in, from installed metadata."""
    seen: set[str] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(name, ())]
    while todo:
        current, extras = todo.pop()
        try:
            dist = distribution(current)
        except PackageNotFoundError:  # a requirement for another platform or Python
            continue
        key = canonicalize_name(dist.metadata["Name"])
        if key in seen and not extras:
            continue
        seen.add(key)
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = extras or ("",)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in wanted):
                continue
            todo.append((req.name, tuple(req.extras)))
    return seen


def dev_only_packages() -> set[str]:
    """The dev extra's packages that serving does not need."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}
    return dev - requirement_closure("kdservice")


def make_dry_run(target: str, venv: Path) -> list[list[str]]:
    out = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    # only the pip lines: others (services, browser) are shell that shlex need not parse
    lines = [ln for ln in out.stdout.splitlines() if "pip" in ln and " install " in ln]
    return [shlex.split(line) for line in lines]


def pip_installs(commands: list[list[str]]) -> list[list[str]]:
    return [c[c.index("install") + 1 :] for c in commands if "pip" in c[0] and "install" in c]


def test_make_run_on_a_fresh_clone_installs_no_dev_only_package(tmp_path: Path):
    dev_only = dev_only_packages()
    assert dev_only >= HEAVY_TOOLS, sorted(dev_only)
    installs = pip_installs(make_dry_run("run", tmp_path / "venv"))
    named = [arg for args in installs for arg in args if not arg.startswith("-")]
    # the project without extras, the pinned torch pair, pip itself: nothing else
    assert "." in named, installs
    assert not [a for a in named if a.startswith(".[")], installs
    names = {canonicalize_name(Requirement(a).name) for a in named if a != "."}
    assert names <= {"pip", "torch", "torchvision"}, installs


def test_make_test_adds_the_dev_extra(tmp_path: Path):
    installs = pip_installs(make_dry_run("test", tmp_path / "venv"))
    assert [".[dev]"] in [[a for a in args if not a.startswith("-")] for args in installs]
