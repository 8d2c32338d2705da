"""Peak memory of the streaming path does not grow with the dataset: a generated folder
of 40,000 JPEGs trains within 30% of the peak of one of 4,000 (each run in its own
process, its peak resident memory and its decoding workers' read from the kernel)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore.streaming import decoded_bytes
from tests.support.images import write_jpeg_folder

pytestmark = pytest.mark.slow

CHILD = """
import json, resource, sys
import kdcore
spec = json.loads(sys.argv[1])
report = kdcore.train(spec, sys.argv[2])
peak = lambda who: resource.getrusage(who).ru_maxrss * 1024
print(json.dumps({"self": peak(resource.RUSAGE_SELF), "workers": peak(resource.RUSAGE_CHILDREN),
                  "loading": report["dataset"]["loading"], "train": report["dataset"]["train"]}))
"""


def _peak(tmp_path: Path, count: int) -> dict:
    data = write_jpeg_folder(tmp_path / f"set{count}.tar", count, side=32)
    spec = {
        "kind": "train",
        "student": {"arch": "small_cnn"},
        "dataset": {"name": "imagefolder", "path": str(data), "image_size": 64},
        "training": {"epochs": 1, "batch_size": 256, "device": "cpu", "data_workers": 2},
    }
    spec["dataset"]["streaming"] = "auto"
    spec["dataset"]["memory_budget_mb"] = 1  # both sets pass it: auto streams them
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec), str(tmp_path / f"out{count}")],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_forty_thousand_jpegs_train_in_the_memory_of_four_thousand(tmp_path):
    small, large = _peak(tmp_path, 4_000), _peak(tmp_path, 40_000)
    print(f"peak memory: 4,000 JPEGs {small}, 40,000 JPEGs {large}")  # -rA shows it
    assert small["loading"]["path"] == large["loading"]["path"] == "streaming"
    assert large["train"] > 9 * small["train"]  # it did train on ten times the images
    # the training process and one decoding worker at their peaks
    small_peak = small["self"] + small["workers"]
    large_peak = large["self"] + large["workers"]
    assert large_peak <= 1.3 * small_peak, (small, large)
    # and the test can tell: the 36,000 more images decoded in memory would pass 30%
    assert decoded_bytes(36_000, 64) > 0.3 * small_peak, (small, large)
