"""A sentence-transformers folder read as files, never as code.

`modules.json` names Python classes that sentence-transformers would import: here it
may name only the Transformer, Pooling and Normalize modules, whose meaning is fixed
(any other type, a Dense layer's activation included, is refused rather than run).
Pooling (`1_Pooling/config.json`) is mean or CLS; `sentence_bert_config.json` gives
the longest input. A plain Hugging Face folder (no modules.json) is mean-pooled and not
normalised."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kdcore.errors import CheckpointError
from kdcore.models.ecosystems import ST_FILE_BYTES, ST_MODULE_DIR, folder_file
from kdcore.text.models import ModelFolder, read_model_folder

ST = "sentence_transformers.models."
TRANSFORMER, POOLING, NORMALIZE = (ST + n for n in ("Transformer", "Pooling", "Normalize"))
MODULE_TYPES = (TRANSFORMER, POOLING, NORMALIZE)
MAX_MODULES = 8
MAX_SEQ_LENGTH = 8192
# the pooling modes a config may switch on; mean and CLS are the ones built here
POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_KEYS = {*POOLING_FLAGS, "word_embedding_dimension", "include_prompt", "pooling_mode"}
BUILT_MODES = ("mean", "cls")


@dataclass(frozen=True)
class Pooling:
    mode: str  # "mean" or "cls"
    normalize: bool  # unit-length embeddings (a Normalize module)
    dimension: int | None  # word_embedding_dimension, checked against the model's width

    def config(self, dimension: int) -> dict[str, Any]:
        """1_Pooling/config.json as sentence-transformers writes it."""
        flags = {key: mode == self.mode for key, mode in POOLING_FLAGS.items()}
        return {"word_embedding_dimension": dimension, **flags, "include_prompt": True}


MEAN_POOLING = Pooling("mean", False, None)


@dataclass
class EncoderFolder:
    model: ModelFolder
    pooling: Pooling
    max_seq_length: int | None  # sentence_bert_config.json's, else None

    def close(self) -> None:
        self.model.close()


def read_encoder_folder(path: Path) -> EncoderFolder:
    """A model folder (a directory or an uploaded zip/tar) with its pooling."""
    model = read_model_folder(path)
    try:
        root = model.temp or path
        pooling, max_len = read_pooling(root, path.name)
        if model.weights is None:
            raise CheckpointError(f"{path.name}: an embedding teacher needs model.safetensors")
        if pooling.dimension is not None:
            width = model.config.get("hidden_size")
            if width is not None and width != pooling.dimension:
                raise CheckpointError(
                    f"{path.name}: the pooling's word_embedding_dimension "
                    f"{pooling.dimension} is not the model's hidden_size {width}"
                )
    except BaseException:
        model.close()
        raise
    return EncoderFolder(model, pooling, max_len)


def _json(root: Path, name: str, label: str) -> Any:
    f = folder_file(root, name, label)
    if f is None:
        return None
    if f.stat().st_size > ST_FILE_BYTES:
        raise CheckpointError(f"{label}: {name} is over {ST_FILE_BYTES:,} bytes")
    try:
        return json.loads(f.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{label}: {name} is not JSON: {exc}") from None


def read_pooling(root: Path, label: str) -> tuple[Pooling, int | None]:
    """(pooling, max_seq_length) of the folder at `root`."""
    max_len = _max_seq_length(_json(root, "sentence_bert_config.json", label), label)
    modules = _json(root, "modules.json", label)
    if modules is None:
        return MEAN_POOLING, max_len
    types = _module_types(modules, label)
    if types.count(TRANSFORMER) != 1 or types.count(POOLING) != 1 or types[0] != TRANSFORMER:
        raise CheckpointError(
            f"{label}: modules.json must list the Transformer first and one Pooling module"
        )
    pooling_dir = next(m["path"] for m in modules if m["type"] == POOLING)
    config = _json(root, f"{pooling_dir}/config.json", label)
    if config is None:
        raise CheckpointError(f"{label}: {pooling_dir}/config.json is missing")
    mode, dimension = _pooling_mode(config, f"{label}: {pooling_dir}/config.json")
    return Pooling(mode, NORMALIZE in types, dimension), max_len


def _module_types(modules: Any, label: str) -> list[str]:
    if not isinstance(modules, list) or not 1 <= len(modules) <= MAX_MODULES:
        raise CheckpointError(f"{label}: modules.json is a list of 1 to {MAX_MODULES} modules")
    types = []
    for m in modules:
        kind = m.get("type") if isinstance(m, dict) else None
        if kind not in MODULE_TYPES:
            raise CheckpointError(
                f"{label}: modules.json names {str(kind)[:100]!r}: only sentence-transformers' "
                "Transformer, Pooling and Normalize modules are read (a folder's modules are "
                "files here, never code to import)"
            )
        where = m.get("path", "")
        simple = where == "" or (isinstance(where, str) and ST_MODULE_DIR.match(where))
        if not simple or (kind == TRANSFORMER) != (where == ""):
            raise CheckpointError(
                f"{label}: modules.json path {str(where)[:100]!r}: the Transformer lies at the "
                "folder's root and each other module in a folder like 1_Pooling"
            )
        assert PurePosixPath(str(where)).name == str(where)  # no separators past the regex
        types.append(kind)
    return types


def _pooling_mode(config: Any, label: str) -> tuple[str, int | None]:
    if not isinstance(config, dict) or set(config) - POOLING_KEYS:
        extra = sorted(set(config) - POOLING_KEYS) if isinstance(config, dict) else []
        raise CheckpointError(f"{label}: a pooling config object, without keys {extra[:3]}")
    if "pooling_mode" in config:  # the name form some versions write
        modes = [config["pooling_mode"]]
    else:
        modes = [mode for key, mode in POOLING_FLAGS.items() if config.get(key) is True]
    if len(modes) != 1 or modes[0] not in BUILT_MODES:
        raise CheckpointError(
            f"{label}: pooling {modes!r}: one mode, {' or '.join(BUILT_MODES)}, is supported"
        )
    dimension = config.get("word_embedding_dimension")
    if dimension is not None and (
        not isinstance(dimension, int) or isinstance(dimension, bool) or not 1 <= dimension <= 65536
    ):
        raise CheckpointError(f"{label}: word_embedding_dimension {dimension!r} is out of range")
    return str(modes[0]), dimension


def _max_seq_length(config: Any, label: str) -> int | None:
    if config is None:
        return None
    value = config.get("max_seq_length") if isinstance(config, dict) else None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SEQ_LENGTH:
        raise CheckpointError(
            f"{label}: sentence_bert_config.json max_seq_length {value!r} is out of range "
            f"(1 to {MAX_SEQ_LENGTH})"
        )
    return value


def read_archive_pooling(archive: Path) -> tuple[Pooling, int | None]:
    """read_pooling of an uploaded folder (zip or tar, already checked at upload), at
    admission: only its small sentence-transformers files are read, each under its cap,
    into a temporary folder; the weights are not inflated."""
    import shutil
    import tarfile
    import tempfile
    import zipfile

    from kdcore.models.ecosystems import ST_ROOT_FILES, st_module_file

    def where(name: str) -> PurePosixPath | None:
        rel = PurePosixPath(name)
        if rel.name in ST_ROOT_FILES and len(rel.parts) <= 2:
            return PurePosixPath(rel.name)
        return st_module_file(rel)

    temp = Path(tempfile.mkdtemp(prefix="kd_st_"))
    try:

        def keep(name: str, fh: Any) -> None:
            rel = where(name)
            if rel is None:
                return
            data = fh.read(ST_FILE_BYTES + 1)
            if len(data) > ST_FILE_BYTES or (temp / rel).exists():
                raise CheckpointError(
                    f"{archive.name}: {rel} is over {ST_FILE_BYTES:,} bytes or twice"
                )
            (temp / rel).parent.mkdir(exist_ok=True)
            (temp / rel).write_bytes(data)

        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    for info in zf.infolist():
                        if not info.is_dir() and where(info.filename) is not None:
                            with zf.open(info) as fh:
                                keep(info.filename, fh)
            else:
                with tarfile.open(archive) as tf:
                    for member in tf:
                        stream = tf.extractfile(member) if member.isfile() else None
                        if stream is not None and where(member.name) is not None:
                            keep(member.name, stream)
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError) as exc:
            raise CheckpointError(
                f"{archive.name} cannot be read as a model folder: {exc}"
            ) from None
        return read_pooling(temp, archive.name)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
