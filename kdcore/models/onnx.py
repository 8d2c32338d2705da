"""Teachers that exist only as an ONNX graph (`"teacher": {"checkpoint": ...}`, no
`arch`).

An uploaded graph is untrusted. `inspect_onnx` reads it as a protobuf message (parsing
runs no code) and refuses it unless it is plain: the ONNX checker passes, every opset
and node is of the standard domain (no custom operators, so no native library would be
asked for), nothing lives in external data files (a path such as ../../etc/passwd is
never opened), every declared shape is within caps, and there is one image input
(N, C, H, W) and one output (N, classes). `OnnxTeacher` then runs it forward-only in
onnxruntime, which executes the graph's operators and nothing else: no Python from
the file ever runs. We chose onnxruntime over converting the graph to torch modules
(onnx2torch): a converter must trust the graph's structure to build code-shaped
modules, while onnxruntime is the reference executor, covers every standard operator
and is what the graph's author tested against.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdcore.errors import CheckpointError

STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
MAX_IMAGE_SIDE = 4096
MAX_CHANNELS = 64
MAX_OUTPUTS = 100_000
MAX_TENSOR_ELEMENTS = 2_000_000_000  # a declared initializer or constant larger than this
# a ResNet-152 has about 500 nodes, an exported 24-layer transformer about 10,000; parsed,
# 100,000 nodes hold about 75 MB of the service's memory
MAX_GRAPH_NODES = 100_000


class GraphTooLarge(CheckpointError):
    """An ONNX file refused before it is parsed (too many nodes)."""


@dataclass(frozen=True)
class OnnxSignature:
    input_name: str
    input_shape: tuple[int | None, ...]  # (C, H, W); None where the graph leaves it free
    outputs: int | None  # classes (or regression targets); None if free
    parameters: int  # elements in the graph's initializers


def _parse_if_onnx(path: Path) -> Any | None:
    """The ModelProto if the content is ONNX (a protobuf message whose first field is
    its ir_version, tag 0x08, and that parses as a ModelProto), else None. One read."""
    try:
        with open(path, "rb") as fh:
            if fh.read(1) != b"\x08":
                return None
        return _load(path)
    except GraphTooLarge:
        raise
    except (OSError, CheckpointError):
        return None


def is_onnx(path: str | Path) -> bool:
    return _parse_if_onnx(Path(path)) is not None


def read_onnx(path: str | Path) -> OnnxSignature | None:
    """None when the file is not ONNX; its signature when it is an acceptable graph;
    CheckpointError when it is a graph we refuse. The file is parsed once."""
    model = _parse_if_onnx(Path(path))
    return None if model is None else _describe(model, Path(path).name)


# Preprocessing an ONNX graph may carry in its metadata_props (docs/kdcore.md, "ONNX
# teachers"), each value JSON: the input it was trained on, (C, H, W); the per-channel
# statistics its inputs were normalised with (pixels in [0, 1], then (x - mean) / std);
# and the names of its outputs' classes, in order. kdcore's own student.onnx writes them.
PREPROCESSING_PROPS = ("kd.input_shape", "kd.mean", "kd.std", "kd.class_names")


def read_preprocessing(path: str | Path) -> dict[str, Any]:
    """The preprocessing an ONNX graph records in its metadata, as student.json has it
    (`input_shape`, `normalize`, `class_names`). Empty for a file that is not ONNX. (A
    graph's own fixed input dimensions are checked against the data, not taken: the
    service compares them at submission.)"""
    model = _parse_if_onnx(Path(path))
    if model is None:
        return {}
    props = {p.key: p.value for p in model.metadata_props if p.key in PREPROCESSING_PROPS}
    values: dict[str, Any] = {}
    for key, text in props.items():
        try:
            values[key.removeprefix("kd.")] = json.loads(text[:100_000])
        except ValueError:
            continue  # a value that is not JSON is not ours: ignored
    out: dict[str, Any] = {}
    shape = values.get("input_shape")
    if isinstance(shape, list) and len(shape) == 3 and all(_side(d) for d in shape):
        out["input_shape"] = shape
    mean, std = values.get("mean"), values.get("std")
    if _statistics(mean) and isinstance(std, list) and _statistics(std) and min(std) > 0:
        out["normalize"] = {"mean": mean, "std": std}
    names = values.get("class_names")
    if isinstance(names, list) and all(isinstance(n, str) and len(n) <= 200 for n in names):
        out["class_names"] = names[:MAX_OUTPUTS]
    return out


def _statistics(values: Any) -> bool:
    """Per-channel statistics a graph may record: 1 to MAX_CHANNELS finite numbers."""
    return (
        isinstance(values, list)
        and 1 <= len(values) <= MAX_CHANNELS
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        and all(math.isfinite(v) and abs(v) < 1e6 for v in values)
    )


def _side(dim: Any) -> bool:
    """A dimension a recorded input shape may hold (the caps of an ONNX teacher's input)."""
    return isinstance(dim, int) and not isinstance(dim, bool) and 1 <= dim <= MAX_IMAGE_SIDE


def _load(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    nodes = count_nodes(path)  # before parsing: what the parse would hold is bounded
    if nodes > MAX_GRAPH_NODES:
        raise GraphTooLarge(
            f"{path.name} has {nodes:,} nodes, over {MAX_GRAPH_NODES:,} (a parsed node costs "
            "about 0.7 KB of the service's memory)"
        )
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError):
        raise CheckpointError(f"{path.name} is not a valid ONNX model") from None


# protobuf field numbers (onnx.proto3): ModelProto.graph, GraphProto.node,
# NodeProto.attribute, AttributeProto.g and .graphs
_MODEL_GRAPH, _GRAPH_NODE, _NODE_ATTRIBUTE, _ATTR_G, _ATTR_GRAPHS = 7, 1, 5, 6, 11
_MAX_DEPTH = 32  # subgraphs within subgraphs


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            break
    raise CheckpointError("the file is not a valid ONNX model (a malformed varint)")


def _fields(buf: Any, start: int, end: int) -> Any:
    """(field number, start, end) of each length-delimited field in buf[start:end]; the
    other wire types are skipped. Nothing is copied or decoded."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise CheckpointError("the file is not a valid ONNX model (a field overruns)")
            yield key >> 3, pos, pos + size
            pos += size
        else:
            raise CheckpointError("the file is not a valid ONNX model (a bad wire type)")


def _graph_nodes(buf: Any, start: int, end: int, depth: int) -> int:
    if depth > _MAX_DEPTH:
        raise CheckpointError(f"the graph nests subgraphs over {_MAX_DEPTH} deep")
    count = 0
    for field, a, b in _fields(buf, start, end):
        if field != _GRAPH_NODE:
            continue
        count += 1
        for attr_field, c, d in _fields(buf, a, b):
            if attr_field != _NODE_ATTRIBUTE:
                continue
            for sub, e, f in _fields(buf, c, d):
                if sub in (_ATTR_G, _ATTR_GRAPHS):
                    count += _graph_nodes(buf, e, f, depth + 1)
    return count


def count_nodes(path: Path) -> int:
    """The nodes of an ONNX file's graph and subgraphs, read from the protobuf wire format
    through a memory map (no message is built): a graph of 300,000 Identity nodes in
    8.4 MiB grew the API by 223 MiB when parsed; counting first bounds that."""
    import mmap

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return 0
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return sum(
                _graph_nodes(buf, a, b, 1)
                for field, a, b in _fields(buf, 0, size)
                if field == _MODEL_GRAPH
            )


def _graphs(graph: Any) -> Any:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _sparse(sparse: Any) -> Any:
    yield sparse.values
    yield sparse.indices


def _tensors(graph: Any) -> Any:
    """Every tensor stored in a graph: initializers, sparse ones (values and indices),
    node attributes (a Constant's `value` and `sparse_value` included)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from _sparse(sparse)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield from _sparse(attr.sparse_tensor)
            for sparse in attr.sparse_tensors:
                yield from _sparse(sparse)


def _check_plain(model: Any, name: str) -> int:
    """Refuse custom domains and external data; returns the initializers' element count."""
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            raise CheckpointError(
                f"{name} uses the operator set {opset.domain!r}; only standard ONNX operators "
                "are accepted (custom operators would need native code)"
            )
    if len(model.functions):
        raise CheckpointError(f"{name} defines its own functions; only standard operators run")
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS:
                raise CheckpointError(
                    f"{name} has a node of the custom domain {node.domain!r}; only standard "
                    "ONNX operators are accepted"
                )
        for tensor in _tensors(graph):
            if tensor.data_location == 1 or len(tensor.external_data):  # EXTERNAL
                raise CheckpointError(
                    f"{name} keeps tensors in external data files, which are never opened: "
                    "export with the weights inside the file (one .onnx under 2 GB): "
                    "torch.onnx.export(..., external_data=False)"
                )
            elements = math.prod(tensor.dims) if len(tensor.dims) else 1
            if any(d < 0 for d in tensor.dims) or elements > MAX_TENSOR_ELEMENTS:
                raise CheckpointError(f"{name} declares a tensor of shape {list(tensor.dims)}")
    return sum(math.prod(t.dims) for t in model.graph.initializer)


def _dims(value_info: Any) -> list[int | None]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def inspect_onnx(path: str | Path) -> OnnxSignature:
    """Check an untrusted ONNX file (see the module docstring) and describe its one
    input and one output. Raises CheckpointError with a readable reason."""
    path = Path(path)
    return _describe(_load(path), path.name)


def _describe(model: Any, name: str) -> OnnxSignature:
    import onnx

    parameters = _check_plain(model, name)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError):
        raise CheckpointError(f"{name} fails the ONNX checker") from None
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise CheckpointError(
            f"{name} has {len(inputs)} inputs and {len(model.graph.output)} outputs; a "
            "teacher needs one image input (N, C, H, W) and one output (N, classes)"
        )
    in_dims, out_dims = _dims(inputs[0]), _dims(model.graph.output[0])
    if len(in_dims) != 4 or len(out_dims) != 2:
        raise CheckpointError(
            f"{name} takes a {len(in_dims)}-D input and gives a {len(out_dims)}-D output; "
            "a teacher needs an image input (N, C, H, W) and an output (N, classes)"
        )
    caps = (MAX_CHANNELS, MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)
    for dim, cap in zip(in_dims[1:], caps, strict=True):
        if dim is not None and not 1 <= dim <= cap:
            raise CheckpointError(f"{name} declares an input of shape {in_dims}")
    if out_dims[1] is not None and not 1 <= out_dims[1] <= MAX_OUTPUTS:
        raise CheckpointError(f"{name} declares an output of shape {out_dims}")
    elem = inputs[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise CheckpointError(
            f"{name} takes {onnx.TensorProto.DataType.Name(elem)}; a teacher takes float32 images"
        )
    return OnnxSignature(inputs[0].name, tuple(in_dims[1:]), out_dims[1], parameters)


def fit_problem(sig: OnnxSignature, input_shape: tuple[int, ...], outputs: int) -> str | None:
    """Why the dataset does not fit the graph (shapes in the message), or None."""
    if len(input_shape) != 3:
        return f"the ONNX teacher takes images (N, C, H, W); the dataset gives {list(input_shape)}"
    if sig.input_shape[0] is not None and sig.input_shape[0] != input_shape[0]:
        return (
            f"the ONNX teacher takes {sig.input_shape[0]}-channel images, the dataset gives "
            f"{input_shape[0]}-channel ones; dataset.image_size cannot change that: use a "
            "dataset with the teacher's channels, or a teacher exported for these"
        )
    for want, have in zip(sig.input_shape, input_shape, strict=True):
        if want is not None and want != have:
            wanted = ", ".join(str(d or "?") for d in sig.input_shape)
            given = ", ".join(map(str, input_shape))
            return (
                f"the ONNX teacher takes input (N, {wanted}), the dataset gives (N, {given}); "
                "set dataset.image_size or export the graph for this size"
            )
    if sig.outputs is not None and sig.outputs != outputs:
        return f"the ONNX teacher gives {sig.outputs} outputs, the dataset has {outputs}"
    return None


class OnnxTeacher(nn.Module):
    """An ONNX graph as a frozen teacher: forward-only in onnxruntime (CUDA when this
    worker has onnxruntime's CUDA provider and a GPU, else the CPU). It has no torch
    parameters; `onnx_parameters` counts the graph's weights for the report."""

    def __init__(self, path: str | Path, sig: OnnxSignature):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        providers = ["CPUExecutionProvider"]
        if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = sig.input_name
        self.onnx_parameters = sig.parameters
        self.onnx_bytes = Path(path).stat().st_size
        # its weights are in the graph, not in a state dict: what identifies this teacher
        self.graph_sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def forward(self, x: Tensor) -> Tensor:
        batch = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (out,) = self.session.run(None, {self.input_name: batch})
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)
