"""Files a job reads from this host's disk (a dataset folder, a shard, a text or npz
file): regular files only, never reached through a symbolic link.

A link inside a folder a tenant controls could point at another tenant's data or at any
host file; following it would read that file for the job, and an error that depended on
the target (missing, unreadable, not an archive) would tell the tenant whether the host
path exists. So a link is refused by what it is, not by where it points: the messages
here name only the entry under the dataset's own folder, and never look at the target.
Every reader of dataset files lists and opens through these three calls.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from kdcore.errors import DataError


def _refuse_link(path: Path) -> None:
    raise DataError(f"{path.name} is a symbolic link: dataset files are read only as themselves")


def regular_file(path: Path) -> Path:
    """`path` if it is a regular file itself (not a link, not a folder or a device)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise DataError(f"{path.name}: no such file") from None
    if stat.S_ISLNK(info.st_mode):
        _refuse_link(path)
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path.name} is not a regular file")
    return path


def regular_files(folder: Path, suffix: str | None = None) -> list[Path]:
    """The regular files directly inside `folder` (name order), links skipped unread."""
    with os.scandir(folder) as entries:
        return sorted(
            Path(entry.path)
            for entry in entries
            if entry.is_file(follow_symlinks=False)
            and (suffix is None or entry.name.endswith(suffix))
        )


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading without following a link at its last component
    (O_NOFOLLOW), checked on the open handle (nothing can swap it after the check)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DataError(f"{Path(path).name}: no such file") from None
    except OSError as exc:
        if os.path.islink(path):
            _refuse_link(Path(path))
        raise DataError(f"{Path(path).name}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"{Path(path).name} is not a regular file")
    return os.fdopen(fd, "rb")
