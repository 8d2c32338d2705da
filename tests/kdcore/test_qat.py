"""Quantisation-aware distillation (kdcore.image.qat): the fine-tune, the int8 graph it
exports, and the comparison with post-training int8 on the same student."""

from __future__ import annotations

import onnx
import pytest

from kdcore.engine.callbacks import Callbacks
from kdcore.runs.entry import run
from kdcore.spec import JobSpec


def _job(**training) -> dict:
    return {
        "name": "qat",
        "kind": "train",
        "student": {"arch": "small_cnn"},
        "dataset": {"builtin": "digits", "image_size": 8, "max_samples": 600},
        "training": {"epochs": 2, "batch_size": 32, "precision": "fp32", "lr": 0.05, **training},
    }


class Phases(Callbacks):
    def __init__(self):
        self.epochs: list[tuple[str, int]] = []

    def on_epoch_end(self, p):
        self.epochs.append((p.phase, p.epoch))


def test_qat_fine_tunes_exports_int8_and_compares_with_post_training(tmp_path):
    phases = Phases()
    report = run(_job(quantization="int8", qat_epochs=1), tmp_path, phases)
    assert phases.epochs == [("train", 1), ("train", 2), ("qat", 1)]
    q = report["quantization"]
    assert q["mode"] == "qat" and q["epochs"] == 1 and q["lr"] == pytest.approx(0.005)
    for side in ("qat_int8", "ptq_int8"):
        assert 0 <= q[side]["accuracy"] <= 1 and q[side]["bytes"] > 0
    assert q["qat_minus_ptq"] == pytest.approx(
        q["qat_int8"]["accuracy"] - q["ptq_int8"]["accuracy"], abs=1e-6
    )
    # the job's onnx_int8 export is the QAT graph, measured as the report says
    assert report["exports"]["onnx_int8"]["accuracy"] == q["qat_int8"]["accuracy"]
    graph = onnx.load(str(tmp_path / "student.int8.onnx")).graph
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8, "the weights are stored as int8"
    ops = {n.op_type for n in graph.node}
    assert ops >= {"QuantizeLinear", "DequantizeLinear"}
    assert "BatchNormalization" not in ops  # folded into the int8 convolutions
    assert not (tmp_path / ".student.ptq.onnx").exists()  # the comparison's file is gone


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"kind": "distill", "teacher": {"arch": "small_cnn"}, "distillation": {"method": "at"}},
            "logit methods",
        ),
        ({"resources": {"gpus": 2}}, "one process"),
    ],
)
def test_qat_is_refused_where_it_cannot_run(change, words):
    with pytest.raises(ValueError, match=words):
        JobSpec.model_validate({**_job(quantization="int8"), **change})


def test_qat_brings_its_export_along():
    spec = JobSpec.model_validate(_job(quantization="int8"))
    assert spec.export == ["safetensors", "onnx_int8", "onnx"]


def test_folding_batchnorm_keeps_the_fake_quantised_function():
    import torch

    from kdcore.image.qat import fold_batchnorm, prepare
    from kdcore.models import build_model

    x = torch.randn(32, 1, 8, 8)
    model = prepare(build_model("small_cnn", 10, (1, 8, 8)), x[:1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):  # move weights, BN statistics and ranges away from their start
        loss = model(x).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.apply(torch.ao.quantization.disable_observer)
    with torch.no_grad():
        before = model(x)
        fold_batchnorm(model)
        after = model(x)
    names = {type(m).__name__ for m in model.modules()}
    assert "ConvBnReLU2d" not in names and "BatchNorm2d" not in names
    assert torch.allclose(before, after, atol=1e-5)
