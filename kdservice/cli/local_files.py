"""`kd submit` with a spec written for `kdcore` (local paths where the service takes
file ids): find the files, check each the way the service will, let the service
validate everything else, and only then upload, each file once (by its sha256)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdservice.client import Client
from kdservice.client.models import ValidationItem

# what a spec may name that is not a path on this machine
REMOTE = ("file_", "art_", "s3://", "local://")


@dataclass
class LocalFile:
    pointer: str  # where the spec names it, e.g. /teacher/checkpoint
    path: Path
    purpose: str  # checkpoint, dataset or teacher_outputs

    def put(self, spec: dict[str, Any], value: str) -> None:
        """Write `value` (a file id) at this file's pointer in `spec`."""
        *parents, leaf = self.pointer.strip("/").split("/")
        node: Any = spec
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[leaf] = value


class LocalFileError(Exception):
    """(pointer, message) pairs: files that are missing or cannot be what they are for."""

    def __init__(self, errors: list[tuple[str, str]]):
        super().__init__("; ".join(f"{loc}: {msg}" for loc, msg in errors))
        self.errors = errors


def find(spec: dict[str, Any], spec_dir: Path) -> list[LocalFile]:
    """The local files `spec` names, looked up relative to the current folder, then to
    the spec's folder; LocalFileError for a name found in neither."""
    from kdcore.checks.input_files import named_files  # pydantic only; kept out of `kd --help`

    found, errors = [], []
    for pointer, value, purpose in named_files(spec):
        if value.startswith(REMOTE):
            continue
        candidates = [Path(value)] if Path(value).is_absolute() else [Path(value), spec_dir / value]
        path = next((c for c in candidates if c.exists()), None)
        if path is None:
            where = (
                f"looked up relative to the current folder ({Path.cwd()}) and to the "
                f"spec's folder ({spec_dir.resolve()})"
                if not Path(value).is_absolute()
                else "an absolute path"
            )
            errors.append(
                (
                    pointer,
                    f"{value} was not found ({where}); give a path to a local file, or "
                    "the id of an uploaded file (file_...) or of a job's artifact (art_...)",
                )
            )
        elif path.is_dir():
            errors.append(
                (
                    pointer,
                    f"{value} is a folder; the service takes one file: zip it first "
                    f"(zip -r {path.name}.zip {value})",
                )
            )
        else:
            found.append(LocalFile(pointer, path, purpose))
    if errors:
        raise LocalFileError(errors)
    return found


def check(files: list[LocalFile]) -> None:
    """Each file's kind, from its first bytes, as kdcore.checks.input_files recognises it (the
    service checks the whole file when it arrives), so a wrong file is refused before
    anything is sent."""
    from kdcore.checks.input_files import recognise_input_file
    from kdcore.errors import KDError

    errors = []
    for f in files:
        try:
            recognise_input_file(f.path, f.path.name, f.purpose)
        except KDError as exc:
            errors.append((f.pointer, str(exc)))
    if errors:
        raise LocalFileError(errors)


def already_there(client: Client, spec: dict[str, Any], files: list[LocalFile]) -> list[LocalFile]:
    """Put the id of each file the service already holds (same sha256 and purpose) into
    `spec`; the files still to upload."""
    missing = []
    for f in files:
        info = client.find_file(f.path, f.purpose)
        if info is None:
            missing.append(f)
        else:
            f.put(spec, info.id)
    return missing


def problems_besides(found: list[ValidationItem], files: list[LocalFile]) -> list[tuple[str, str]]:
    """The service's validation errors, less those at the pointers of files not uploaded
    yet (there it names a path it cannot know)."""
    pending = {f.pointer for f in files}
    return [(e.loc, e.msg) for e in found if e.loc not in pending]
