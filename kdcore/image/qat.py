"""Quantisation-aware distillation (`training.quantization: "int8"`): after the float
training, the student is fine-tuned for `training.qat_epochs` more epochs with fake
int8 quantisation in its forward (torch.ao FX, the x86 QAT configuration: per-channel
int8 weights, uint8 activations), while the same distillation loss keeps the
teacher's guidance. Its int8 graph then replaces the post-training one as
`student.int8.onnx`, and the report's `quantization` compares the two on the test split.

The fine-tune uses a tenth of the learning rate, no warm-up, and keeps its last epoch
(the observers settle as it goes). It is not checkpointed: a run stopped during it
starts it again from the float student, which is.

Export: each BatchNorm is folded into its fake-quantised convolution (`fold_batchnorm`),
the model goes to ONNX as QuantizeLinear/DequantizeLinear pairs (observers frozen, so
the ranges are the trained ones), then onnxruntime's basic graph optimisation folds each
weight's QuantizeLinear into an int8 initializer: the file holds int8 weights and runs
on onnxruntime's int8 kernels, as the post-training export does.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcore.engine.callbacks import Callbacks
from kdcore.image.data import DataSplits
from kdcore.image.onnx_variants import ONNX_VARIANTS, measure_onnx
from kdcore.image.trainer import fit
from kdcore.spec import JobSpec

QAT_LR_FACTOR = 0.1


def qat_epochs(spec: JobSpec) -> int:
    """The spec's, else a fifth of the training epochs (at least 1)."""
    return spec.training.qat_epochs or max(1, round(spec.training.epochs / 5))


def prepare(student: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of the student with fake quantisation (weights and activations)."""
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAverageMinMaxObserver,
        QConfig,
        default_per_channel_weight_fake_quant,
        get_default_qat_qconfig_mapping,
    )
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    # version 0: plain FakeQuantize modules, which export to ONNX QDQ (the default fused
    # observer + fake-quant has no ONNX form); activations on the full uint8 range (x86's
    # reduce_range would export a Clip between each Q/DQ pair, which keeps onnxruntime
    # from fusing them into int8 kernels)
    activations = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        reduce_range=False,
    )
    mapping = get_default_qat_qconfig_mapping("x86", version=0).set_global(
        QConfig(activation=activations, weight=default_per_channel_weight_fake_quant)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao announces its own deprecations
        return prepare_qat_fx(copy.deepcopy(student).cpu().train(), mapping, (example,))


def fold_batchnorm(model: nn.Module) -> None:
    """Replace each fake-quantised Conv+BN(+ReLU) with a fake-quantised Conv(+ReLU) whose
    weights and bias hold the BatchNorm (frozen, in eval). The weight's fake quantiser is
    kept: it already measured the folded weight (torch.ao's ConvBn scales the weight by
    gamma / running std before quantising it), so the function is unchanged, and the
    exported graph has no BatchNorm between the int8 convolutions."""
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.nn.qat as nnqat

    for name, module in list(model.named_modules()):
        if not isinstance(module, nniqat.ConvBn2d | nniqat.ConvBnReLU2d):
            continue
        folded = module.to_float()  # a float Conv2d (or ConvReLU2d) with the BN inside
        for part in [folded, *(folded if isinstance(folded, nn.Sequential) else [])]:
            part.qconfig = module.qconfig  # what from_float reads
        cls = nniqat.ConvReLU2d if isinstance(module, nniqat.ConvBnReLU2d) else nnqat.Conv2d
        replacement = cls.from_float(folded)
        replacement.weight_fake_quant = module.weight_fake_quant  # the trained ranges
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)


def export_int8(model: nn.Module, example: torch.Tensor, path: Path) -> float:
    """Write the QAT student as an int8 ONNX graph; returns its max abs difference from
    the fake-quantised PyTorch model on random inputs (a check, as for student.onnx)."""
    import onnxruntime as ort
    from torch.ao.quantization import disable_observer

    model = model.cpu().eval()
    model.apply(disable_observer)
    fold_batchnorm(model)
    qdq = path.with_name(f".{path.name}.qdq")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(qdq),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    tmp = path.with_name(f".{path.name}.tmp")
    options.optimized_model_filepath = str(tmp)  # the folded graph: int8 initializers
    ort.InferenceSession(str(qdq), options, providers=["CPUExecutionProvider"])
    qdq.unlink(missing_ok=True)
    check = torch.randn(4, *example.shape[1:])
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": check.numpy()})
    with torch.no_grad():
        ref = model(check).numpy()
    tmp.replace(path)
    return float(np.abs(out - ref).max())


def quantization_aware(
    spec: JobSpec,
    data: DataSplits,
    student: nn.Module,
    teacher: nn.Module | None,
    device: torch.device,
    files: dict[str, Path],
    callbacks: Callbacks | None,
) -> dict[str, Any]:
    """Fine-tune with fake quantisation, write student.int8.onnx from it, and measure it
    against post-training int8 of the same float student. Returns report.quantization."""
    example = torch.zeros(1, *data.input_shape)
    out_dir = files["safetensors"].parent
    # the comparison: the post-training int8 graph write_variants just wrote (the spec
    # brings onnx_int8 along with quantization), measured before QAT replaces it
    ptq_figures = measure_onnx(files["onnx_int8"], data)
    tr = spec.training
    qat_spec = spec.model_copy(
        update={
            "training": tr.model_copy(
                update={
                    "epochs": qat_epochs(spec),
                    "lr": tr.lr * QAT_LR_FACTOR,
                    "warmup_epochs": 0,
                    "select": "last",
                    "early_stopping": None,
                    "channels_last": False,
                    "compile": False,
                }
            )
        }
    )
    model = prepare(student, example)
    result = fit(qat_spec, data, model, teacher, device, None, callbacks, phase="qat")
    files["onnx_int8"] = out_dir / ONNX_VARIANTS["onnx_int8"]
    max_err = export_int8(model, example, files["onnx_int8"])
    qat_figures = measure_onnx(files["onnx_int8"], data)
    key = "mse" if data.regression else "accuracy"
    return {
        "mode": "qat",
        "epochs": qat_epochs(spec),
        "lr": qat_spec.training.lr,
        "history": result.history,
        "qat_int8": qat_figures,
        "ptq_int8": ptq_figures,
        "qat_minus_ptq": round(qat_figures[key] - ptq_figures[key], 6),
        "onnx_max_abs_error": max_err,
    }
