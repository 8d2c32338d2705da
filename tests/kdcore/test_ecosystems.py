"""timm:<name> and hf:<Class> models: built offline from configs with random weights,
distilled both ways, rebuilt from student.json; hostile model folders refused."""

import json
import zipfile

import pytest
import torch

import kdcore
from kdcore.checks.validate import parse_spec
from kdcore.errors import CheckpointError, SpecError
from kdcore.image.export import load_student
from kdcore.models import build_model, is_known
from kdcore.models.ecosystems import read_hf_folder
from tests.support import graphs
from tests.support.specs import tiny_spec

SHAPE = (1, 16, 16)


def spec16(**overrides):
    spec = tiny_spec(**overrides)
    spec["dataset"]["shape"] = list(SHAPE)
    spec["training"]["epochs"] = 1
    # the model folders here carry random weights (mechanics, not quality): the
    # preflight records their near-chance score instead of failing the job
    spec.setdefault("distillation", {})["teacher_check"] = "warn"
    return spec


def test_timm_and_hf_names_are_known_and_typos_are_named():
    assert is_known("timm:resnet18") and is_known("hf:ViTForImageClassification")
    assert not is_known("hf:AutoModelForImageClassification")  # resolves classes itself
    for arch, words in (
        ("timm:resnet9000", "unknown timm model"),
        ("hf:Nope", "not a transformers"),
    ):
        with pytest.raises(SpecError, match=words):
            parse_spec(tiny_spec(student={"arch": arch}))


def test_timm_models_take_the_datasets_classes_and_channels():
    model = build_model("timm:resnet10t", 7, SHAPE)
    assert model(torch.randn(2, *SHAPE)).shape == (2, 7)
    vit = build_model("timm:vit_tiny_patch16_224", 5, (3, 32, 32))  # img_size follows the data
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_a_timm_teacher_into_an_hf_student_round_trips_through_student_json(tmp_path):
    spec = spec16(
        teacher={"arch": "timm:resnet10t"},
        student={"arch": "hf:ViTForImageClassification", "config": graphs.TINY_VIT},
        export=["safetensors", "onnx"],
    )
    report = kdcore.distill(spec, tmp_path)
    assert report["teacher"]["arch"] == "timm:resnet10t"
    assert report["student"]["arch"] == "hf:ViTForImageClassification"
    assert report["onnx_max_abs_error"] < 1e-3
    model, config = load_student(tmp_path)  # one call rebuilds it
    assert config["hf_config"]["hidden_size"] == 32 and config["hf_config"]["num_channels"] == 1
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert model(x).shape == (3, 4)


def test_an_hf_teacher_from_a_model_folder_into_a_timm_student_with_a_feature_method(tmp_path):
    folder = graphs.hf_folder(
        tmp_path / "teacher.zip", "hf:ResNetForImageClassification", graphs.TINY_HF_RESNET, 4, SHAPE
    )
    spec = spec16(
        teacher={"arch": "hf:ResNetForImageClassification", "checkpoint": str(folder)},
        student={"arch": "timm:resnet10t"},
        distillation={
            "method": "at",
            "teacher_layers": ["resnet.encoder.stages.0", "resnet.encoder.stages.1"],
            "student_layers": ["layer1", "layer2"],
        },
    )
    report = kdcore.distill(spec, tmp_path / "out")
    assert report["teacher"]["arch"] == "hf:ResNetForImageClassification"
    assert report["history"][-1]["train_losses"]["at"] > 0


def test_the_teacher_folders_weights_are_the_ones_used(tmp_path):
    folder = graphs.hf_folder(
        tmp_path / "t.zip", "hf:ViTForImageClassification", graphs.TINY_VIT, 4, SHAPE
    )
    config, weights = read_hf_folder(folder, 10**8)
    from safetensors.torch import load_file

    stored = load_file(str(weights))
    rebuilt = build_model("hf:ViTForImageClassification", 4, SHAPE, config)
    rebuilt.load_state_dict(stored)
    for key, value in stored.items():
        assert torch.equal(rebuilt.state_dict()[key], value)


def _zip(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in files.items():
            zf.writestr(name, blob)
    return path


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        (
            {
                "config.json": json.dumps({"auto_map": {"AutoModel": "x.Evil"}}),
                "model.safetensors": b"x" * 16,
            },
            "refused",
        ),
        ({"config.json": "{}"}, "lacks model.safetensors"),
        ({"config.json": "[1, 2]", "model.safetensors": b"x" * 16}, "JSON object"),
        ({"../config.json": "{}", "model.safetensors": b"x"}, ".."),
    ],
)
def test_hostile_model_folders_are_refused(tmp_path, files, reason):
    path = _zip(tmp_path / "m.zip", files)
    with pytest.raises(CheckpointError, match=reason):
        read_hf_folder(path, 10**8)


def test_an_inline_config_cannot_ask_for_remote_code():
    spec = tiny_spec(
        student={"arch": "hf:ViTForImageClassification", "config": {"auto_map": {"a": "b"}}}
    )
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert info.value.errors[0][0] == "/student/config"
    for greedy, words in (
        ({**graphs.TINY_VIT, "num_hidden_layers": 10_000_000}, "over 1,000,000"),
        ({**graphs.TINY_VIT, "num_hidden_layers": 5000}, "over 256 layers"),
        ({"depths": [200, 200], "hidden_sizes": [8, 8]}, "over 256 layers"),
    ):
        spec = tiny_spec(student={"arch": "hf:ViTForImageClassification", "config": greedy})
        with pytest.raises(SpecError, match=words):
            parse_spec(spec)
    with pytest.raises(SpecError, match="config is for hf"):
        parse_spec(tiny_spec(student={"arch": "mlp", "config": {"a": 1}}))


