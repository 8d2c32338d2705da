"""Every pasteable block is covered; the specs in the docs are valid jobs; the kdcore
synopsis names real subcommands and options."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from kdcore.checks.validate import parse_spec
from tests.doc_snippets.blocks import NOT_RUN, PASTEABLE, ROOT, RUN, SPECS, block, blocks


def test_every_pasteable_block_is_covered() -> None:
    seen = [where for where, lang, _ in blocks() if lang in PASTEABLE]
    named = RUN | SPECS | set(NOT_RUN)
    uncovered = [at for at in seen if not any(at.startswith(key) for key in named)]
    assert uncovered == [], "a block no test runs; run it here or say why not"
    exact = [key for key in named if key in seen]  # named in full: only that block

    def found(key: str) -> int:
        return seen.count(key) if key in exact else sum(at.startswith(key) for at in seen)

    gone = [key for key in named if found(key) != 1]
    assert gone == [], "a block named here is no longer in the docs (or is ambiguous)"


def _spec_of(text: str) -> dict:
    """A block's spec: placeholders filled, a fragment ("sweep": ...) put into a job."""
    text = re.sub(r'"<[^">]*>"', '"out/placeholder"', text)
    data = json.loads(text if text.lstrip().startswith("{") else "{" + text + "}")
    if "kind" in data:
        return data
    base = json.loads((ROOT / "examples" / "quickstart_ship.json").read_text())
    return {**{k: v for k, v in base.items() if k not in data}, **data}


@pytest.mark.parametrize("where", sorted(SPECS))
def test_a_spec_in_the_docs_is_a_valid_job(where: str) -> None:
    spec = parse_spec(_spec_of(block(where)))
    assert spec.kind in ("train", "distill")


def test_the_kdcore_synopsis_names_real_subcommands_and_options() -> None:
    synopsis = block("docs/kdcore.md: kdcore train  SPEC.json")
    for line in synopsis.splitlines():
        words = line.split()
        if words[:1] != ["kdcore"]:
            continue
        helped = subprocess.run(
            [sys.executable, "-m", "kdcore.cli", words[1], "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert helped.returncode == 0, helped.stderr
        for option in re.findall(r"--[a-z-]+", line):
            assert option in helped.stdout, (words[1], option)
