"""Smaller exports of the student and what each one costs: an fp16 and an int8 ONNX
graph derived from student.onnx, and, for every export, accuracy on the test split,
latency at batch 1 and 64 and bytes on disk (report.exports.<format>).

The graphs are measured by onnxruntime, which runs no Python from a file; TorchScript
is measured on the traced module still in memory (kdcore never loads a TorchScript
file: loading one can run code).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcore.image.data import DataSplits, model_input
from kdcore.shipping.latency import measure

CALIBRATION_SAMPLES = 256  # a slice of the training split, enough for min/max ranges
CALIBRATION_BATCH = 32
ONNX_VARIANTS = {"onnx_fp16": "student.fp16.onnx", "onnx_int8": "student.int8.onnx"}


def write_fp16(source: Path, path: Path) -> None:
    """Weights and arithmetic in fp16, inputs and outputs still fp32 (callers send the
    same tensors as to student.onnx). Half the bytes; faster where the runtime has fp16
    kernels (GPUs), emulated where it has not."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def write_int8(source: Path, path: Path, calibration: torch.Tensor) -> None:
    """onnxruntime static quantisation (QDQ, int8 weights per channel, uint8
    activations), calibrated on `calibration` (training samples, normalised as the
    student sees them)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[torch.Tensor] = iter(calibration.split(CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch.numpy()}

    tmp = path.with_name(f".{path.name}.tmp")
    quantize_static(
        str(source),
        str(tmp),
        _Batches(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    tmp.replace(path)


def write_variants(files: dict[str, Path], formats: list[str], data: DataSplits) -> None:
    """Write each requested ONNX variant next to student.onnx; add it to `files`."""
    source = files["onnx"]
    if "onnx_fp16" in formats:
        files["onnx_fp16"] = source.with_name(ONNX_VARIANTS["onnx_fp16"])
        write_fp16(source, files["onnx_fp16"])
    if "onnx_int8" in formats:
        files["onnx_int8"] = source.with_name(ONNX_VARIANTS["onnx_int8"])
        calibration = model_input(data, data.train.x[:CALIBRATION_SAMPLES])
        write_int8(source, files["onnx_int8"], calibration)


def _median_ms(run: Callable[[], Any]) -> float:
    """The median of kdcore.shipping.latency's repeated runs (warm-up, until steady or capped)."""
    return float(measure({"export": run}, time_cap_s=0.5)["export"]["median_ms"])


def _measure(forward: Callable[[torch.Tensor], torch.Tensor], data: DataSplits) -> dict[str, Any]:
    x, y = data.test.x, data.test.y
    out = torch.cat([forward(b) for b in x.split(256)]) if len(x) else torch.zeros(0)
    if data.regression:
        quality = {"mse": float(((out.reshape(y.shape) - y) ** 2).mean())}
    else:
        quality = {"accuracy": float((out.argmax(1) == y).float().mean())}
    shape = data.input_shape
    one, many = torch.randn(1, *shape), torch.randn(64, *shape)
    return {
        **quality,
        "latency_ms_batch1": _median_ms(lambda: forward(one)),
        "latency_ms_batch64": _median_ms(lambda: forward(many)),
    }


def _onnx_forward(path: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the job's CPU budget, as torch has it
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0]).float()


def measure_exports(
    files: dict[str, Path], student: nn.Module, data: DataSplits
) -> dict[str, dict[str, Any]]:
    """report.exports: each written format's test quality, CPU latency and bytes."""
    student = student.cpu().eval()
    out: dict[str, dict[str, Any]] = {}
    for fmt in ("onnx", *ONNX_VARIANTS):
        if fmt in files:
            out[fmt] = measure_onnx(files[fmt], data)
    if "torchscript" in files:
        with torch.no_grad():
            traced = torch.jit.trace(student, torch.zeros(1, *data.input_shape))

        def run_traced(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return traced(x).float()

        out["torchscript"] = {
            "runtime": "torch (traced)",
            **_measure(run_traced, data),
            "bytes": files["torchscript"].stat().st_size,
        }
    return out


def measure_onnx(path: Path, data: DataSplits) -> dict[str, Any]:
    """A graph's test quality, CPU latency (onnxruntime, the job's threads) and bytes."""
    forward = _onnx_forward(path, torch.get_num_threads())
    return {"runtime": "onnxruntime", **_measure(forward, data), "bytes": path.stat().st_size}
