"""Safe reading of untrusted zip/tar archives: members are read into memory one by
one (never extracted by path), with caps on file count and unpacked bytes.
Absolute paths, `..`, links and device files are refused before anything is read."""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from kdcore.errors import DataError

MAX_FILES = 200_000
MAX_UNPACKED_BYTES = 2 * 1024**3


def _check_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise DataError(f"archive member {name!r} escapes the archive with '..'")
    return path


def iter_archive_files(
    archive: Path, max_files: int = MAX_FILES, max_bytes: int = MAX_UNPACKED_BYTES
) -> Iterator[tuple[PurePosixPath, bytes]]:
    """Yield (relative path, content) for each regular file; raise DataError on anything unsafe."""
    count, total = 0, 0

    def account(name: str, size: int) -> None:
        nonlocal count, total
        count += 1
        total += size
        if count > max_files:
            raise DataError(f"archive has more than {max_files} files")
        if total > max_bytes:
            raise DataError(f"archive unpacks to more than {max_bytes} bytes")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # check every name before reading any content
                _check_name(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DataError(f"archive member {info.filename!r} is a symbolic link")
            for info in infos:
                if info.is_dir():
                    continue
                account(info.filename, info.file_size)
                # read in bounded chunks: file_size in the header may lie (zip bombs)
                with zf.open(info) as fh:
                    data = fh.read(max_bytes - total + info.file_size + 1)
                if len(data) > info.file_size:
                    raise DataError(f"archive member {info.filename!r} is larger than declared")
                yield _check_name(info.filename), data
        return
    try:
        tf = tarfile.open(archive)  # noqa: SIM115 (closed by the `with` below)
    except tarfile.TarError as exc:
        raise DataError(f"{archive.name} is neither a zip nor a tar archive ({exc})") from None
    with tf:
        members = tf.getmembers()
        for m in members:
            _check_name(m.name)
            if m.issym() or m.islnk():
                raise DataError(f"archive member {m.name!r} is a link")
            if not (m.isfile() or m.isdir()):
                raise DataError(f"archive member {m.name!r} is not a regular file")
        for m in members:
            if m.isdir():
                continue
            account(m.name, m.size)
            member = tf.extractfile(m)
            if member is None:
                continue
            yield _check_name(m.name), member.read()
