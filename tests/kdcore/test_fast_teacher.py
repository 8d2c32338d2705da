"""The speed levers keep the teacher's soft targets (and so the loss) within tolerance:
BN folding to float rounding, int8 within the stated fidelity bounds or not at all,
channels_last to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.checks.validate import parse_spec
from kdcore.image import fast_teacher as ft
from kdcore.image.augment import augment_batch
from kdcore.image.data import load_dataset
from kdcore.image.trainer import fit
from kdcore.losses import build_loss
from kdcore.models import build_model
from tests.support.specs import tiny_spec

DIGITS = {"builtin": "digits", "image_size": 16, "val_fraction": 0.1, "test_fraction": 0.2}


def _digits_spec(**distillation):
    return parse_spec(
        {
            "kind": "distill",
            "teacher": {"arch": "cifar_resnet20"},
            "student": {"arch": "small_cnn"},
            "dataset": DIGITS,
            "augment": {"crop_padding": 2},
            "distillation": {"method": "kd", "temperature": 4.0, **distillation},
            "training": {"epochs": 4, "batch_size": 64, "lr": 0.1, "precision": "fp32"},
        }
    )


@pytest.fixture(scope="module")
def trained():
    """A cifar_resnet20 teacher trained on digits (about 98% test accuracy), the data,
    and a sampler of augmented training batches like the trainer's."""
    spec = _digits_spec()
    data = load_dataset(spec.dataset, 0)
    torch.manual_seed(0)
    teacher = build_model("cifar_resnet20", data.num_classes, data.input_shape)
    plain = spec.model_copy(update={"kind": "train", "teacher": None})
    fit(plain, data, teacher, None, torch.device("cpu"), None)
    teacher.eval()

    def batches(count: int, offset: int) -> list[torch.Tensor]:
        out = []
        for i in range(offset, offset + count):
            idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(i))
            out.append(
                augment_batch(
                    data.train.x[idx[:64]], spec.augment, torch.Generator().manual_seed(i)
                )
            )
        return out

    return teacher, data, batches


