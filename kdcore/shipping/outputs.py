"""report.json: the run's figures and every output's name, size and sha256, written
atomically (a reader never sees half a report)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kdcore.io.checkpoints import atomic_write


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_report(report: dict[str, Any], files: dict[str, Path], out_dir: Path) -> None:
    """Every output's name, size and sha256 into the report, then report.json."""
    report["files"] = {
        fmt: {"name": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for fmt, p in files.items()
    }
    blob = json.dumps(report, indent=2).encode()
    atomic_write(out_dir / "report.json", lambda fh: fh.write(blob))
