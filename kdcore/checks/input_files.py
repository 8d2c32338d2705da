"""What a file given as a job's input must be, checked before it is used.

`check_input_file` is the service's upload check (app.services.files): the whole file,
read as kdcore will read it. `recognise_input_file` is what a client checks before it
sends or runs anything (`kd submit`, `kdcore validate`/`train`/`distill`): the kind of
file, from its first bytes only, so a CSV given as a dataset fails at once and a large
teacher is not read twice; both refuse with the same words (kdcore.io.accepted_formats).
Nothing is unpickled, nothing is inflated into memory, and no message quotes the
file's bytes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcore.errors import CheckpointError, DataError, KDError
from kdcore.io.accepted_formats import CHECKPOINT_FORMATS, DATASET_FORMATS

if TYPE_CHECKING:
    from kdcore.spec import JobSpec


def check_input_file(path: Path, filename: str, purpose: str, max_unpacked_bytes: int) -> None:
    """Raise a KDError saying why `path` (named `filename` by its owner) cannot be a
    job's `purpose` ("checkpoint" or "dataset") input, and what it could be."""
    if purpose == "checkpoint":
        _check_checkpoint(path, max_unpacked_bytes)
    elif purpose == "dataset":
        _check_dataset(path, filename, max_unpacked_bytes)
    elif purpose == "teacher_outputs":
        _check_teacher_outputs(path, max_unpacked_bytes)
    else:
        raise KDError(f"purpose must be checkpoint, dataset or teacher_outputs, not {purpose!r}")


def _check_teacher_outputs(path: Path, max_unpacked_bytes: int) -> None:
    """A zip of a teacher's stored top-k outputs, unpacked (within the cap) and opened as
    a job opens it: its description and every array's dtype and shape."""
    import tempfile

    from kdcore.text.teacher_store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        open_store(path, Path(tmp), max_unpacked_bytes)


def _check_checkpoint(path: Path, max_unpacked_bytes: int) -> None:
    """A teacher graph (ONNX), a model folder (Hugging Face) or weights; each is checked
    the way kdcore will read it."""
    from kdcore.io.checkpoints import read_state_dict
    from kdcore.models.ecosystems import check_hf_folder, is_model_folder
    from kdcore.models.onnx import read_onnx

    if read_onnx(path) is not None:  # parsed once: standard operators, no external data, caps
        return
    if is_model_folder(path):
        check_hf_folder(path, max_unpacked_bytes)
        return
    read_state_dict(path)


def _check_dataset(path: Path, filename: str, max_unpacked_bytes: int) -> None:
    from kdcore.image.data import check_npz_arrays
    from kdcore.image.records import MAX_RECORDS
    from kdcore.io.archives import archive_cap, check_archive, inspect_npz

    name = filename.lower()
    if name.endswith((".txt", ".jsonl")):  # a text set (kdcore.text)
        from kdcore.text.data import check_text_file

        check_text_file(path, filename)
    elif name.endswith(".npz"):
        check_npz_arrays(inspect_npz(path, max_unpacked_bytes))
    else:
        # a set streamed from disk may be large (kdcore.image.streaming): a tar of up to
        # 10 million images, unpacking to no more than about its own size
        try:
            check_archive(
                path, max_files=MAX_RECORDS, max_bytes=archive_cap(path, max_unpacked_bytes)
            )
        except DataError as exc:
            if "neither a zip nor a tar" in str(exc):
                raise _not_a_dataset(filename) from None
            raise


def _not_a_dataset(filename: str) -> DataError:
    return DataError(f"{filename} is not a dataset kdcore reads; accepted: {DATASET_FORMATS}")


def recognise_input_file(path: Path, filename: str, purpose: str) -> None:
    """Raise a KDError, as check_input_file would, if `path` is of no kind a job's
    `purpose` input can be; decided from the first bytes (and an archive's first entry)."""
    import tarfile
    import zipfile

    from kdcore.io.checkpoints import looks_like_checkpoint

    if purpose == "checkpoint":
        if not looks_like_checkpoint(path):
            raise CheckpointError(
                f"{filename} is not a checkpoint kdcore reads; accepted: {CHECKPOINT_FORMATS}"
            )
    elif purpose == "dataset":
        if filename.lower().endswith((".txt", ".jsonl")):  # read record by record later
            return
        try:
            archive = zipfile.is_zipfile(path) or tarfile.is_tarfile(path)  # .npz is a zip
        except OSError:
            archive = False
        if not archive:
            raise _not_a_dataset(filename)
    elif purpose == "teacher_outputs":
        from kdcore.text.teacher_store import looks_like_store

        if not looks_like_store(path):
            raise DataError(
                f"{filename} is not teacher outputs: a folder or zip holding "
                "teacher_outputs.json (docs/language-models.md, Teacher outputs)"
            )
    else:
        raise KDError(f"purpose must be checkpoint, dataset or teacher_outputs, not {purpose!r}")


def named_files(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(JSON pointer, value, purpose) of every file a spec (a dict, as written) names:
    each model's checkpoint, then the dataset's path."""
    from kdcore.spec import model_entries

    named = [
        (f"{pointer}/checkpoint", model.get("checkpoint"), "checkpoint")
        for pointer, model in model_entries(spec)
    ]
    teacher = spec.get("teacher")
    if isinstance(teacher, dict):
        named.append(("/teacher/outputs", teacher.get("outputs"), "teacher_outputs"))
    dataset = spec.get("dataset")
    if isinstance(dataset, dict):
        named.append(("/dataset/path", dataset.get("path"), "dataset"))
    return [(p, v, purpose) for p, v, purpose in named if isinstance(v, str) and v]


def spec_file_problems(spec: JobSpec, cwd: Path | None = None) -> list[tuple[str, str]]:
    """(pointer, message) for each local file a spec names (kdcore's CLI and library
    take paths) that is missing or of no kind it can be. Folders are read as folders
    (an imagefolder tree, an IDX folder, a model folder) and not checked here."""
    base = cwd or Path.cwd()
    problems = []
    for pointer, value, purpose in named_files(spec.model_dump(mode="json")):
        if "://" in value:  # a dataset by reference, read where it lives
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
                recognise_input_file(path, path.name, purpose)
                if pointer == "/dataset/path" and spec.dataset.name == "text":
                    _check_task_form(spec, path)  # as admission does for the service
            except KDError as exc:
                problems.append((pointer, str(exc)))
    return problems


def _check_task_form(spec: JobSpec, path: Path) -> None:
    from kdcore.text.data import text_set_problem

    problem = text_set_problem(spec.task, path)
    if problem:
        raise DataError(f"{path.name}: {problem}")
