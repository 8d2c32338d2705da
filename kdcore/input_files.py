"""What a file given as a job's input must be, checked before it is used: the one check
behind the service's upload (app.services.files), `kd submit` (before it uploads
anything) and `kdcore validate`. Nothing is unpickled, nothing is inflated into memory,
and no message quotes the file's bytes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kdcore.accepted_formats import DATASET_FORMATS
from kdcore.errors import DataError, KDError

if TYPE_CHECKING:
    from kdcore.spec import JobSpec


def check_input_file(path: Path, filename: str, purpose: str, max_unpacked_bytes: int) -> None:
    """Raise a KDError saying why `path` (named `filename` by its owner) cannot be a
    job's `purpose` ("checkpoint" or "dataset") input, and what it could be."""
    if purpose == "checkpoint":
        _check_checkpoint(path, max_unpacked_bytes)
    elif purpose == "dataset":
        _check_dataset(path, filename, max_unpacked_bytes)
    else:
        raise KDError(f"purpose must be checkpoint or dataset, not {purpose!r}")


def _check_checkpoint(path: Path, max_unpacked_bytes: int) -> None:
    """A teacher graph (ONNX), a model folder (Hugging Face) or weights; each is checked
    the way kdcore will read it."""
    from kdcore.checkpoints import read_state_dict
    from kdcore.models.ecosystems import check_hf_folder, is_model_folder
    from kdcore.onnx_teacher import read_onnx

    if read_onnx(path) is not None:  # parsed once: standard operators, no external data, caps
        return
    if is_model_folder(path):
        check_hf_folder(path, max_unpacked_bytes)
        return
    read_state_dict(path)


def _check_dataset(path: Path, filename: str, max_unpacked_bytes: int) -> None:
    from kdcore.archives import archive_cap, check_archive, inspect_npz
    from kdcore.data import check_npz_arrays
    from kdcore.records import MAX_RECORDS

    name = filename.lower()
    if name.endswith((".txt", ".jsonl")):  # a text set (kdcore.text)
        from kdcore.text.data import check_text_file

        check_text_file(path, filename)
    elif name.endswith(".npz"):
        check_npz_arrays(inspect_npz(path, max_unpacked_bytes))
    else:
        # a set streamed from disk may be large (kdcore.streaming): a tar of up to
        # 10 million images, unpacking to no more than about its own size
        try:
            check_archive(
                path, max_files=MAX_RECORDS, max_bytes=archive_cap(path, max_unpacked_bytes)
            )
        except DataError as exc:
            if "neither a zip nor a tar" in str(exc):
                raise DataError(
                    f"{filename} is not a dataset kdcore reads; accepted: {DATASET_FORMATS}"
                ) from None
            raise


def spec_file_problems(spec: JobSpec, cwd: Path | None = None) -> list[tuple[str, str]]:
    """(pointer, message) for each local file a spec names (kdcore's CLI and library
    take paths) that is missing or cannot be what it is given as. Folders are read as
    folders (an imagefolder tree, an IDX folder, a model folder) and not checked here."""
    from kdcore.archives import MAX_UNPACKED_BYTES

    base = cwd or Path.cwd()
    named = [(f"{p}/checkpoint", m.checkpoint, "checkpoint") for p, m in spec.model_roles()]
    if spec.dataset.path is not None and "://" not in spec.dataset.path:
        named.append(("/dataset/path", spec.dataset.path, "dataset"))
    problems = []
    for pointer, value, purpose in named:
        if value is None:
            continue
        path = Path(value) if Path(value).is_absolute() else base / value
        if not path.exists():
            where = (
                ""
                if Path(value).is_absolute()
                else f" (looked up relative to the current folder, {base})"
            )
            problems.append((pointer, f"{value} was not found{where}"))
        elif path.is_file():
            try:
                check_input_file(path, path.name, purpose, MAX_UNPACKED_BYTES)
            except KDError as exc:
                problems.append((pointer, str(exc)))
    return problems