def test_folding_batchnorm_keeps_the_logits_to_float_rounding(trained):
    teacher, _, batches = trained
    before = copy.deepcopy(teacher.state_dict())
    folded = ft.fold_batchnorm(teacher)
    assert folded is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())  # a copy was folded
    x = batches(1, 100)[0]
    with torch.inference_mode():
        ref, out = teacher(x), folded(x)
    assert (out - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_int8_soft_targets_stay_within_the_stated_tolerance(trained):
    teacher, _, batches = trained
    int8 = ft.quantize_int8(teacher, batches(8, 0))
    assert int8 is not None
    agreement, kl = ft.fidelity(teacher, int8, batches(8, 8), temperature=4.0)
    assert agreement >= ft.INT8_MIN_AGREEMENT
    assert 0 < kl <= ft.INT8_MAX_KL  # int8 is not exact, and close enough

    # the KD loss of one batch, against fp32 and against int8 soft targets
    loss = build_loss(_digits_spec().distillation)
    x = batches(1, 50)[0]
    y = torch.zeros(len(x), dtype=torch.long)
    student_logits = torch.randn(len(x), 10, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        t32, t8 = teacher(x), int8(x)
    kd32 = loss(student_logits, t32, y, [], [])["kd"].item()
    kd8 = loss(student_logits, t8, y, [], [])["kd"].item()
    assert abs(kd8 - kd32) <= 0.02 * abs(kd32)


def test_auto_runs_int8_on_a_cpu_only_when_it_passes_the_check(trained):
    teacher, _, batches = trained
    cpu = torch.device("cpu")
    model, plan = ft.faster_teacher(teacher, "auto", cpu, 4.0, True, batches)
    assert plan.precision == "int8" and plan.folded_batchnorm and plan.note == ""
    assert plan.checked_samples == 8 * 64
    assert plan.agreement is not None and plan.agreement >= ft.INT8_MIN_AGREEMENT
    model, plan = ft.faster_teacher(teacher, "fp32", cpu, 4.0, True, batches)
    assert plan.precision == "fp32" and plan.folded_batchnorm and plan.agreement is None
    model, plan = ft.faster_teacher(teacher, "auto", cpu, 4.0, False, batches)  # regression
    assert plan.precision == "fp32"


class _Outlier(nn.Module):
    """Logits from small differences between channels that share a tensor with one
    huge channel: one int8 scale for the whole tensor erases them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 4)
        with torch.no_grad():
            self.conv.weight.normal_(0, 0.01)
            self.conv.weight[0] *= 1e5  # the outlier channel
            self.fc.weight.normal_(0, 1)
            self.fc.weight[:, 0] = 0  # which does not count for the classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(F.relu(self.conv(x))).flatten(1)) * 100


def test_auto_falls_back_to_fp32_when_int8_would_change_the_soft_targets():
    model = _Outlier().eval()

    def batches(count: int, offset: int) -> list[torch.Tensor]:
        return [
            torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(i))
            for i in range(offset, offset + count)
        ]

    chosen, plan = ft.faster_teacher(model, "auto", torch.device("cpu"), 4.0, True, batches)
    assert plan.precision == "fp32" and "int8 was not used" in plan.note
    assert plan.agreement is not None and plan.agreement < ft.INT8_MIN_AGREEMENT
    x = batches(1, 99)[0]
    with torch.inference_mode():
        assert torch.allclose(chosen(x), model(x), rtol=1e-4, atol=1e-3)
    _, forced = ft.faster_teacher(model, "int8", torch.device("cpu"), 4.0, True, batches)
    assert forced.precision == "int8" and "outside the tolerance" in forced.note


class _Branchy(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_an_untraceable_teacher_runs_as_it_is():
    model = _Branchy().eval()
    chosen, plan = ft.faster_teacher(
        model, "auto", torch.device("cpu"), 4.0, True, lambda n, o: [torch.randn(8, 4)] * n
    )
    assert chosen is model
    assert plan.precision == "fp32" and not plan.folded_batchnorm
    assert "cannot be quantised" in plan.note


def _fit_losses(**training):
    spec = parse_spec(
        tiny_spec(
            augment={"crop_padding": 1, "hflip": True},
            distillation={"teacher_precision": "fp32"},
            training={"epochs": 2, **training},
        )
    )
    data = load_dataset(spec.dataset, 0)
    torch.manual_seed(0)
    student = build_model("mlp_small", data.num_classes, data.input_shape)
    teacher = build_model("small_cnn", data.num_classes, data.input_shape)
    result = fit(spec, data, student, teacher, torch.device("cpu"), None)
    return [h["train_losses"]["loss"] for h in result.history], result


def test_channels_last_trains_to_the_same_losses_within_float_rounding():
    nhwc, result = _fit_losses(channels_last=True)
    nchw, _ = _fit_losses(channels_last=False)
    assert result.teacher_forward is not None and result.teacher_forward.folded_batchnorm
    assert nhwc == pytest.approx(nchw, rel=1e-4)


def test_the_report_says_how_the_teacher_ran(tmp_path):
    import json

    import kdcore

    spec = tiny_spec(augment={"crop_padding": 1})
    kdcore.distill(spec, tmp_path / "int8")
    forward = json.loads((tmp_path / "int8" / "report.json").read_text())["teacher_forward"]
    assert forward["precision"] in ("int8", "fp32")  # int8 if this teacher passes the check
    assert forward["checked_samples"] == 8 * 32 and forward["agreement"] is not None
    assert (forward["precision"] == "int8") == (
        forward["agreement"] >= ft.INT8_MIN_AGREEMENT and forward["kl"] <= ft.INT8_MAX_KL
    )
    kdcore.distill(tiny_spec(), tmp_path / "cached")  # no augmentation: cached, runs once
    report = json.loads((tmp_path / "cached" / "report.json").read_text())
    assert report["teacher_cache"] is True and report["teacher_forward"] is None
    assert report["threads"] == torch.get_num_threads()


def test_the_job_s_thread_count_changes_the_losses_only_by_float_rounding():
    """Per-job threads (KD_JOB_THREADS, kdcore --threads) split reductions differently."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = _fit_losses(channels_last=True)
    finally:
        torch.set_num_threads(before)
    many, _ = _fit_losses(channels_last=True)
    assert one == pytest.approx(many, rel=1e-4)
