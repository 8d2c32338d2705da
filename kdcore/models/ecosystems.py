"""Architectures from the ecosystems users already work in, named with a prefix:

  timm:<model name>         any timm model, built with `num_classes` and `in_chans`
                            from the dataset (and `img_size` where the model takes one);
                            random initialisation, never a download
  hf:<ModelClass>           a Hugging Face transformers image classifier (ViT, DeiT,
                            ConvNext, Swin, ResNet, MobileViT, EfficientNet...), built
                            from a config dict: the spec's inline `config`, or the
                            config.json of an uploaded model folder

An hf config is data: it is read by the config class's `from_dict`, never through the
Auto* classes, so `auto_map` and remote code cannot take part (such keys are refused).
A forward hook turns the model's output object into its logits tensor, so the
trainer, the feature taps and the exports see a plain classifier with the model's own
layer names and state-dict keys.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from torch import nn

TIMM, HF = "timm:", "hf:"
HF_SUFFIX = "ForImageClassification"
# keys that would make transformers look for code, kernels or remote files: an
# attention implementation may name a Hub repository of kernels (`kernels-community/...`,
# fetched and run when the `kernels` package is installed), a quantization config loads
# third-party kernels; only the built-in attention implementations are taken
HF_REFUSED_KEYS = frozenset(
    {"auto_map", "custom_pipelines", "trust_remote_code", "quantization_config", "use_kernels"}
)
HF_ATTENTION_KEYS = ("attn_implementation", "_attn_implementation")
HF_BUILTIN_ATTENTION = (None, "eager", "sdpa")
# a key whose number repeats a block (num_hidden_layers, n_layer, encoder_layers, depths):
# each costs build time even on the meta device (n_layer 16,000 took 99 s in the API), so
# their sum is capped; floats (layer_norm_eps) count nothing
LAYER_KEY = re.compile(r"layer|depth", re.IGNORECASE)
MAX_CONFIG_BYTES = 256 * 1024
MAX_TOKENIZER_BYTES = 64 * 1024**2
WEIGHTS = "model.safetensors"
# the small files of a model folder, each read whole once extracted, and their caps
FOLDER_CAPS = {"config.json": MAX_CONFIG_BYTES, "tokenizer.json": MAX_TOKENIZER_BYTES}
# a sentence-transformers folder's own small files (kdcore.text.embedding.folder): at the
# folder's root, and each module's config in a folder named like `1_Pooling`; they are
# read as JSON, never as code
ST_FILE_BYTES = 64 * 1024
ST_ROOT_FILES = ("modules.json", "sentence_bert_config.json")
ST_MODULE_DIR = re.compile(r"^[0-9]{1,2}_[A-Za-z]{1,32}$")
# building a model costs time per layer even on the meta device: cap what a config asks
MAX_CONFIG_INT = 1_000_000
MAX_CONFIG_LAYERS = 256


def is_prefixed(arch: str) -> bool:
    return arch.startswith((TIMM, HF))


@functools.cache
def timm_names() -> tuple[str, ...]:
    import timm

    return tuple(TIMM + n for n in timm.list_models())


@functools.cache
def hf_names() -> tuple[str, ...]:
    import transformers

    # not the Auto* classes (they resolve classes from the config, remote code included)
    # nor TimmWrapper (it builds from timm's hub names); TF/Flax classes are not torch
    skip = ("Auto", "TimmWrapper", "TF", "Flax")
    return tuple(
        HF + n for n in dir(transformers) if n.endswith(HF_SUFFIX) and not n.startswith(skip)
    )


def known(arch: str) -> bool:
    if arch.startswith(TIMM):
        return arch in timm_names()
    return arch in hf_names()


def _image(input_shape: tuple[int, ...], arch: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"{arch} needs image input (C, H, W); got shape {list(input_shape)}")
    c, h, w = input_shape
    return c, h, w


def build_timm(arch: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    import timm

    c, h, w = _image(input_shape, arch)
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes, "in_chans": c}
    try:  # transformers-style models size their position embeddings from img_size
        return timm.create_model(arch.removeprefix(TIMM), img_size=(h, w), **kwargs)
    except TypeError:  # convolutional models take no img_size
        return timm.create_model(arch.removeprefix(TIMM), **kwargs)


def check_hf_config(config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise ValueError("an hf config is a JSON object")
    refused = HF_REFUSED_KEYS & set(config)
    if refused:
        raise ValueError(f"hf config keys {sorted(refused)} are refused: no remote code runs")
    for key in HF_ATTENTION_KEYS:
        if config.get(key) not in HF_BUILTIN_ATTENTION:
            raise ValueError(
                f"hf config {key!r} must be one of the built-in implementations "
                f"{[v for v in HF_BUILTIN_ATTENTION if v]}: kernels are not fetched or run"
            )
    if len(json.dumps(config)) > MAX_CONFIG_BYTES:
        raise ValueError(f"the hf config is over {MAX_CONFIG_BYTES // 1024} KiB")
    layers: dict[str, int] = {}
    for key, value in config.items():
        numbers = value if isinstance(value, list) else [value]
        ints = [v for v in numbers if isinstance(v, int) and not isinstance(v, bool)]
        if any(abs(v) > MAX_CONFIG_INT for v in ints):
            raise ValueError(f"hf config {key!r} is over {MAX_CONFIG_INT:,}")
        if LAYER_KEY.search(key) and ints:
            layers[key] = sum(ints)
    if sum(layers.values()) > MAX_CONFIG_LAYERS:
        raise ValueError(
            f"hf config {', '.join(map(repr, sorted(layers)))} asks for over "
            f"{MAX_CONFIG_LAYERS} layers"
        )
    return config


def _logits(_module: nn.Module, _inputs: Any, output: Any) -> Any:
    return output.logits


def build_hf(
    arch: str, num_classes: int, input_shape: tuple[int, ...], config: dict[str, Any] | None
) -> nn.Module:
    """The class `arch` names, from `config` with the dataset's class count, channels and
    image size put in (so one config serves any dataset; weights that then do not fit
    are named by the checkpoint check)."""
    import transformers

    name = arch.removeprefix(HF)
    if HF + name not in hf_names():
        raise ValueError(f"{name} is not a transformers image classification class")
    if config is None:
        raise ValueError(f"{arch} needs a config: student.config, or an uploaded model folder")
    c, h, _ = _image(input_shape, arch)
    cls = getattr(transformers, name)
    values = {k: v for k, v in check_hf_config(config).items() if k not in ("architectures",)}
    cfg = cls.config_class.from_dict(values)
    cfg.num_labels = num_classes
    cfg.return_dict = True
    if hasattr(cfg, "num_channels"):
        cfg.num_channels = c
    if hasattr(cfg, "image_size"):
        cfg.image_size = h
    model = cls(cfg)
    model.register_forward_hook(_logits)
    # what student.json records to rebuild it (labels are the dataset's, versions vary)
    skip = ("id2label", "label2id", "transformers_version")
    model.hf_config = {k: v for k, v in cfg.to_diff_dict().items() if k not in skip}
    return model


def is_model_folder(path: str | Path, max_members: int = 1000) -> bool:
    """A zip or tar with a config.json at its root or in one top folder (a torch.save
    zip or a .pt2 archive has none). Only the member names are read."""
    import tarfile
    import zipfile

    def has_config(names: Any) -> bool:
        for i, name in enumerate(names):
            parts = PurePosixPath(name).parts
            if parts and parts[-1] == "config.json" and len(parts) <= 2:
                return True
            if i >= max_members:
                return False
        return False

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return has_config(zf.namelist())
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as tf:
                return has_config(member.name for member in tf)
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError):
        return False
    return False


def check_hf_folder(archive: Path, max_bytes: int) -> dict[str, Any]:
    """Check an uploaded model folder without keeping it: caps, config.json, and
    model.safetensors readable as weights. Returns the config."""
    import shutil

    from kdcore.io.checkpoints import read_shapes

    config, weights = read_hf_folder(archive, max_bytes)
    try:
        read_shapes(weights)
    finally:
        shutil.rmtree(weights.parent, ignore_errors=True)
    return config


def st_module_file(rel: PurePosixPath) -> PurePosixPath | None:
    """`1_Pooling/config.json` (at the root or under one top folder) as that relative
    path: a sentence-transformers module's config; None for any other member."""
    parts = rel.parts
    if rel.name == "config.json" and 2 <= len(parts) <= 3 and ST_MODULE_DIR.match(parts[-2]):
        return PurePosixPath(parts[-2], "config.json")
    return None


