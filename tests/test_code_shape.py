"""The size rule of docs/development.md that no linter checks: no function in the
library, the service, the workers or the client is longer than 80 lines (ruff checks
complexity; this checks length). Alembic's revision scripts (app/db/migrations) are
records of a schema, written once and never edited: not counted."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80
MIGRATIONS = ROOT / "app" / "db" / "migrations"


def test_no_function_is_longer_than_80_lines():
    too_long = []
    for package in ("kdcore", "kdservice", "app", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            if path.is_relative_to(MIGRATIONS):
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > MAX_LINES:
                        too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert too_long == []


def test_the_readme_is_an_entrance_and_its_figures_live_in_the_benchmarks_page():
    """At most 300 lines; the only table is the documentation index: each measurement
    table has one home, docs/benchmarks.md."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300
    table_rows = [line for line in lines if line.startswith("|")]
    assert table_rows and all("docs/" in row or set(row) <= set("|- ") for row in table_rows[1:])
    assert table_rows[0].startswith("| page |")
