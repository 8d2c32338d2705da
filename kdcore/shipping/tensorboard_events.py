"""events.out.tfevents.kdcore: the run's curves as a TensorBoard event file, an output
like curves.png. Download it into a folder and run `tensorboard --logdir <folder>`.

Written once the run has ended, from the history the report carries (one point per
epoch), so the file is whole and its sha256 is known when the report lists it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.out.tfevents.kdcore"  # TensorBoard reads names holding "tfevents"


def write_events(report: dict[str, Any], out_dir: Path) -> Path:
    """Per epoch: each training loss term, the validation loss and metric, images/s;
    at the end: the test figures of student and teacher, the spec as text."""
    from torch.utils.tensorboard import SummaryWriter

    path = out_dir / EVENTS_FILE
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        writer = SummaryWriter(log_dir=tmp)
        for h in report.get("history") or []:
            epoch = h["epoch"]
            for term, value in (h.get("train_losses") or {}).items():
                writer.add_scalar(f"train/{term}", value, epoch)
            for key in ("loss", "accuracy", "mse", "perplexity"):
                if h.get(key) is not None:
                    writer.add_scalar(f"val/{key}", h[key], epoch)
            if h.get("images_per_s"):
                writer.add_scalar("speed/train_images_per_s", h["images_per_s"], epoch)
        last = len(report.get("history") or [])
        for role in ("student", "teacher"):
            for key in ("accuracy", "mse", "perplexity", "latency_ms_batch1"):
                value = (report.get(role) or {}).get(key)
                if value is not None:
                    writer.add_scalar(f"test/{role}_{key}", value, last)
        if report.get("agreement") is not None:
            writer.add_scalar("test/agreement", report["agreement"], last)
        writer.add_text("report", f"```\n{json.dumps(_summary(report), indent=2)}\n```", last)
        writer.close()
        (written,) = Path(tmp).glob("events.out.tfevents.*")
        shutil.move(written, path)
    return path


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "kind", "task", "epochs", "selected_epoch", "precision", "device")
    return {k: report.get(k) for k in keys}
