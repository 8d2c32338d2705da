"""What a check of an untrusted file costs in memory, measured in a fresh process: the
growth of its peak resident size (VmHWM) across one call, and the refusal it raised."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import importlib, json, sys
from pathlib import Path
from kdcore.errors import KDError
module, function, path = sys.argv[1:4]
check = getattr(importlib.import_module(module), function)
import onnx  # heavy imports first: they are not the file's cost
def peak():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
before = peak()
try:
    check(Path(path))
    said = ""
except KDError as exc:
    said = str(exc)
print(json.dumps({"growth": peak() - before, "said": said}))
"""


def refusal_and_growth(target: str, path: Path) -> tuple[str, int]:
    """(the refusal's message, peak growth in bytes) of `module:function`(path) run in a
    child process; the message is empty if it was accepted."""
    module, function = target.split(":")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, module, function, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["said"], int(result["growth"])
