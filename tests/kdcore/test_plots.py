"""curves.png is written whole, however many writers a path has."""

from __future__ import annotations

import subprocess
import sys

import pytest

WRITER = """
import sys
from pathlib import Path
from kdcore.shipping.plots import plot_curves
history = [{"epoch": e, "accuracy": 0.5, "train_losses": {"loss": 1.0 / e}} for e in (1, 2, 3)]
for _ in range(int(sys.argv[2])):
    plot_curves(history, Path(sys.argv[1]), "race", "accuracy", 0.9)
"""


@pytest.mark.slow
def test_two_writers_of_one_curves_png_both_finish_and_leave_a_whole_picture(tmp_path):
    """Two training processes once shared a job folder (a second attempt started while
    the first still ran): each renamed its fixed `curves.tmp.png` over curves.png and
    the slower one failed with [Errno 2] on a temp file the other had taken."""
    path = tmp_path / "curves.png"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), "25"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    errors = [w.communicate(timeout=240)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0], errors
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]  # no temp left
