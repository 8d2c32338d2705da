"""Where labelled images come from: an image folder (a zip or tar archive, or a folder
on disk, of `<class>/<image>`), or WebDataset shards (`.tar` files of `<key>.jpg` +
`<key>.cls`, one file or a folder of them). Every source is read through the same
checks as an upload: names, member counts and bytes capped, no links followed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from kdcore.errors import DataError
from kdcore.io.archives import MAX_FILES, MAX_UNPACKED_BYTES, iter_archive_files
from kdcore.io.local_files import regular_file, regular_files

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SHARD_SUFFIX = ".tar"
MAX_STREAMED = 10_000_000  # images of a set counted for streaming (kdcore.image.records)


def iter_folder_files(
    root: Path, max_files: int = MAX_FILES, max_bytes: int = MAX_UNPACKED_BYTES
) -> Iterator[tuple[PurePosixPath, bytes]]:
    """(path relative to root, content) of each regular file under `root`, in name
    order; symbolic links are not followed (a link could point anywhere on the host)."""
    files, total = [], 0
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder, name)
            if path.is_symlink() or not path.is_file() or name.startswith("."):
                continue
            files.append(path)
            total += path.stat().st_size
            if len(files) > max_files or total > max_bytes:
                raise DataError(f"the folder holds over {max_files} files or {max_bytes} bytes")
    for path in files:
        yield PurePosixPath(path.relative_to(root).as_posix()), path.read_bytes()


def iter_image_folder(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(class, name, content) of each image of an image folder: an archive or a folder."""
    files = iter_folder_files(path) if path.is_dir() else iter_archive_files(path)
    for rel, content in files:
        if rel.suffix.lower() in IMAGE_SUFFIXES and not rel.name.startswith("."):
            if len(rel.parts) < 2:
                raise DataError(f"image {rel} is not inside a class folder")
            yield rel.parts[-2], str(rel), content


def shard_files(path: Path) -> list[Path]:
    """A shard, or the shards of a folder (name order): regular files only, a link
    is neither listed nor counted nor opened (kdcore.io.local_files)."""
    if path.is_dir() and not path.is_symlink():
        shards = regular_files(path, SHARD_SUFFIX)
        if not shards:
            raise DataError(f"no {SHARD_SUFFIX} shards in the dataset folder")
        return shards
    return [regular_file(path)]


def iter_webdataset(path: Path) -> Iterator[tuple[int, str, bytes]]:
    """(label, name, image bytes) of each sample of WebDataset shards: members grouped
    by key (the name up to its first dot), an image and a `cls` holding the label."""
    budget = MAX_UNPACKED_BYTES
    for shard in shard_files(path):
        samples: dict[str, dict[str, bytes]] = {}
        for rel, content in iter_archive_files(shard, max_bytes=budget):
            budget -= len(content)
            stem, _, ext = rel.name.partition(".")  # "0001.cls", "0001.jpg": key 0001
            samples.setdefault(str(rel.parent / stem), {})[ext.lower()] = content
        for key, parts in samples.items():
            image = next((parts[e] for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
            if image is None or "cls" not in parts:
                raise DataError(f"{shard.name}: sample {key!r} needs an image and a .cls")
            try:
                label = int(parts["cls"].decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                raise DataError(f"{shard.name}: {key}.cls is not an integer label") from None
            if not 0 <= label < 100_000:
                raise DataError(f"{shard.name}: {key}.cls label {label} is out of range")
            yield label, f"{shard.name}/{key}", image


def count_images(path: Path, webdataset: bool) -> int:
    """How many images a source holds, from names only (nothing decoded): for sizing a
    job before it runs (kdcore.checks.cost)."""
    import tarfile

    from kdcore.io.archives import archive_cap, check_archive

    if not webdataset:
        if not path.is_dir():
            return check_archive(
                path,
                max_files=MAX_STREAMED,
                max_bytes=archive_cap(path, MAX_UNPACKED_BYTES),
                verify=False,
            )
        return sum(
            1
            for folder, _, names in os.walk(path, followlinks=False)
            for name in names
            if Path(name).suffix.lower() in IMAGE_SUFFIXES
            and not name.startswith(".")
            and not os.path.islink(os.path.join(folder, name))  # as iter_folder_files
        )
    count = 0
    for shard in shard_files(path):
        try:
            with tarfile.open(shard) as tf:  # headers only: members are skipped, not read
                count += sum(
                    1 for m in tf if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES
                )
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"cannot read shard {shard.name}: {exc}") from None
    return count
