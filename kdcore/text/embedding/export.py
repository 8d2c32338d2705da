"""The distilled encoder as a sentence-transformers folder (`SentenceTransformer(folder)`
loads it: modules.json, the encoder's config.json and model.safetensors, the tokenizer,
1_Pooling/config.json, 2_Dense for a projection, Normalize when the teacher's
embeddings are unit length), zipped; and as ONNX (inputs `input_ids` and
`attention_mask`, output `sentence_embedding`), checked in onnxruntime, which runs no
Python from the file, before it is kept."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor, nn

from kdcore.text.embedding.encoder import SentenceEncoder
from kdcore.text.embedding.folder import NORMALIZE, POOLING, TRANSFORMER
from kdcore.text.embedding.passages import Batcher
from kdcore.text.onnx_export import export_checked
from kdcore.text.tokens import TextTokenizer

ST_FOLDER = "student_sentence_transformer"
ST_ZIP = f"{ST_FOLDER}.zip"
IDENTITY = "torch.nn.modules.linear.Identity"


def _modules(encoder: SentenceEncoder) -> list[dict[str, Any]]:
    modules = [(TRANSFORMER, ""), (POOLING, "1_Pooling")]
    if encoder.projection is not None:
        modules.append(("sentence_transformers.models.Dense", "2_Dense"))
    if encoder.pooling.normalize:
        modules.append((NORMALIZE, f"{len(modules)}_Normalize"))
    return [
        {"idx": i, "name": str(i), "path": path, "type": kind}
        for i, (kind, path) in enumerate(modules)
    ]


def _contiguous(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def write_sentence_transformer(
    encoder: SentenceEncoder, tok: TextTokenizer, max_len: int, out_dir: Path
) -> Path:
    """out_dir/student_sentence_transformer/ and its zip; returns the zip."""
    folder = out_dir / ST_FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    backbone: Any = encoder.backbone
    config = backbone.config.to_dict()
    config["architectures"] = [type(backbone).__name__]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(_contiguous(backbone.state_dict()), str(folder / "model.safetensors"))
    tok.save(folder)
    (folder / "modules.json").write_text(json.dumps(_modules(encoder), indent=2))
    sbert = {"max_seq_length": max_len, "do_lower_case": False}
    (folder / "sentence_bert_config.json").write_text(json.dumps(sbert, indent=2))
    (folder / "1_Pooling").mkdir()
    pooling = encoder.pooling.config(encoder.width)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    if encoder.projection is not None:
        dense = folder / "2_Dense"
        dense.mkdir()
        p = encoder.projection
        config = {
            "in_features": p.in_features,
            "out_features": p.out_features,
            "bias": p.bias is not None,
            "activation_function": IDENTITY,
        }
        (dense / "config.json").write_text(json.dumps(config, indent=2))
        save_file(
            _contiguous({"linear." + k: v for k, v in p.state_dict().items()}),
            str(dense / "model.safetensors"),
        )
    zipped = out_dir / ST_ZIP
    with zipfile.ZipFile(zipped, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return zipped


def export_encoder(
    encoder: nn.Module, batcher: Batcher, texts: list[str], out_dir: Path
) -> tuple[Path, float]:
    """student.onnx and its largest difference from PyTorch on `texts`."""
    encoder = encoder.cpu().eval()
    backbone: Any = getattr(encoder, "backbone", None)
    if hasattr(backbone, "set_attn_implementation"):  # plain ops trace to a faithful graph
        backbone.set_attn_implementation("eager")
    ids, mask = batcher(texts[:4])
    return export_checked(encoder, ids, mask, out_dir, "sentence_embedding")
