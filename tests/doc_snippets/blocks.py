"""The fenced blocks of README.md and docs/, and which tests cover each."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PASTEABLE = {"sh", "python", "json"}


def blocks() -> Iterator[tuple[str, str, str]]:
    """(where: file:first line, language, text) of every fenced block."""
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```", text, re.S | re.M):
            indent, lang, body = match.groups()
            body = "\n".join(line[len(indent) :] for line in body.splitlines())
            first = next(line for line in body.splitlines() if line.strip())
            yield f"{path.relative_to(ROOT)}: {first.strip()[:60]}", lang, body


def block(where: str) -> str:
    """The one block that starts as `where` says (file: the opening of its first line)."""
    found = [body for at, _, body in blocks() if at == where]  # an exact name first
    found = found or [body for at, _, body in blocks() if at.startswith(where)]
    assert len(found) == 1, f"{where}: {len(found)} blocks"
    return found[0]


# blocks run by this package's tests (by where they start)
RUN = {
    "README.md: .venv/bin/kd submit examples/quickstart_teacher",
    "README.md: .venv/bin/kd submit examples/lm_teacher.json --watch",
    "README.md: from kdservice.client import Client",
    "README.md: .venv/bin/kdcore train examples/quickstart_teacher",
    "docs/api.md: KEY=$(cat data/api_key)",
    "docs/cli-and-client.md: from kdservice.client import Client, ApiError",
    "docs/kdcore.md: import kdcore",
    "docs/kdcore.md: import json, onnx",
    "docs/kdcore.md: kdcore train  SPEC.json",
}

# blocks checked as job specs (whole, or a fragment of one)
SPECS = {
    'README.md: "sweep": {"parameters"',
    "docs/kdcore.md: {",
    "docs/embeddings.md: {",
    "docs/multi-host.md: {",
    'docs/kdcore.md: "sweep": {"parameters"',
    "docs/language-models.md: {",
    'docs/language-models.md: {"kind": "distill", "task": "causal_lm",',
    'docs/language-models.md: {"kind": "distill", "task": "causal_lm", "name": "from-an-en',
    'docs/language-models.md: {"kind": "distill", "task": "causal_lm", "name": "sharded",',
}

NOT_RUN = {
    "docs/embeddings.md: from sentence_transformers import SentenceTransformer": (
        "needs a finished embedding job's folder: tests/app/test_embedding_jobs.py downloads "
        "one from the service and loads it with SentenceTransformer, as the block does"
    ),
    "README.md: make run": (
        "the README's two commands: CI runs `make test` itself; tests/test_install.py "
        "checks what `make run` installs and starts (make -n) without a second install"
    ),
    "README.md: # a custom PyTorch model that is in no registry": (
        "needs the user's own `model`: tests/test_examples.py runs it on a stand-in model "
        "(test_the_readmes_onnx_export_snippet_writes_one_file_the_service_accepts)"
    ),
    "README.md: # a Hugging Face model folder": (
        "starts from the user's pretrained `my-vit` (nothing downloads here); "
        "tests/app/test_bring_your_own.py uploads such a folder, zipped, as a teacher"
    ),
    "docs/operations.md: docker run --rm kdservice:cpu --version": (
        "no container engine here; tests/deploy/test_wheel.py runs the Dockerfile's own "
        "build and install commands and every role from the installed wheel"
    ),
    "docs/operations.md: docker compose up -d --build": (
        "no container engine here; tests/deploy/test_compose.py renders both files with "
        "Compose's own parser and checks every command"
    ),
}
