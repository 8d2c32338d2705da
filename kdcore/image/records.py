"""An index of a dataset's images for the streaming path (kdcore.image.streaming): where each
image's bytes lie (a file of a folder, a member of a zip, or an offset into an
uncompressed tar shard) and its label. It is built from headers alone (nothing
decoded, a shard read once for its `.cls` labels), under the same checks as an upload
(names, links, sizes), and holds a few numbers per image, so it stays small beside the
images. `RecordReader` reads one image's bytes with a seek; each process opens its own.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Literal

import numpy as np

from kdcore.errors import DataError
from kdcore.image.sources import IMAGE_SUFFIXES, MAX_STREAMED, shard_files
from kdcore.io.archives import Budget, check_name, read_member, readable, tar_members
from kdcore.io.local_files import open_regular

MAX_RECORDS = MAX_STREAMED
MAX_STREAM_BYTES = 16 * 1024**4  # on disk, never in memory at once
MAX_IMAGE_BYTES = 64 * 1024**2  # one encoded image
WEBDATASET_IMAGES = ("jpg", "jpeg", "png", "webp")
# a compressed tar cannot be read at an offset: streaming needs the plain format
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"(\xb5/\xfd")


@dataclass
class Records:
    kind: Literal["tar", "zip", "files"]
    sources: list[str]  # the tar shards, the zip, or (files) every image file
    source: np.ndarray  # int32: which source holds image i
    offset: np.ndarray  # int64: tar: where its bytes start; zip: its member's index
    size: np.ndarray  # int64: its bytes
    labels: np.ndarray  # int64
    members: list[str] = field(default_factory=list)  # zip member names
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.size.shape[0])

    def name(self, i: int) -> str:
        """A readable name for error messages."""
        src = Path(self.sources[int(self.source[i])]).name
        if self.kind == "zip":
            return f"{src}/{self.members[int(self.offset[i])]}"
        return f"{src}@{int(self.offset[i])}" if self.kind == "tar" else src

    def digest(self) -> str:
        """Which images these are: their sources (name, size, mtime) and locations."""
        h = hashlib.sha256(self.kind.encode())
        for src in self.sources:
            st = os.stat(src)
            h.update(f"{Path(src).name}:{st.st_size}:{st.st_mtime_ns}".encode())
        for arr in (self.source, self.offset, self.size, self.labels):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update("\n".join(self.members).encode())
        return h.hexdigest()


class _Builder:
    """Collects records, checking counts and sizes as it goes."""

    def __init__(self) -> None:
        self.budget = Budget(MAX_RECORDS, MAX_STREAM_BYTES)
        self.source: list[int] = []
        self.offset: list[int] = []
        self.size: list[int] = []
        self.labels: list[int] = []

    def add(self, source: int, offset: int, size: int, label: int, name: str) -> None:
        self.budget.add(size)
        if size > MAX_IMAGE_BYTES:
            raise DataError(f"image {name} is over {MAX_IMAGE_BYTES} bytes")
        self.source.append(source)
        self.offset.append(offset)
        self.size.append(size)
        self.labels.append(label)

    def build(
        self, kind: Literal["tar", "zip", "files"], sources: list[str], **kw: object
    ) -> Records:
        if not self.size:
            raise DataError("the dataset holds no images")
        return Records(
            kind,
            sources,
            np.asarray(self.source, dtype=np.int32),
            np.asarray(self.offset, dtype=np.int64),
            np.asarray(self.size, dtype=np.int64),
            np.asarray(self.labels, dtype=np.int64),
            **kw,  # type: ignore[arg-type]
        )


def _is_image(rel: PurePosixPath) -> bool:
    return rel.suffix.lower() in IMAGE_SUFFIXES and not rel.name.startswith(".")


def _plain_tar_members(path: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """The regular files of an uncompressed tar, headers only, with an upload's checks.
    The TarFile's own member list is emptied as it goes: the index keeps offsets, not a
    million TarInfo objects."""
    with open_regular(path) as fh:
        if fh.read(6).startswith(COMPRESSED_MAGIC):
            raise DataError(
                f"{path.name} is a compressed tar, which cannot be read in place: stream "
                "from an uncompressed .tar or a .zip (images are compressed already)"
            )
    with readable(path.name), tarfile.open(path, "r:") as tf:
        for m in tar_members(tf, MAX_RECORDS, MAX_STREAM_BYTES):  # an upload's checks
            yield tf, m


class _Classes:
    """Class folder names -> labels in sorted order (as the in-memory path numbers them)."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def id(self, rel: PurePosixPath) -> int:
        if len(rel.parts) < 2:
            raise DataError(f"image {rel} is not inside a class folder")
        return self.seen.setdefault(rel.parts[-2], len(self.seen))

    def finish(self, records: Records) -> Records:
        names = sorted(self.seen)
        if len(names) < 2:
            raise DataError("an image folder needs at least two class folders")
        remap = np.asarray([names.index(n) for n in self.seen], dtype=np.int64)
        records.labels = remap[records.labels]
        records.class_names = names
        return records


