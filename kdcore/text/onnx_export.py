"""A text classifier as ONNX: inputs `input_ids` and `attention_mask` (int64, dynamic
batch and length), output `logits`; checked against PyTorch in onnxruntime (which runs
no Python from the file) before it is kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from kdcore.text.data import TextData

ONNX_FILE = "student.onnx"


class _Logits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_checked(
    module: nn.Module, ids: Tensor, mask: Tensor, out_dir: Path, output: str
) -> tuple[Path, float]:
    """`module(ids, mask)` as out_dir/student.onnx (inputs `input_ids`, `attention_mask`,
    batch and length dynamic; one output named `output`, batch dynamic), kept only if
    onnxruntime (which runs no Python from the file) gives what PyTorch gives on these
    inputs; returns the path and the largest difference."""
    import onnxruntime as ort

    path, tmp = out_dir / ONNX_FILE, out_dir / f".{ONNX_FILE}.tmp"
    axes = {0: "batch", 1: "length"}
    with torch.no_grad():
        torch.onnx.export(
            module,
            (ids, mask),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=[output],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, output: {0: "batch"}},
            dynamo=False,
        )
        ref = module(ids, mask).numpy()
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    err = float(np.abs(out - ref).max())
    if not err < 1e-3:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export disagrees with PyTorch (max abs error {err})")
    tmp.replace(path)
    return path, err


def export_classifier(model: nn.Module, data: TextData, out_dir: Path) -> tuple[Path, float]:
    model = model.cpu().eval()
    if hasattr(model, "set_attn_implementation"):  # plain ops trace to a faithful graph
        model.set_attn_implementation("eager")  # type: ignore[operator]
    wrapper = _Logits(model).eval()  # export restores the mode it found, recursively
    split = data.test if len(data.test) else data.train
    rows = split.rows(torch.arange(min(4, len(split))))
    return export_checked(wrapper, rows.ids, rows.attention.long(), out_dir, "logits")
