"""ONNX files for tests: a real graph from a custom module (in no registry), and
crafted hostile ones, built with onnx.helper (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn


class CustomNet(nn.Module):
    """A teacher in no registry: its own layer names, a residual, GELU."""

    def __init__(self, in_ch: int = 1, classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(in_ch, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.stem(x))
        h = h + torch.relu(self.mix(h))
        return self.head(h.mean(dim=(2, 3)))


def export_graph(model: nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.randn(2, *shape),),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path


def _model(nodes, inputs, outputs, initializers=(), opsets=(("", 17),)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _image(name="x", shape=("N", 1, 8, 8)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _logits(name="y", shape=("N", 4)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _declared(name: str, dims: list[int]) -> TensorProto:
    """A tensor header with no values: what a file may claim without backing it."""
    tensor = TensorProto()
    tensor.name, tensor.data_type = name, TensorProto.FLOAT
    tensor.dims.extend(dims)
    return tensor


def custom_op(path: Path) -> Path:
    node = helper.make_node("Pwn", ["x"], ["y"], domain="evil.ops")
    model = _model([node], [_image()], [_logits()], opsets=(("", 17), ("evil.ops", 1)))
    onnx.save(model, str(path))
    return path


def external_data(path: Path, location: str = "../../etc/passwd") -> Path:
    weight = _declared("w", [64, 4])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "1024")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    onnx.save(_model(nodes, [_image()], [_logits()], [weight]), str(path))
    return path


def huge_input(path: Path) -> Path:
    node = helper.make_node("Flatten", ["x"], ["y"])
    model = _model([node], [_image(shape=("N", 3, 1_000_000, 1_000_000))], [_logits()])
    onnx.save(model, str(path))
    return path


def huge_initializer(path: Path) -> Path:
    """Declares a 10^12-element weight with no data behind it."""
    weight = _declared("w", [1_000_000, 1_000_000])
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    onnx.save(_model(nodes, [_image()], [_logits()], [weight]), str(path))
    return path


def two_inputs(path: Path) -> Path:
    node = helper.make_node("Add", ["x", "z"], ["s"])
    flat = helper.make_node("Flatten", ["s"], ["y"])
    onnx.save(_model([node, flat], [_image(), _image("z")], [_logits()]), str(path))
    return path


def _external(tensor: TensorProto, location: str = "../../etc/passwd") -> TensorProto:
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _sparse_external() -> onnx.SparseTensorProto:
    """A 64 x 4 sparse tensor whose values live in an external file."""
    values = _external(_declared("w_values", [4]))
    indices = helper.make_tensor("w_indices", TensorProto.INT64, [4], [0, 5, 10, 15])
    return helper.make_sparse_tensor(values, indices, [64, 4])


def constant_sparse_external(path: Path) -> Path:
    """A Constant node's sparse_value with external data (security round 2: passed)."""
    nodes = [
        helper.make_node("Constant", [], ["w"], sparse_value=_sparse_external()),
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    onnx.save(_model(nodes, [_image()], [_logits()]), str(path))
    return path


def sparse_initializer_external(path: Path) -> Path:
    """A sparse initializer with external data (security round 2: a 500)."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    model = _model(nodes, [_image()], [_logits()])
    sparse = _sparse_external()
    sparse.values.name = "w"
    model.graph.sparse_initializer.append(sparse)
    onnx.save(model, str(path))
    return path


def many_nodes(path: Path, count: int = 300_000) -> Path:
    """A chain of Identity nodes: 8.4 MiB that parsed into 223 MiB (security round 2)."""
    nodes = [helper.make_node("Flatten", ["x"], ["n0"])]
    nodes += [helper.make_node("Identity", [f"n{i}"], [f"n{i + 1}"]) for i in range(count)]
    nodes.append(helper.make_node("Identity", [f"n{count}"], ["y"]))
    onnx.save(_model(nodes, [_image()], [_logits("y", ("N", 64))]), str(path))
    return path


# each crafted graph and the words its refusal must contain
HOSTILE = [
    (constant_sparse_external, "external data files"),
    (sparse_initializer_external, "external data files"),
    (many_nodes, "nodes, over 100,000"),
    (custom_op, "operator set 'evil.ops'"),
    (external_data, "external data files"),
    (huge_input, "declares an input of shape"),
    (huge_initializer, "declares a tensor of shape"),
    (two_inputs, "2 inputs"),
]


def hf_folder(path: Path, arch: str, config: dict, classes: int, input_shape) -> Path:
    """A Hugging Face model folder (config.json + model.safetensors) zipped, as a user
    packages one: `model.save_pretrained(dir)` then `zip -r`. Random weights."""
    import json
    import zipfile

    from safetensors.torch import save

    from kdcore.models import build_model

    model = build_model(arch, classes, tuple(input_shape), config)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("my-model/config.json", json.dumps(model.hf_config))
        zf.writestr("my-model/model.safetensors", save(model.state_dict()))
    return path


TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 4,
}
TINY_HF_RESNET = {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1]}
