"""Language models and text classifiers from `transformers`, named `hf:<Class>`: a
causal LM (`...ForCausalLM`, `...LMHeadModel`) or a sequence classifier
(`...ForSequenceClassification`). As for images (kdcore.models.ecosystems) a model is
built from a config read by its config class (never the Auto* classes: no remote code,
`auto_map` refused) and weights come only from safetensors: an inline `config`, or a
model folder (config.json + model.safetensors [+ tokenizer.json]) as a folder on disk
or an uploaded zip/tar.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from kdcore.errors import CheckpointError, SpecError
from kdcore.models.ecosystems import (
    FOLDER_CAPS,
    HF,
    WEIGHTS,
    check_hf_config,
    extract_model_folder,
    folder_file,
    folder_members,
)
from kdcore.text.tokens import TextTokenizer, read_tokenizer

LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
CLASSIFIER_SUFFIX = "ForSequenceClassification"
ENCODER_SUFFIX = "Model"  # task embedding: the bare encoder (its hidden states)
SKIP = ("Auto", "TF", "Flax")
MAX_FOLDER_BYTES = 16 * 1024**3


@functools.cache
def text_names(task: str) -> tuple[str, ...]:
    import transformers

    if task == "embedding":  # an encoder's bare model: hf:BertModel, hf:RobertaModel...
        return tuple(
            HF + n
            for n in dir(transformers)
            if n.endswith(ENCODER_SUFFIX)
            and not n.endswith(("PreTrainedModel", *LM_SUFFIXES))
            and not n.startswith(SKIP)
            and n != ENCODER_SUFFIX
        )
    ends = LM_SUFFIXES if task == "causal_lm" else (CLASSIFIER_SUFFIX,)
    return tuple(HF + n for n in dir(transformers) if n.endswith(ends) and not n.startswith(SKIP))


@dataclass
class ModelFolder:
    config: dict[str, Any]
    weights: Path | None  # model.safetensors
    tokenizer: TextTokenizer | None
    temp: Path | None = None  # a folder to delete once the weights are loaded

    def close(self) -> None:
        if self.temp is not None:
            shutil.rmtree(self.temp, ignore_errors=True)


def read_model_folder(path: Path) -> ModelFolder:
    """A model folder: a directory, or a zip/tar of one (read with the archive caps)."""
    temp = None if path.is_dir() else Path(tempfile.mkdtemp(prefix="kd_text_"))
    try:
        folder = path if temp is None else temp
        if temp is not None:
            extract_model_folder(path, temp, MAX_FOLDER_BYTES)
        config_file = folder_file(folder, "config.json", path.name)
        if config_file is None:
            raise CheckpointError(f"{path.name} is not a model folder: it has no config.json")
        try:
            config = check_hf_config(json.loads(config_file.read_bytes()))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path.name}: config.json: {exc}") from None
        tokenizer = None
        if (tokenizer_file := folder_file(folder, "tokenizer.json", path.name)) is not None:
            try:
                text = tokenizer_file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise CheckpointError(f"{path.name}: tokenizer.json is not UTF-8") from None
            tokenizer = read_tokenizer(text, f"{path.name}/tokenizer.json")
        weights = folder_file(folder, WEIGHTS, path.name)
    except BaseException:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        raise
    return ModelFolder(config, weights, tokenizer, temp)


def read_folder_sizing(archive: Path) -> tuple[dict[str, Any], int | None]:
    """What sizes a model built from an uploaded model folder, read as the worker reads
    it: its config.json (checked) and, when it has one, its tokenizer's vocabulary size
    (a text job's models take that vocabulary). Members are streamed under their caps."""
    found = folder_members(archive, tuple(FOLDER_CAPS), _small_file_summary)
    if "config.json" not in found:
        raise CheckpointError(f"{archive.name} is not a model folder: it has no config.json")
    return found["config.json"], found.get("tokenizer.json")


def _small_file_summary(key: str, fh: Any, name: str) -> Any:
    cap = FOLDER_CAPS[key]
    data = fh.read(cap + 1)
    if len(data) > cap:
        raise CheckpointError(f"{name}: {key} is over {cap:,} bytes")
    if key == "config.json":
        try:
            return check_hf_config(json.loads(data))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{name}: config.json: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{name}: tokenizer.json is not UTF-8") from None
    return read_tokenizer(text, f"{name}/tokenizer.json").vocab_size


def text_model_class(arch: str, task: str) -> Any:
    """The transformers class `arch` names; ValueError if it is none of the task's."""
    import transformers

    if arch not in text_names(task):
        kinds = {"causal_lm": "causal LM", "embedding": "encoder"}
        kind = kinds.get(task, "sequence classification")
        ends = {"causal_lm": " or ".join(LM_SUFFIXES), "embedding": ENCODER_SUFFIX}.get(
            task, CLASSIFIER_SUFFIX
        )
        raise ValueError(f"{arch} is not a transformers {kind} class (hf:<Name{ends}>)")
    return getattr(transformers, arch.removeprefix(HF))


def build_text_model(
    arch: str,
    config: dict[str, Any],
    task: str,
    tokenizer: TextTokenizer,
    num_labels: int | None = None,
) -> nn.Module:
    """The class `arch` names from `config`, with the tokenizer's vocabulary size and
    special ids (and the class count) put in."""
    cls = text_model_class(arch, task)
    values = {k: v for k, v in check_hf_config(config).items() if k != "architectures"}
    cfg = cls.config_class.from_dict(values)
    cfg.vocab_size = tokenizer.vocab_size
    cfg.eos_token_id = cfg.bos_token_id = tokenizer.eos_id
    cfg.pad_token_id = tokenizer.pad_id
    if num_labels is not None:
        cfg.num_labels = num_labels
    return cls(cfg)


def load_weights(model: nn.Module, weights: Path, what: str) -> None:
    """safetensors only; every key the model has must be there, except weights tied to
    others (a causal LM's head is its embedding: saved once)."""
    from safetensors.torch import load_file

    state = load_file(str(weights))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape that does not fit
        raise CheckpointError(f"{what}: the weights do not fit the config: {exc}"[:500]) from None
    # a tied weight is the same tensor as one that was loaded (the head is the embedding)
    storage = {k: v.data_ptr() for k, v in model.state_dict(keep_vars=True).items()}
    loaded = {storage[k] for k in state if k in storage}
    missing = [k for k in result.missing_keys if storage.get(k) not in loaded]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{what}: the weights do not fit the config (missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks: the longest ModuleList of the model."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise SpecError([("/student/init_from_teacher", "the model has no list of layers")])
    return max(lists, key=len)


def ends_kept(student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher's first and last layers, the rest evenly spread between them (6 into
    3: [0, 3, 5]): what an embedding student starts from. The last layer shapes the
    output space the student must reproduce: all-MiniLM-L6-v2 into 3 layers, Spearman of
    pairwise cosines on 1,000 held-out fortunes 0.57 from [0, 3, 5] against 0.43 from
    [0, 2, 4] before training, 0.81 against 0.77 after the same 160 steps."""
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [int(i * step + 0.5) for i in range(student_layers)]


def init_from_teacher(
    student: nn.Module,
    teacher: nn.Module,
    layers: list[int] | None = None,
    keep_ends: bool = False,
) -> list[int]:
    """Copy the teacher's weights into the student: every parameter outside the layers
    whose name and shape match (embeddings, final norm, head), and student layer i from
    teacher layer `layers[i]`; by default teacher layer i * L_teacher // L_student (every
    other layer for half the depth, as DistilBERT), or with `keep_ends` the first and
    last and the rest spread between them. Returns the teacher layers taken."""
    s_layers, t_layers = layer_list(student), layer_list(teacher)
    if layers is not None:
        taken = list(layers)
    elif keep_ends:
        taken = ends_kept(len(s_layers), len(t_layers))
    else:
        taken = [i * len(t_layers) // len(s_layers) for i in range(len(s_layers))]
    if len(taken) != len(s_layers) or not all(0 <= j < len(t_layers) for j in taken):
        raise SpecError(
            [
                (
                    "/student/teacher_layers",
                    f"one teacher layer per student layer ({len(s_layers)}), each of "
                    f"0..{len(t_layers) - 1}",
                )
            ]
        )
    for i, j in enumerate(taken):
        try:
            s_layers[i].load_state_dict(t_layers[j].state_dict())
        except RuntimeError:
            raise SpecError(
                [
                    (
                        "/student/init_from_teacher",
                        "the student's layers differ in width from the teacher's",
                    )
                ]
            ) from None
    in_layers = {id(p) for p in s_layers.parameters()}
    t_params = dict(teacher.named_parameters())
    for name, p in student.named_parameters():
        if id(p) not in in_layers and name in t_params and t_params[name].shape == p.shape:
            p.data.copy_(t_params[name].data)
    return taken


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (transformers' own, under the name
    of the installed version: activation_ from 5.x, gradient_ before)."""
    for name in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):
        if hasattr(model, name):
            getattr(model, name)()
            return


def is_checkpointing(model: nn.Module) -> bool:
    """Whether any layer recomputes its activations (the flag transformers sets on
    each layer it checkpoints, in every version)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
