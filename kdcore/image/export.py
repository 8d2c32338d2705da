"""Writing the distilled student: safetensors + a JSON config that rebuilds it,
TorchScript, ONNX (checked against PyTorch with onnxruntime), and loading it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcore.image.data import DataSplits
from kdcore.io.checkpoints import atomic_write, load_weights
from kdcore.models import build_model

CONFIG_VERSION = 1


def model_config(
    arch: str, num_classes: int, data: DataSplits, task: str, model: nn.Module | None = None
) -> dict[str, Any]:
    """student.json: everything `load_student` needs to rebuild the model."""
    hf_config = getattr(model, "hf_config", None)
    extra = {"hf_config": hf_config} if hf_config is not None else {}
    return {
        **extra,
        "format_version": CONFIG_VERSION,
        "arch": arch,
        "num_classes": num_classes,
        "input_shape": list(data.input_shape),
        "task": task,
        "normalize": {"mean": data.mean, "std": data.std},
        "class_names": data.class_names,
    }


def save_student(
    model: nn.Module,
    config: dict[str, Any],
    out_dir: Path,
    formats: list[str],
    skipped: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write every requested format; returns {format: path}. TorchScript is written
    where the model traces; where it does not (some timm and hf models), the reason goes
    into `skipped` and the other formats are still written."""
    from safetensors.torch import save as safetensors_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    paths: dict[str, Path] = {}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path = out_dir / "student.safetensors"
    blob = safetensors_bytes(state, metadata={"format": "pt"})
    atomic_write(path, lambda fh: fh.write(blob))
    paths["safetensors"] = path
    path = out_dir / "student.json"
    atomic_write(path, lambda fh: fh.write(json.dumps(config, indent=2).encode()))
    paths["config"] = path
    example = torch.zeros(1, *config["input_shape"])
    if "torchscript" in formats:
        path = out_dir / "student.torchscript.pt"
        try:
            with torch.no_grad():
                scripted = torch.jit.trace(model, example)
            atomic_write(path, lambda fh: torch.jit.save(scripted, fh))
            paths["torchscript"] = path
        except Exception as exc:  # tracing fails in many model-specific ways
            if skipped is None:
                raise
            skipped["torchscript"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    if "onnx" in formats:
        path = out_dir / "student.onnx"
        export_onnx(model, example, path, preprocessing_props(config))
        paths["onnx"] = path
    return paths


def preprocessing_props(config: dict[str, Any]) -> dict[str, str]:
    """student.json's preprocessing as the ONNX metadata_props a teacher is read with
    (kdcore.models.onnx.PREPROCESSING_PROPS): a graph carries what it was trained on."""
    normalize = config.get("normalize") or {}
    values = {
        "kd.input_shape": config.get("input_shape"),
        "kd.mean": normalize.get("mean"),
        "kd.std": normalize.get("std"),
        "kd.class_names": config.get("class_names"),
    }
    return {key: json.dumps(value) for key, value in values.items() if value is not None}


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, props: dict[str, str] | None = None
) -> None:
    """Export with a dynamic batch axis and `props` in the graph's metadata_props, then
    check onnxruntime agrees with PyTorch."""
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            dynamo=False,
        )
    if props:
        import onnx

        graph = onnx.load(str(tmp))
        onnx.helper.set_model_props(graph, props)
        onnx.save(graph, str(tmp))
    check = torch.randn(3, *example.shape[1:])
    max_err = onnx_max_abs_error(model, tmp, check)
    if not max_err < 1e-3:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export disagrees with PyTorch (max abs error {max_err})")
    tmp.replace(path)


def onnx_max_abs_error(model: nn.Module, onnx_path: Path, x: torch.Tensor) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    return float(np.abs(ort_out - ref).max())


def load_student(out_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a student from `student.json` + `student.safetensors` in `out_dir`."""
    out_dir = Path(out_dir)
    config = json.loads((out_dir / "student.json").read_text())
    model = build_model(
        config["arch"],
        config["num_classes"],
        tuple(config["input_shape"]),
        config.get("hf_config"),
    )
    load_weights(model, out_dir / "student.safetensors")
    return model.eval(), config
