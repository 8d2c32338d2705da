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


# each crafted graph and the words its refusal must contain
HOSTILE = [
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