def test_a_model_that_does_not_trace_still_gets_its_other_formats(tmp_path):
    from kdcore.image.export import save_student

    class Untraceable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            if torch.jit.is_tracing():
                raise RuntimeError("data-dependent control flow")
            return self.fc(x)

    skipped: dict[str, str] = {}
    config = {"arch": "x", "num_classes": 2, "input_shape": [4]}
    paths = save_student(Untraceable(), config, tmp_path, ["safetensors", "torchscript"], skipped)
    assert "safetensors" in paths and "torchscript" not in paths
    assert "data-dependent control flow" in skipped["torchscript"]


def test_kdcore_layers_and_list_params(tmp_path):
    from tests.support.kdcore_cli import kdcore_here

    run = kdcore_here("layers", "timm:resnet10t", "--input-shape", "1", "28", "28")
    assert run.returncode == 0, run.stderr
    assert any(
        line.split()[0] == "layer2" and "(N, 128, 4, 4)" in line
        for line in run.stdout.splitlines()[1:]
    )
    config = tmp_path / "vit.json"
    config.write_text(json.dumps(graphs.TINY_VIT))
    run = kdcore_here(
        "layers", "hf:ViTForImageClassification", "--input-shape", "1", "8", "8", "--config", config
    )
    assert run.returncode == 0, run.stderr
    assert "vit.embeddings" in run.stdout
    run = kdcore_here(
        "list", "models", "--match", "timm:resnet18", "--params", "--input-shape", "1", "28", "28"
    )
    assert run.returncode == 0, run.stderr
    name, count = run.stdout.split()
    assert name == "timm:resnet18" and int(count) == sum(
        p.numel() for p in build_model("timm:resnet18", 10, (1, 28, 28)).parameters()
    )


HF_FAMILIES = {
    "ViTForImageClassification": graphs.TINY_VIT,
    "DeiTForImageClassification": {**graphs.TINY_VIT, "num_hidden_layers": 1},
    "ConvNextForImageClassification": {
        "hidden_sizes": [8, 16],
        "depths": [1, 1],
        "num_stages": 2,
        "patch_size": 2,
    },
    "SwinForImageClassification": {
        "embed_dim": 16,
        "depths": [1, 1],
        "num_heads": [1, 2],
        "window_size": 2,
        "patch_size": 2,
    },
    "ResNetForImageClassification": graphs.TINY_HF_RESNET,
    "MobileViTForImageClassification": {
        "hidden_sizes": [16, 24, 32],
        "neck_hidden_sizes": [8, 8, 16, 16, 24, 32, 64],
        "num_attention_heads": 2,
    },
    "EfficientNetForImageClassification": {
        "width_coefficient": 0.1,
        "depth_coefficient": 0.1,
        "hidden_dim": 128,
    },
}


@pytest.mark.parametrize("name", sorted(HF_FAMILIES))
def test_each_hf_family_builds_offline_for_the_datasets_shape(name):
    model = build_model(f"hf:{name}", 6, (1, 32, 32), HF_FAMILIES[name])
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 6)  # the logits tensor, not transformers' output object


def test_an_hf_student_resumes_exactly(tmp_path):
    """Interrupted mid-run and resumed: the same weights as a run straight through."""
    from safetensors.torch import load_file

    from kdcore.errors import Cancelled
    from tests.support.stops import StopBeforeStep

    spec = spec16(
        teacher={"arch": "timm:resnet10t"},
        student={"arch": "hf:ViTForImageClassification", "config": graphs.TINY_VIT},
    )
    spec["training"]["epochs"] = 2  # 5 steps each
    kdcore.distill(spec, tmp_path / "straight")
    with pytest.raises(Cancelled):
        kdcore.distill(spec, tmp_path / "resumed", callbacks=StopBeforeStep(7))
    ckpt = tmp_path / "resumed" / "checkpoints" / "interrupted-step7.pt"
    kdcore.distill(spec, tmp_path / "resumed", resume_from=ckpt)
    a = load_file(tmp_path / "straight" / "student.safetensors")
    b = load_file(tmp_path / "resumed" / "student.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_a_folders_fit_is_checked_from_its_header_alone(tmp_path):
    """At submission the service reads config.json and the safetensors header only:
    a folder whose weights stop right after the header still gives every shape."""
    import io
    import tarfile

    from kdcore.models.ecosystems import read_hf_folder_shapes

    full = graphs.hf_folder(
        tmp_path / "t.zip", "hf:ViTForImageClassification", graphs.TINY_VIT, 4, SHAPE
    )
    with zipfile.ZipFile(full) as zf:
        config = json.loads(zf.read("my-model/config.json"))
        blob = zf.read("my-model/model.safetensors")
    header_end = 8 + int.from_bytes(blob[:8], "little")
    cut = tmp_path / "cut.tar.gz"
    with tarfile.open(cut, "w:gz") as tf:
        for name, data in (
            ("config.json", json.dumps(config).encode()),
            ("model.safetensors", blob[:header_end]),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    got_config, shapes = read_hf_folder_shapes(cut)
    model = build_model("hf:ViTForImageClassification", 4, SHAPE, config)
    assert got_config == config
    assert shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="not a Hugging Face model folder"):
        read_hf_folder_shapes(_zip(tmp_path / "half.zip", {"config.json": "{}"}))
    with pytest.raises(CheckpointError, match="refused"):
        read_hf_folder_shapes(
            _zip(
                tmp_path / "evil.zip",
                {"config.json": json.dumps({"auto_map": {}}), "model.safetensors": blob},
            )
        )
