import math

import pytest
import torch

import kdcore
from kdcore.checks.validate import parse_spec
from kdcore.engine.callbacks import Callbacks
from kdcore.engine.device import pick_device
from kdcore.engine.optim import lr_at
from kdcore.errors import Cancelled, SpecError
from kdcore.image.augment import augment_batch
from kdcore.image.data import load_dataset
from kdcore.image.trainer import fit
from kdcore.models import build_model
from kdcore.spec import TrainingSpec
from tests.support.specs import tiny_spec


def _setup(spec_dict):
    spec = parse_spec(spec_dict)
    data = load_dataset(spec.dataset, 0)
    torch.manual_seed(0)
    teacher = build_model(spec.teacher.arch, data.num_classes, data.input_shape)
    student = build_model(spec.student.arch, data.num_classes, data.input_shape)
    return spec, data, teacher, student


@pytest.mark.parametrize("method", ["kd", "dkd", "dist", "fitnet", "at", "crd"])
def test_teacher_weights_and_batchnorm_buffers_are_bit_identical_after_distillation(method):
    overrides = {
        "distillation": {"method": method, "crd_negatives": 64},
        "augment": {"crop_padding": 1},
    }
    if method in ("fitnet", "at", "crd"):
        overrides["student"] = {"arch": "small_cnn"}
    spec, data, teacher, student = _setup(tiny_spec(**overrides))
    teacher.train()  # even a teacher handed over in train mode must not change
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    fit(spec, data, student, teacher, torch.device("cpu"), None)
    assert not teacher.training
    after = teacher.state_dict()
    assert any("running_mean" in k for k in before)
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


class Recorder(Callbacks):
    def __init__(self, stop_after=None):
        self.steps, self.epochs, self.checkpoints = [], [], []
        self.stop_after = stop_after

    def on_step(self, p):
        self.steps.append(p)

    def on_epoch_end(self, p):
        self.epochs.append(p)

    def on_checkpoint(self, path, p):
        self.checkpoints.append(path)

    def should_stop(self):
        return (
            self.stop_after is not None
            and bool(self.steps)
            and self.steps[-1].step >= self.stop_after
        )


def test_callbacks_report_losses_lr_accuracy_speed_and_eta(tmp_path):
    spec, data, teacher, student = _setup(tiny_spec())
    rec = Recorder()
    result = fit(spec, data, student, teacher, torch.device("cpu"), tmp_path, rec, log_every=2)
    p = rec.steps[-1]
    assert {"loss", "ce", "kd"} <= set(p.losses)
    assert p.step == p.total_steps == result.steps and p.epochs == 2
    assert p.images_per_s > 0 and p.eta_s == pytest.approx(0, abs=1e-6)
    assert rec.steps[0].lr > rec.steps[-1].lr  # cosine decays
    assert [e.epoch for e in rec.epochs] == [1, 2]
    assert 0 <= rec.epochs[-1].metrics["accuracy"] <= 1
    assert [c.name for c in rec.checkpoints] == ["epoch1.pt", "epoch2.pt"]


def test_cooperative_cancel_stops_between_steps_and_checkpoints(tmp_path):
    spec, data, teacher, student = _setup(tiny_spec())
    rec = Recorder(stop_after=3)
    with pytest.raises(Cancelled):
        fit(spec, data, student, teacher, torch.device("cpu"), tmp_path, rec, log_every=1)
    assert rec.steps[-1].step == 3
    assert [c.name for c in rec.checkpoints] == ["interrupted-step3.pt"]


def test_teacher_cache_used_when_deterministic_and_refused_with_augment(tmp_path):
    spec, data, teacher, student = _setup(tiny_spec())
    assert fit(spec, data, student, teacher, torch.device("cpu"), None).used_teacher_cache
    spec, data, teacher, student = _setup(tiny_spec(augment={"crop_padding": 2}))
    assert not fit(spec, data, student, teacher, torch.device("cpu"), None).used_teacher_cache
    forced = tiny_spec(augment={"crop_padding": 2}, distillation={"cache_teacher": True})
    with pytest.raises(SpecError, match="cache_teacher"):
        parse_spec(forced)


def test_augmentation_is_a_function_of_the_generator():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    spec = parse_spec(tiny_spec(augment={"crop_padding": 1, "hflip": True})).augment
    a = augment_batch(x, spec, torch.Generator().manual_seed(5))
    b = augment_batch(x, spec, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape
    crops = {
        tuple(augment_batch(x, spec, torch.Generator().manual_seed(s))[0].flatten().tolist())
        for s in range(20)
    }
    assert len(crops) > 3


def test_schedules():
    cos = TrainingSpec(lr=1.0, schedule="cosine", epochs=10, warmup_epochs=1)
    assert lr_at(0, 100, 10, cos) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, cos) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, cos) == pytest.approx(0.5)
    step = TrainingSpec(lr=1.0, schedule="step", epochs=10, step_size=3, gamma=0.5)
    assert [lr_at(s * 10, 100, 10, step) for s in (0, 3, 6, 9)] == [1.0, 0.5, 0.25, 0.125]
    one = TrainingSpec(lr=1.0, schedule="onecycle", epochs=10)
    assert lr_at(0, 100, 10, one) == pytest.approx(1 / 25)
    assert lr_at(30, 100, 10, one) == pytest.approx(1.0)
    assert lr_at(99, 100, 10, one) < 0.01
    assert lr_at(50, 100, 10, TrainingSpec(lr=0.3, schedule="constant")) == 0.3


@pytest.mark.parametrize("optimizer,nesterov", [("sgd", True), ("adamw", False)])
def test_optimizers_reduce_the_loss(optimizer, nesterov, tmp_path):
    spec = tiny_spec(
        kind="train",
        teacher=None,
        training={
            "optimizer": optimizer,
            "nesterov": nesterov,
            "epochs": 4,
            "lr": 0.01 if optimizer == "adamw" else 0.05,
        },
    )
    report = kdcore.train(spec, tmp_path)
    first, last = report["history"][0]["loss"], report["history"][-1]["loss"]
    assert last < first and math.isfinite(last)


def test_regression_distillation_with_mse(tmp_path):
    spec = tiny_spec(
        task="regression",
        teacher={"arch": "mlp"},
        student={"arch": "mlp_small"},
        dataset={"num_classes": 1, "shape": [16], "regression": True},
        distillation={"method": "mse", "kd_weight": 0.5},
        training={"epochs": 3},
    )
    report = kdcore.distill(spec, tmp_path)
    assert "mse" in report["student"] and "mse" in report["teacher"]
    assert "agreement" not in report


def test_cuda_request_without_cuda_is_a_spec_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SpecError, match="CUDA"):
        pick_device("cuda")
