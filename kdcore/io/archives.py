"""Safe reading of untrusted zip/tar archives and .npz files.

Members are read into memory one by one (never extracted by path), with caps on the
file count, on each member and on the total unpacked bytes. The caps are checked
against the sizes the archive declares before anything is inflated, and again while
inflating (a header may lie). Absolute paths, `..`, links and device files are refused
before anything is read. Every way a malformed archive can break the standard library
(encryption, bad CRC, unknown compression, truncation) becomes a DataError.
"""

from __future__ import annotations

import contextlib
import math
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from kdcore.errors import DataError

MAX_FILES = 200_000
MAX_UNPACKED_BYTES = 2 * 1024**3
MAX_MEMBER_BYTES = 1024**3  # one file of an archive, one array of an npz
# a member over 1 MiB that inflates more than 200x is a bomb, not data (deflate tops out
# near 1,000x on zeros; images and arrays of real data compress far less)
MAX_RATIO, RATIO_FROM_BYTES = 200, 1024**2
CHUNK = 1 << 20
# what a broken archive makes zipfile, tarfile, zlib, gzip, bz2 and lzma raise
ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,  # zipfile: "File is encrypted, password required"
    NotImplementedError,  # zipfile: "That compression method is not supported"
    ValueError,
    KeyError,
)


@contextlib.contextmanager
def readable(name: str, what: str = "archive") -> Iterator[None]:
    """Whatever a malformed archive makes the standard library raise becomes a
    DataError naming the file (never quoting its bytes)."""
    try:
        yield
    except DataError:
        raise
    except ARCHIVE_ERRORS as exc:
        raise DataError(f"{name} is not a readable {what} ({type(exc).__name__})") from None


def check_name(name: str) -> PurePosixPath:
    if any(ord(c) < 32 for c in name):
        raise DataError("an archive member's name holds control characters")
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise DataError(f"archive member {name!r} escapes the archive with '..'")
    return path


class Budget:
    """Counts files and declared bytes; raises as soon as a cap is passed."""

    def __init__(self, max_files: int, max_bytes: int):
        self.max_files, self.max_bytes = max_files, max_bytes
        self.files = self.bytes = 0

    def add(self, size: int, compressed: int | None = None) -> None:
        """One member of `size` bytes unpacked (`compressed` in the file, if known)."""
        self.files += 1
        self.bytes += max(size, 0)
        if self.files > self.max_files:
            raise DataError(f"the archive has more than {self.max_files} files")
        member_cap = min(MAX_MEMBER_BYTES, self.max_bytes)
        if size > member_cap:
            raise DataError(f"an archive member unpacks to more than {member_cap} bytes")
        if self.bytes > self.max_bytes:
            raise DataError(f"the archive unpacks to more than {self.max_bytes} bytes")
        if compressed is not None and size > RATIO_FROM_BYTES and size > MAX_RATIO * compressed:
            raise DataError(
                f"an archive member inflates more than {MAX_RATIO}x (a decompression bomb)"
            )


def read_member(
    fh: IO[bytes], declared: int, name: str, keep: bool, out: IO[bytes] | None = None
) -> bytes:
    """Inflate a member in chunks, never past its declared size (+1 to catch a lie);
    into `out` when given (nothing held)."""
    parts, seen = [], 0
    while chunk := fh.read(min(CHUNK, declared + 1 - seen)):
        seen += len(chunk)
        if seen > declared:
            raise DataError(f"archive member {name!r} is larger than it declares")
        if out is not None:
            out.write(chunk)
        elif keep:
            parts.append(chunk)
    if seen < declared:
        raise DataError(f"archive member {name!r} is truncated")
    return b"".join(parts)


Sink = Callable[[PurePosixPath], Path | None]


def _member(fh: IO[bytes], declared: int, name: str, keep: bool, sink: Sink | None) -> bytes:
    """A member's content, or b"" once written to the file `sink` names for it."""
    target = sink(check_name(name)) if sink is not None else None
    if target is None:
        return read_member(fh, declared, name, keep)
    with open(target, "wb") as out:
        read_member(fh, declared, name, False, out)
    return b""


def iter_archive_files(
    archive: Path,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_UNPACKED_BYTES,
    keep: bool = True,
    sink: Sink | None = None,
) -> Iterator[tuple[PurePosixPath, bytes]]:
    """Yield (relative path, content) for each regular file; raise DataError on anything
    unsafe or malformed. With keep=False the contents are checked (inflated chunk by
    chunk, CRC verified) but not kept: b"" is yielded. A member for which `sink` names a
    file is written there chunk by chunk (a model's weights, never held) and yielded
    with b""."""
    with readable(archive.name):
        if zipfile.is_zipfile(archive):
            yield from _iter_zip(archive, max_files, max_bytes, keep, sink)
        else:
            yield from _iter_tar(archive, max_files, max_bytes, keep, sink)


