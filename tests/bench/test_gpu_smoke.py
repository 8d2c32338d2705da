"""`bench/gpu.sh --smoke`: the GPU benchmarks' code paths on the CPU (a few steps), so the
script a GPU run relies on cannot rot. It checks the figures are printed, not their size."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow(seconds=85)
ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_smoke_prints_every_figure() -> None:
    r = subprocess.run(
        ["bash", "bench/gpu.sh", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    rows = re.findall(
        r"^(cifar_\S+ -> cifar_\S+)\s+(student alone|KD cached teacher|KD)\s+([\d.]+)\s+([\d.]+)",
        r.stdout,
        flags=re.M,
    )
    pairs = {(pair, run) for pair, run, _, _ in rows}
    for pair in ("cifar_resnet56 -> cifar_resnet20", "cifar_resnet32x4 -> cifar_resnet8x4"):
        for run in ("student alone", "KD", "KD cached teacher"):
            assert (pair, run) in pairs, r.stdout
    # the figures parse as numbers; their size depends on the machine and its load (a
    # busy CPU prints a TFLOP/s of 0.000), so it is not checked
    assert all(float(rate) >= 0 and float(tflops) >= 0 for _, _, rate, tflops in rows)
    ratios = re.findall(
        r"KD / student alone ([\d.]+), cached KD / KD ([\d.]+) \(cache used: True\)", r.stdout
    )
    assert len(ratios) == 2, r.stdout
    # and the language-model bench's table (bench/lm_kd.py --smoke): a row per case
    cases = re.findall(r"^(\S+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+-$", r.stdout, flags=re.M)
    assert {c[0] for c in cases} == {
        "alone",
        "forward_kl",
        "gkd",
        "forward_kl@k16",
        "checkpointed",
    }, r.stdout
    # and the sharding bench's (bench/lm_sharding.py --smoke): one process, then 2 ranks
    rows = re.findall(
        r"^(1 process, whole|2 ranks, fsdp)\s+([\d.]+)\s+([\d.]+)\s+-\s+([\d.]+)", r.stdout, re.M
    )
    assert [row[0] for row in rows] == ["1 process, whole", "2 ranks, fsdp"], r.stdout
    held = re.search(r"each rank holds ([\d.]+)x of what one process holds", r.stdout)
    assert held is not None and 0.4 <= float(held.group(1)) <= 0.6, r.stdout
    # and the multi-node bench's (bench/multi_node.py --smoke): one rank, one host with
    # two, two agents with one each; both 2-rank setups see the same global batches
    setups = re.findall(
        r"^(1 rank|1 host x 2 ranks|2 nodes x 1 rank)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
        r.stdout,
        re.M,
    )
    assert [s[0] for s in setups] == ["1 rank", "1 host x 2 ranks", "2 nodes x 1 rank"], r.stdout
    assert setups[1][3] == setups[2][3], r.stdout  # the same last loss, to 4 decimals
