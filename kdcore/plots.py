"""curves.png: the training curves of a finished run (loss terms and held-out quality per
epoch, the teacher's quality as a horizontal line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    """matplotlib, loaded when a plot is drawn (not when kdcore is imported)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    history: list[dict[str, Any]],
    path: Path,
    title: str,
    quality_key: str,
    teacher_quality: float | None,
) -> Path:
    """Two panels: training loss terms (epoch means) and validation loss; the quality
    metric (accuracy or mse) per epoch with the teacher's as a dashed line."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_q) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    terms = sorted({k for h in history for k in h.get("train_losses", {})})
    for term in terms:
        ax_loss.plot(
            epochs, [h.get("train_losses", {}).get(term) for h in history], marker=".", label=term
        )
    if any("loss" in h for h in history):
        ax_loss.plot(
            epochs, [h.get("loss") for h in history], linestyle="--", color="k", label="val loss"
        )
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("loss")
    ax_loss.legend(fontsize=8)
    ax_q.plot(
        epochs, [h.get(quality_key) for h in history], marker=".", label=f"student {quality_key}"
    )
    if teacher_quality is not None:
        ax_q.axhline(teacher_quality, color="tab:red", linestyle="--", label="teacher (test)")
    ax_q.set_xlabel("epoch")
    ax_q.set_title(f"validation {quality_key}")
    ax_q.legend(fontsize=8)
    for ax in (ax_loss, ax_q):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
