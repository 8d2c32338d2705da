"""docs/kdcore.md's library calls and its ONNX metadata recipe."""

from __future__ import annotations

import pytest

from tests.doc_snippets.blocks import block
from tests.doc_snippets.conftest import Sandbox


@pytest.mark.integration
@pytest.mark.slow
def test_the_library_calls_and_the_onnx_metadata_recipe_run(sandbox: Sandbox) -> None:
    prelude = (
        "import kdcore\n"
        "spec_dict = {'kind': 'distill', 'teacher': {'arch': 'small_cnn'},\n"
        "             'student': {'arch': 'mlp_small'},\n"
        "             'dataset': {'builtin': 'digits', 'max_samples': 300},\n"
        "             'training': {'epochs': 1}, 'export': ['safetensors', 'onnx']}\n"
        "my_callbacks = kdcore.Callbacks()\n"
    )
    sandbox.python(prelude + block("docs/kdcore.md: import kdcore"))
    graph = sandbox.root / "teacher.onnx"
    graph.write_bytes((sandbox.root / "out/run/student.onnx").read_bytes())
    sandbox.python(block("docs/kdcore.md: import json, onnx"))
    from kdcore.models.onnx import read_preprocessing

    recorded = read_preprocessing(graph)
    assert recorded["input_shape"] == [3, 32, 32]
    assert recorded["normalize"] == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
