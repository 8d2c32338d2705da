"""Teachers given only as an ONNX graph: run by onnxruntime, never as Python; hostile
graphs refused before anything runs; .pt2 archives refused."""

import numpy as np
import pytest
import torch

import kdcore
from kdcore.checks.validate import parse_spec
from kdcore.errors import CheckpointError, SpecError
from kdcore.image.data import load_dataset
from kdcore.io.checkpoints import read_state_dict
from kdcore.models.onnx import OnnxTeacher, inspect_onnx, is_onnx
from tests.support import graphs
from tests.support.memory import refusal_and_growth
from tests.support.specs import tiny_spec


@pytest.fixture(scope="module")
def custom(tmp_path_factory):
    torch.manual_seed(0)
    net = graphs.CustomNet()
    path = graphs.export_graph(net, tmp_path_factory.mktemp("g") / "teacher.onnx", (1, 8, 8))
    return net, path


def onnx_spec(path, **overrides):
    spec = tiny_spec(**overrides)
    spec["teacher"] = {"checkpoint": str(path)}
    # these graphs carry random weights (mechanics, not quality): the preflight records
    # their near-chance score instead of failing the job
    spec["distillation"]["teacher_check"] = "warn"
    return spec


def test_the_graph_is_recognised_from_its_content_and_described(custom, tmp_path):
    _, path = custom
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(path.read_bytes())
    assert is_onnx(renamed)
    sig = inspect_onnx(renamed)
    assert (sig.input_shape, sig.outputs) == ((1, 8, 8), 4)
    assert sig.parameters == sum(p.numel() for p in graphs.CustomNet().parameters())


def test_onnxruntime_gives_the_modules_outputs(custom):
    net, path = custom
    x = torch.randn(5, 1, 8, 8)
    teacher = OnnxTeacher(path, inspect_onnx(path))
    with torch.no_grad():
        np.testing.assert_allclose(teacher(x).numpy(), net(x).numpy(), rtol=1e-4, atol=1e-5)


def test_distil_an_onnx_teacher_into_a_registry_student(custom, tmp_path):
    net, path = custom
    report = kdcore.distill(onnx_spec(path, distillation={"method": "dkd"}), tmp_path)
    assert report["teacher"]["arch"] == "onnx"
    assert report["teacher"]["parameters"] == inspect_onnx(path).parameters
    assert report["teacher_cache"] is True  # the cache works as for any teacher
    spec = parse_spec(onnx_spec(path))
    data = load_dataset(spec.dataset, spec.training.seed)
    with torch.no_grad():
        expected = (net(data.test.x).argmax(1) == data.test.y).float().mean().item()
    assert report["teacher"]["accuracy"] == pytest.approx(expected, abs=1e-6)
    assert (tmp_path / "student.safetensors").exists()


def test_a_dataset_that_does_not_fit_the_graph_names_both_shapes(custom, tmp_path):
    _, path = custom
    spec = onnx_spec(path)
    spec["dataset"]["shape"] = [1, 12, 12]
    with pytest.raises(SpecError) as info:
        kdcore.distill(spec, tmp_path)
    pointer, message = info.value.errors[0]
    assert pointer == "/teacher/checkpoint"
    assert "(N, 1, 8, 8)" in message and "(N, 1, 12, 12)" in message


@pytest.mark.parametrize("method", ["at", "fitnet", "crd"])
def test_feature_methods_refuse_an_onnx_teacher(custom, method):
    _, path = custom
    with pytest.raises(SpecError) as info:
        parse_spec(onnx_spec(path, distillation={"method": method}))
    assert info.value.errors[0][0] == "/teacher"
    assert "only its output" in info.value.errors[0][1]


def test_a_teacher_needs_an_arch_or_a_graph_and_a_student_an_arch():
    spec = tiny_spec()
    spec["teacher"] = {"num_classes": 4}
    with pytest.raises(SpecError, match="ONNX graph as its checkpoint"):
        parse_spec(spec)
    spec = tiny_spec()
    spec["student"] = {"checkpoint": "x.onnx"}
    with pytest.raises(SpecError, match="the student needs an arch"):
        parse_spec(spec)


def test_weights_where_a_graph_is_expected_are_refused(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2)}, str(weights))
    with pytest.raises(SpecError, match="must be an ONNX graph"):
        kdcore.distill(onnx_spec(weights), tmp_path / "out")


def test_a_graph_where_weights_are_expected_says_what_to_do(custom):
    _, path = custom
    with pytest.raises(CheckpointError, match="ONNX graph, not weights"):
        read_state_dict(path)


@pytest.mark.parametrize(("craft", "reason"), graphs.HOSTILE)
def test_hostile_graphs_are_refused_before_anything_runs(tmp_path, monkeypatch, craft, reason):
    import onnxruntime

    def never(*args, **kwargs):
        raise AssertionError("onnxruntime must not see a refused graph")

    monkeypatch.setattr(onnxruntime, "InferenceSession", never)
    path = craft(tmp_path / "hostile.onnx")
    with pytest.raises(CheckpointError, match=reason):
        inspect_onnx(path)
    with pytest.raises(SpecError, match=reason):
        kdcore.distill(onnx_spec(path), tmp_path / "out")


def test_external_data_is_never_opened(tmp_path, monkeypatch):
    import builtins

    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    path = graphs.external_data(tmp_path / "x.onnx", location=str(secret))
    opened = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    with pytest.raises(CheckpointError):
        inspect_onnx(path)
    assert str(secret) not in opened


def test_torch_export_archives_are_refused_without_loading(tmp_path, monkeypatch):
    """A .pt2 rebuilds Python code when loaded: refused from its zip directory alone,
    with the way out (ONNX) in the message, also under another name."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    program = torch.export.export(net, (torch.randn(2, 1, 8, 8),))
    path = tmp_path / "teacher.pt2"
    torch.export.save(program, str(path))

    def never(*args, **kwargs):
        raise AssertionError("torch.export.load must not run on an upload")

    monkeypatch.setattr(torch.export, "load", never)
    disguised = tmp_path / "weights.pt"
    disguised.write_bytes(path.read_bytes())
    for candidate in (path, disguised):
        with pytest.raises(CheckpointError, match="Export the model to ONNX instead"):
            read_state_dict(candidate)
    spec = tiny_spec(student={"arch": "mlp_small", "checkpoint": str(disguised)})
    with pytest.raises(CheckpointError, match="torch.export archive"):
        kdcore.distill(spec, tmp_path / "out")


@pytest.mark.slow
def test_a_graph_of_many_nodes_is_refused_in_bounded_memory(tmp_path):
    """Security round 2: 300,000 Identity nodes (8.4 MiB) grew the API by 223 MiB when
    parsed. The nodes are counted on the wire first: under 32 MiB (the file's pages)."""
    path = graphs.many_nodes(tmp_path / "many.onnx")
    said, growth = refusal_and_growth("kdcore.models.onnx:inspect_onnx", path)
    assert "300,002 nodes, over 100,000" in said
    assert growth < 32 * 1024**2, growth