def _zip_members(zf: zipfile.ZipFile, max_files: int, max_bytes: int) -> list[zipfile.ZipInfo]:
    """The files of a zip, after checking every name, type and declared size."""
    budget, files = Budget(max_files, max_bytes), []
    for info in zf.infolist():
        check_name(info.filename)
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise DataError(f"archive member {info.filename!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise DataError(f"archive member {info.filename!r} is encrypted")
        if not info.is_dir():
            budget.add(info.file_size, info.compress_size)
            files.append(info)
    return files


def tar_members(tf: tarfile.TarFile, max_files: int, max_bytes: int) -> Iterator[tarfile.TarInfo]:
    """The files of a tar, headers only, stopping at the first cap passed (a compressed
    tar is inflated to walk it, chunk by chunk, never kept). The TarFile's own list of
    members is emptied as it goes: a million headers are not held at once."""
    budget = Budget(max_files, max_bytes)
    while (m := tf.next()) is not None:
        tf.members.clear()  # type: ignore[attr-defined]
        check_name(m.name)
        if m.issym() or m.islnk():
            raise DataError(f"archive member {m.name!r} is a link")
        if not (m.isfile() or m.isdir()):
            raise DataError(f"archive member {m.name!r} is not a regular file")
        if m.isfile():
            budget.add(m.size)
            yield m


def archive_cap(path: Path, floor: int) -> int:
    """The unpacked bytes an archive may hold: `floor`, or twice its own size if more. A
    plain tar or a zip of JPEGs unpacks to about its size (a 20 GB set streamed from
    disk is no bomb); a bomb inflates far more."""
    return max(floor, 2 * path.stat().st_size)


def _iter_zip(
    archive: Path, max_files: int, max_bytes: int, keep: bool, sink: Sink | None
) -> Iterator[tuple[PurePosixPath, bytes]]:
    with zipfile.ZipFile(archive) as zf:
        for info in _zip_members(zf, max_files, max_bytes):
            with zf.open(info) as fh:  # zipfile checks the CRC when the member ends
                data = _member(fh, info.file_size, info.filename, keep, sink)
            yield check_name(info.filename), data


def _iter_tar(
    archive: Path, max_files: int, max_bytes: int, keep: bool, sink: Sink | None
) -> Iterator[tuple[PurePosixPath, bytes]]:
    try:
        tf = tarfile.open(archive)  # noqa: SIM115 (closed by the `with` below)
    except tarfile.TarError:
        raise DataError(f"{archive.name} is neither a zip nor a tar archive") from None
    with tf:
        # to keep members, every cap is checked on the headers first; to check them
        # only, one pass (a set of a million images is not held as headers)
        members = list(tar_members(tf, max_files, max_bytes)) if keep else None
        for m in members if members is not None else tar_members(tf, max_files, max_bytes):
            member = tf.extractfile(m)
            if member is None:
                continue
            yield check_name(m.name), _member(member, m.size, m.name, keep, sink)


def check_archive(
    archive: Path,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_UNPACKED_BYTES,
    verify: bool = True,
) -> int:
    """Check a whole archive without keeping any member in memory; returns its number of
    regular files. verify=False checks names, types and declared sizes only (no
    member is inflated; a compressed tar is still walked)."""
    if not verify:
        with readable(archive.name):
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    return len(list(_zip_members(zf, max_files, max_bytes)))
            with tarfile.open(archive) as tf:
                return sum(1 for _ in tar_members(tf, max_files, max_bytes))
    return sum(1 for _ in iter_archive_files(archive, max_files, max_bytes, keep=False))


def _npy_header(fh: IO[bytes], name: str) -> tuple[tuple[int, ...], Any]:
    import numpy as np
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(fh, max_header_size=10_000)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = npy.read_array_header_2_0(fh, max_header_size=10_000)
        else:
            raise ValueError
    except (ValueError, SyntaxError, EOFError, OSError):
        raise DataError(f"member {name!r} of the npz is not a valid .npy array") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise DataError(f"array {name!r} holds Python objects, which are refused")
    return tuple(int(d) for d in shape), dtype


def inspect_npz(
    path: Path, max_bytes: int = MAX_UNPACKED_BYTES, verify: bool = True
) -> dict[str, tuple[int, ...]]:
    """Check an untrusted .npz without loading it: {array name: shape}.

    Each member's header (a few bytes) gives its shape and dtype; shape x itemsize must
    agree with the member's declared size, and the declared sizes must fit `max_bytes`,
    before anything else is inflated. Then (verify=True) every member is inflated chunk
    by chunk, not kept, so that a bad CRC or a truncated file is found here, not in
    training."""
    shapes: dict[str, tuple[int, ...]] = {}
    with readable(path.name, "npz"):
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path.name} is not an .npz (zip) file")
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > 64:
                raise DataError("the npz holds more than 64 arrays")
            budget = Budget(64, max_bytes)
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise DataError(f"member {info.filename!r} of the npz is not a .npy array")
                if info.flag_bits & 0x1:
                    raise DataError(f"member {info.filename!r} of the npz is encrypted")
                budget.add(info.file_size, info.compress_size)
            for info in infos:
                name = info.filename[: -len(".npy")]
                with zf.open(info) as fh:
                    shape, dtype = _npy_header(fh, name)
                    header = fh.tell() if fh.seekable() else 0
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > max_bytes:
                    raise DataError(
                        f"array {name!r} has shape {list(shape)}: {nbytes} bytes, over the "
                        f"limit of {max_bytes}"
                    )
                if header and nbytes != info.file_size - header:
                    raise DataError(
                        f"array {name!r} declares shape {list(shape)} ({nbytes} bytes) but "
                        f"holds {info.file_size - header}"
                    )
                shapes[name] = shape
            for info in infos if verify else []:
                with zf.open(info) as fh:
                    read_member(fh, info.file_size, info.filename, keep=False)
    return shapes
