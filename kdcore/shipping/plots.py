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
    baseline_history: list[dict[str, Any]] | None = None,
) -> Path:
    """Two panels: training loss terms (epoch means) and validation loss; the quality
    metric (accuracy or mse) per epoch, the baseline's (the student trained without a
    teacher) beside it, and the teacher's as a dashed line."""
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
    if baseline_history:
        ax_q.plot(
            [h["epoch"] for h in baseline_history],
            [h.get(quality_key) for h in baseline_history],
            marker=".",
            label=f"baseline (no teacher) {quality_key}",
        )
    if teacher_quality is not None:
        ax_q.axhline(teacher_quality, color="tab:red", linestyle="--", label="teacher (test)")
    ax_q.set_xlabel("epoch")
    ax_q.set_title(f"validation {quality_key}")
    ax_q.legend(fontsize=8)
    for ax in (ax_loss, ax_q):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Drawn into a temp file of its own, then renamed over `path`: a reader sees a
    whole picture, and two writers of one path (which worker.folder_lock prevents for a
    job's folder) would not take each other's temp file."""
    from kdcore.io.checkpoints import atomic_write

    fig.tight_layout()
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    finally:
        plt.close(fig)
    return path


def plot_pareto(
    trials: list[dict[str, Any]],
    front: list[int],
    best: int | None,
    metric: str,
    max_latency_ms: float | None,
    path: Path,
    title: str,
) -> Path:
    """pareto.png: each trained trial's test quality against its batch-1 latency; the
    Pareto front joined, the best trial starred, excluded trials as grey crosses and
    the latency limit as a dashed line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    trained = [t for t in trials if t.get(metric) is not None]
    ax.scatter(
        [t["latency_ms_batch1"] for t in trained],
        [t[metric] for t in trained],
        color="tab:blue",
        label="trained trial",
    )
    for t in trained:
        ax.annotate(str(t["trial"]), (t["latency_ms_batch1"], t[metric]), fontsize=7)
    on_front = sorted(
        (t for t in trained if t["trial"] in front), key=lambda t: t["latency_ms_batch1"]
    )
    xs, ys = [t["latency_ms_batch1"] for t in on_front], [t[metric] for t in on_front]
    ax.plot(xs, ys, "--", color="tab:blue", alpha=0.6)
    ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="tab:blue", label="Pareto front")
    excluded = [t for t in trials if t.get(metric) is None]
    if excluded and trained:  # not trained: shown at their latency, on the floor
        floor = min(t[metric] for t in trained)
        ax.scatter(
            [t["latency_ms_batch1"] for t in excluded],
            [floor] * len(excluded),
            marker="x",
            color="0.55",
            label="excluded by a constraint",
        )
    chosen = [t for t in trained if t["trial"] == best]
    if chosen:
        ax.scatter(
            [chosen[0]["latency_ms_batch1"]],
            [chosen[0][metric]],
            marker="*",
            s=250,
            color="tab:orange",
            label="selected (validation)",
            zorder=3,
        )
    if max_latency_ms is not None:
        ax.axvline(max_latency_ms, color="tab:red", linestyle=":", label="latency limit")
    ax.set_xlabel("CPU latency, batch 1 (ms)")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(plt, fig, path)
