"""The imagenet augmentation preset (augment.preset): RandomResizedCrop + flip for
training from images kept at side / 0.875, resize + center crop for evaluation, given
normalisation statistics, and exact resume in the middle of an epoch."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import kdcore
from kdcore.errors import Cancelled
from kdcore.image.augment import augment_batch, center_crop, random_resized_crop
from kdcore.image.data import load_dataset, model_input
from kdcore.spec import AugmentSpec, DatasetSpec, JobSpec, stored_side
from tests.support.specs import tiny_spec
from tests.support.stops import StopBeforeStep

PRESET = {"preset": "imagenet"}
DATA = {
    "builtin": "synthetic",
    "num_samples": 256,
    "num_classes": 4,
    "shape": [3, 16, 16],
    "image_size": 12,
    "noise": 0.3,
}


def test_random_resized_crop_is_seeded_and_a_full_box_is_a_resize():
    x = torch.rand(6, 3, 14, 14)
    a = random_resized_crop(x, 12, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(3))
    b = random_resized_crop(x, 12, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(3))
    assert a.shape == (6, 3, 12, 12) and torch.equal(a, b)
    whole = random_resized_crop(x, 14, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(whole, x, atol=1e-5)  # the whole image at its own size: unchanged
    spec = AugmentSpec(preset="imagenet")
    flipped = augment_batch(x, spec, torch.Generator().manual_seed(1), side=12)
    assert flipped.shape == (6, 3, 12, 12)


def test_the_preset_keeps_training_images_larger_and_center_crops_evaluation():
    data = load_dataset(DatasetSpec.model_validate(DATA), 0, augment=AugmentSpec(**PRESET))
    assert stored_side(12) == 14
    assert data.input_shape == (3, 12, 12)
    assert data.train.x.shape[1:] == (3, 14, 14)
    assert data.val.x.shape[1:] == data.test.x.shape[1:] == (3, 12, 12)
    assert model_input(data, data.train.x[:2]).shape == (2, 3, 12, 12)
    plain = load_dataset(DatasetSpec.model_validate({**DATA, "image_size": 14}), 0)
    # evaluation images: resized to 14 then the center 12 x 12 (same split, same stats)
    assert torch.allclose(center_crop(plain.test.x, 12), data.test.x, atol=1e-5)


def test_given_statistics_normalise_instead_of_the_training_splits():
    given = {**DATA, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    data = load_dataset(DatasetSpec.model_validate(given), 0)
    assert data.mean == pytest.approx(given["mean"]) and data.std == pytest.approx(given["std"])
    raw = load_dataset(DatasetSpec.model_validate(DATA), 0)
    assert data.mean != pytest.approx(raw.mean)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"augment": {"preset": "imagenet", "crop_padding": 2}}, "crop_padding"),
        (
            {"augment": {"preset": "imagenet"}, "dataset": {**DATA, "image_size": None}},
            "image_size",
        ),
        ({"augment": {"preset": "imagenet", "crop_scale": [0.5, 0.1]}}, "crop_scale"),
        ({"dataset": {**DATA, "mean": [0.5]}}, "together"),
        ({"dataset": {**DATA, "mean": [0.5], "std": [0.0]}}, "positive"),
    ],
)
def test_bad_preset_or_statistics_are_refused(change, words):
    with pytest.raises(ValueError, match=words):
        JobSpec.model_validate({**tiny_spec(dataset=DATA), **change})


def test_a_run_with_the_preset_resumes_mid_epoch_exactly(tmp_path):
    spec = tiny_spec(
        student={"arch": "small_cnn"}, dataset=DATA, augment=PRESET, training={"epochs": 2}
    )
    straight = kdcore.distill(spec, tmp_path / "straight")
    half = straight["steps"] // 2 + 1  # inside an epoch
    with pytest.raises(Cancelled):
        kdcore.distill(spec, tmp_path / "cut", callbacks=StopBeforeStep(half))
    kdcore.distill(
        spec,
        tmp_path / "cut",
        resume_from=tmp_path / "cut/checkpoints" / f"interrupted-step{half}.pt",
    )
    a = load_file(tmp_path / "straight/student.safetensors")
    b = load_file(tmp_path / "cut/student.safetensors")
    assert all(a[k].equal(b[k]) for k in a)