def index_image_folder(path: Path) -> Records:
    """`<class>/<image>` in a folder on disk (no links followed), a zip or a plain tar."""
    b, classes = _Builder(), _Classes()
    if path.is_dir():
        files: list[str] = []
        for folder, dirs, names in os.walk(path, followlinks=False):
            dirs.sort()
            for name in sorted(names):
                full = Path(folder, name)
                rel = PurePosixPath(full.relative_to(path).as_posix())
                if _is_image(rel) and not full.is_symlink() and full.is_file():
                    b.add(len(files), 0, full.stat().st_size, classes.id(rel), str(rel))
                    files.append(str(full))
        return classes.finish(b.build("files", files))
    if zipfile.is_zipfile(path):
        members: list[str] = []
        with readable(path.name), zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                rel = check_name(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000 or info.flag_bits & 0x1:
                    raise DataError(f"archive member {info.filename!r} is a link or encrypted")
                if not info.is_dir() and _is_image(rel):
                    b.add(0, len(members), info.file_size, classes.id(rel), info.filename)
                    members.append(info.filename)
        return classes.finish(b.build("zip", [str(path)], members=members))
    for _, m in _plain_tar_members(path):
        rel = PurePosixPath(m.name)
        if _is_image(rel):
            b.add(0, m.offset_data, m.size, classes.id(rel), m.name)
    return classes.finish(b.build("tar", [str(path)]))


def _shard_samples(shard: Path, source: int, b: _Builder) -> None:
    """One shard's samples: members grouped by key (the name up to its first dot), an
    image and a `.cls` holding the label."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    for tf, m in _plain_tar_members(shard):
        rel = PurePosixPath(m.name)
        stem, _, ext = rel.name.partition(".")
        key, ext = str(rel.parent / stem), ext.lower()
        if ext in WEBDATASET_IMAGES:
            images[key] = (m.offset_data, m.size)
        elif ext == "cls":
            member = tf.extractfile(m)
            if member is None or m.size > 32:
                raise DataError(f"{shard.name}: {key}.cls is not an integer label")
            try:
                labels[key] = int(read_member(member, m.size, m.name, True).decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise DataError(f"{shard.name}: {key}.cls is not an integer label") from None
            if not 0 <= labels[key] < 100_000:
                raise DataError(f"{shard.name}: {key}.cls label {labels[key]} is out of range")
    for key in sorted(images.keys() | labels.keys()):
        if key not in images or key not in labels:
            raise DataError(f"{shard.name}: sample {key!r} needs an image and a .cls")
        offset, size = images[key]
        b.add(source, offset, size, labels[key], f"{shard.name}/{key}")


def index_webdataset(path: Path) -> Records:
    """WebDataset shards: a plain .tar, or a folder of them."""
    b = _Builder()
    shards = shard_files(path)
    for i, shard in enumerate(shards):
        _shard_samples(shard, i, b)
    records = b.build("tar", [str(s) for s in shards])
    if int(records.labels.max()) < 1:
        raise DataError("the shards need at least two classes")
    return records


class RecordReader:
    """Reads images' bytes. File handles stay open between reads and belong to the
    process that opened them (a DataLoader worker opens its own after the fork)."""

    def __init__(self, records: Records):
        self.records = records
        self._pid = -1
        self._files: dict[int, IO[bytes]] = {}
        self._zip: zipfile.ZipFile | None = None

    def _handle(self, source: int) -> IO[bytes]:
        if self._pid != os.getpid():  # inherited handles share a file position
            self._pid, self._files, self._zip = os.getpid(), {}, None
        if source not in self._files:
            if len(self._files) >= 64:  # many shards: do not hold every one open
                self._files.pop(next(iter(self._files))).close()
            self._files[source] = open_regular(Path(self.records.sources[source]))
        return self._files[source]

    def read(self, i: int) -> bytes:
        r = self.records
        size, source = int(r.size[i]), int(r.source[i])
        if r.kind == "zip":
            if self._pid != os.getpid() or self._zip is None:
                self._zip = zipfile.ZipFile(self._handle(source))
            name = r.members[int(r.offset[i])]
            with readable(Path(r.sources[0]).name), self._zip.open(name) as fh:
                return read_member(fh, size, name, True)
        if r.kind == "files":
            with open_regular(Path(r.sources[source])) as fh:
                data = fh.read(size + 1)
        else:
            fh = self._handle(source)
            fh.seek(int(r.offset[i]))
            data = fh.read(size)
        if len(data) != size:
            raise DataError(f"{r.name(i)} changed since the dataset was indexed")
        return data
