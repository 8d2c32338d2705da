import pytest

from kdcore.checks.validate import parse_spec
from kdcore.errors import SpecError
from kdcore.spec import JobSpec
from tests.support.specs import tiny_spec


def _pointers(spec):
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    return dict(info.value.errors)


@pytest.mark.parametrize(
    "override,pointer",
    [
        ({"training": {"epochs": 10**9}}, "/training/epochs"),
        ({"training": {"batch_size": 0}}, "/training/batch_size"),
        ({"training": {"lr": float("nan")}}, "/training/lr"),
        ({"training": {"optimizer": "lamb"}}, "/training/optimizer"),
        ({"student": {"arch": "resnet9000"}}, "/student/arch"),
        ({"student": {"arch": "mlp", "num_classes": 10**6}}, "/student/num_classes"),
        ({"dataset": {"builtin": "cifar1000"}}, "/dataset/name"),
        ({"distillation": {"method": "rkd"}}, "/distillation/method"),
        ({"distillation": {"temperature": -1}}, "/distillation/temperature"),
        ({"surprise": 1}, "/surprise"),
    ],
)
def test_bad_fields_are_reported_with_their_json_pointer(override, pointer):
    errors = _pointers(tiny_spec(**override))
    assert pointer in errors, errors


def test_unknown_arch_suggests_close_names():
    errors = _pointers(tiny_spec(student={"arch": "cifar_resnet21"}))
    assert "cifar_resnet20" in errors["/student/arch"]


def test_kind_and_teacher_must_agree():
    assert "" in _pointers(tiny_spec(teacher=None))
    spec = parse_spec(tiny_spec(kind="train", teacher=None))
    assert spec.kind == "train" and spec.teacher is None


def test_regression_needs_the_mse_method():
    errors = _pointers(tiny_spec(task="regression", dataset={"regression": True}))
    assert "mse" in errors["/distillation/method"]


def test_design_doc_example_parses():
    spec = parse_spec(
        {
            "name": "resnet56-to-resnet20-digits",
            "kind": "distill",
            "task": "classification",
            "teacher": {"arch": "cifar_resnet56", "num_classes": 10, "checkpoint": "file_x"},
            "student": {"arch": "cifar_resnet20", "num_classes": 10},
            "dataset": {"builtin": "digits", "image_size": 32, "val_fraction": 0.2},
            "augment": {"crop_padding": 2, "hflip": False},
            "distillation": {
                "method": "kd",
                "temperature": 4.0,
                "ce_weight": 0.1,
                "kd_weight": 0.9,
            },
            "training": {
                "epochs": 10,
                "batch_size": 64,
                "optimizer": "sgd",
                "lr": 0.05,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "schedule": "cosine",
                "precision": "auto",
                "seed": 0,
            },
            "checkpoint_every_epochs": 1,
            "export": ["safetensors", "torchscript", "onnx"],
            "webhook_url": None,
        }
    )
    assert spec.dataset.name == "digits"
    assert JobSpec.model_json_schema()["title"] == "JobSpec"


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"training": {"qat_epochs": 0}}, "/training/qat_epochs"),
        ({"training": {"qat_epochs": 10**9}}, "/training/qat_epochs"),
        ({"training": {"quantization": "int4"}}, "/training/quantization"),
        ({"augment": {"crop_ratio": [2.0, 1.0]}}, "/augment"),
        ({"augment": {"crop_scale": [0.0, 1.0]}}, "/augment"),
        ({"augment": {"preset": "cifar"}}, "/augment/preset"),
        ({"tracking": {"mlflow": "maybe"}}, "/tracking/mlflow"),
        ({"tracking": {"mlflow": True, "uri": "http://10.0.0.1"}}, "/tracking/uri"),
        ({"sweep": {"parameters": {"training.lr": [0.1]}, "max_trials": 0}}, "/sweep/max_trials"),
        ({"sweep": {"parameters": {"training.lr": [0.1]}, "max_trials": 65}}, "/sweep/max_trials"),
        ({"sweep": {"parameters": {"training.lr": [[0.1]]}}}, "/sweep/parameters"),
        ({"export": ["onnx_int4"]}, "/export"),
    ],
)
def test_the_fields_added_for_shipping_refuse_what_is_out_of_bounds(change, pointer):
    """qat_epochs, quantization, the imagenet preset's crop bounds, tracking (no URL a
    client could point the workers at), sweep sizes and export names."""
    from kdcore.checks.validate import parse_spec
    from kdcore.errors import SpecError

    spec = {
        "kind": "train",
        "student": {"arch": "mlp_small"},
        "dataset": {"builtin": "digits"},
        **change,
    }
    with pytest.raises(SpecError) as exc:
        parse_spec(spec)
    assert any(p.startswith(pointer) for p, _ in exc.value.errors), exc.value.errors


def test_given_statistics_must_match_the_channels():
    from kdcore.errors import DataError
    from kdcore.image.data import load_dataset
    from kdcore.spec import DatasetSpec

    spec = DatasetSpec.model_validate({"builtin": "digits", "mean": [0.5, 0.5], "std": [1, 1]})
    with pytest.raises(DataError, match="2 values for 1 channels"):
        load_dataset(spec, 0)
