"""The `kdcore` command line, in the test's process or as its own."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path


def kdcore_cli(*args: object, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`python -m kdcore.cli ARGS` as its own process: for the commands that run a job
    (its progress lines, its exit through the interpreter)."""
    return subprocess.run(
        [sys.executable, "-m", "kdcore.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def kdcore_here(*args: object, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """The same command line through `kdcore.cli.main` in this process (what the console
    script calls), for the commands that only read: the same output and exit code,
    without an interpreter and torch's import per call (2-4 s each on 2 cores)."""
    from kdcore.cli import main

    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    try:
        os.chdir(cwd or before)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