def _st_member(folder: Path, module: PurePosixPath, kept: dict[str, PurePosixPath]) -> Path:
    from kdcore.errors import CheckpointError

    if str(module) in kept:
        raise CheckpointError(f"the folder holds {module} twice: a model folder has one of each")
    kept[str(module)] = module
    (folder / module.parent).mkdir(exist_ok=True)
    return folder / module


def folder_members(archive: Path, names: tuple[str, ...], summarise: Any) -> dict[str, Any]:
    """summarise(name, stream, archive name) of each member of a model folder archive
    named in `names` (at its root or in one top folder), streamed, nothing inflated to
    disk. A name found twice (`config.json` and `sub/config.json`) refuses the folder:
    it would be sized by one and built by the other."""
    import tarfile
    import zipfile

    from kdcore.errors import CheckpointError

    def wanted(name: str) -> str | None:
        parts = PurePosixPath(name).parts
        if len(parts) >= 2 and ST_MODULE_DIR.match(parts[-2]):  # 1_Pooling/config.json
            return None
        return parts[-1] if parts and len(parts) <= 2 and parts[-1] in names else None

    found: dict[str, Any] = {}
    where: dict[str, str] = {}

    def take(key: str, member: str, stream: Any) -> None:
        if key in where:
            raise CheckpointError(
                f"{archive.name} holds {key} twice ({where[key]} and {member}): a model "
                "folder has one of each"
            )
        where[key] = member
        found[key] = summarise(key, stream, archive.name)

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if key := wanted(info.filename):
                        with zf.open(info) as fh:
                            take(key, info.filename, fh)
        else:
            with tarfile.open(archive) as tf:
                for member in tf:
                    key = wanted(member.name)
                    stream = tf.extractfile(member) if key and member.isfile() else None
                    if key and stream is not None:
                        take(key, member.name, stream)
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{archive.name} cannot be read as a model folder: {exc}") from None
    return found


