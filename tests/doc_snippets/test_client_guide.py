"""docs/cli-and-client.md's Python client guide."""

from __future__ import annotations

import pytest

from tests.doc_snippets.blocks import block
from tests.doc_snippets.conftest import Sandbox


@pytest.mark.integration
@pytest.mark.slow
def test_the_python_client_guide_runs(sandbox: Sandbox) -> None:
    code = block("docs/cli-and-client.md: from kdservice.client import Client, ApiError")
    # the asyncio part names a `spec` the reader has: the same example, and its main run
    code += "\nimport asyncio, json\nspec = json.load(open('examples/quickstart_teacher.json'))"
    code += "\nasyncio.run(main())\nprint('async done')"
    out = sandbox.python(code)
    assert "async done" in out
    assert (sandbox.root / "out/student.safetensors").is_file()