def read_hf_folder_shapes(archive: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """config.json and the tensor shapes of model.safetensors, read from an already
    checked model folder without inflating the weights (a submission's fit check)."""
    from kdcore.errors import CheckpointError

    found = folder_members(archive, ("config.json", WEIGHTS), _member_summary)
    if set(found) != {"config.json", WEIGHTS}:
        raise CheckpointError(f"{archive.name} is not a Hugging Face model folder")
    return found["config.json"], found[WEIGHTS]


def _member_summary(key: str, fh: Any, name: str) -> Any:
    from kdcore.io.checkpoints import safetensors_header_shapes

    if key == WEIGHTS:
        return safetensors_header_shapes(fh, name)
    return check_hf_config(json.loads(fh.read(MAX_CONFIG_BYTES + 1)))


def extract_model_folder(archive: Path, folder: Path, max_bytes: int) -> None:
    """An uploaded model folder's files (FOLDER_CAPS' and model.safetensors, at the
    archive's root or in one top folder) written into `folder` chunk by chunk (weights
    are never held in memory as bytes), read with the archive caps; other members are
    only checked. A small file over its cap is refused."""
    from kdcore.errors import CheckpointError, DataError
    from kdcore.io.archives import iter_archive_files

    kept: dict[str, PurePosixPath] = {}

    def sink(rel: PurePosixPath) -> Path | None:
        module = st_module_file(rel)
        if module is not None:
            return _st_member(folder, module, kept)
        keep = rel.name in (*FOLDER_CAPS, WEIGHTS, *ST_ROOT_FILES) and len(rel.parts) <= 2
        if not keep:
            return None
        if rel.name in kept:  # sized by one, built by the other: refused
            raise CheckpointError(
                f"{archive.name} holds {rel.name} twice ({kept[rel.name]} and {rel}): a "
                "model folder has one of each"
            )
        kept[rel.name] = rel
        return folder / rel.name

    try:
        for _ in iter_archive_files(
            archive, max_files=1000, max_bytes=max_bytes, keep=False, sink=sink
        ):
            pass
    except DataError as exc:
        raise CheckpointError(str(exc)) from None
    for name in FOLDER_CAPS:  # refused at upload, not first when a job reads them
        folder_file(folder, name, archive.name)
    for name in (*ST_ROOT_FILES, *kept):
        if name not in FOLDER_CAPS and name != WEIGHTS:
            folder_file(folder, name, archive.name)


def folder_file(folder: Path, name: str, label: str) -> Path | None:
    """A model folder's file (a regular file, not a link), checked against its cap in
    FOLDER_CAPS before anyone reads it; None when the folder has none."""
    from kdcore.errors import CheckpointError

    f = folder / name
    if not f.is_file() or f.is_symlink():
        return None
    cap = FOLDER_CAPS.get(name, ST_FILE_BYTES if name != WEIGHTS else None)
    if cap is not None and f.stat().st_size > cap:
        raise CheckpointError(f"{label}: {name} is over {cap:,} bytes")
    return f


def read_hf_folder(archive: Path, max_bytes: int) -> tuple[dict[str, Any], Path]:
    """config.json and model.safetensors from an uploaded zip/tar of a model folder
    (at its root or in one top folder), read with the archive caps. Returns the config
    and the weights written to a temporary file (the caller deletes its folder)."""
    import shutil

    from kdcore.errors import CheckpointError

    folder = Path(tempfile.mkdtemp(prefix="kd_hf_"))
    try:
        extract_model_folder(archive, folder, max_bytes)
        found = {n: folder_file(folder, n, archive.name) for n in ("config.json", WEIGHTS)}
        missing = [n for n, f in found.items() if f is None]
        if missing:
            raise CheckpointError(
                f"{archive.name} is not a Hugging Face model folder: it lacks " + ", ".join(missing)
            )
        try:
            config = check_hf_config(json.loads(folder.joinpath("config.json").read_bytes()))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{archive.name}: config.json: {exc}") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return config, folder / WEIGHTS
