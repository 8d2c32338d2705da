"""Teacher preflight for text jobs (kdcore.image.preflight is the image side's): before any
training step the teacher is scored on up to 512 validation rows. A classifier under
1.5x chance accuracy, or a language model whose perplexity is over its vocabulary's
size / 1.5 (a uniform guess scores the vocabulary's size), fails the job with the
figures and the likely causes, unless `distillation.teacher_check` is "warn"; a teacher
without weights is measured and never failed. The report holds `teacher_preflight`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kdcore.errors import TeacherCheckError
from kdcore.shipping.readiness import CHANCE_MARGIN, PREFLIGHT_SAMPLES
from kdcore.spec import JobSpec
from kdcore.text.evaluate import evaluate_text
from kdcore.text.rows import TextRows, TextSplit


class _Head:
    """The first `n` rows of a split, read as the split reads them."""

    def __init__(self, rows: TextRows, n: int):
        self.source, self.n = rows, min(n, len(rows))

    def __len__(self) -> int:
        return self.n

    @property
    def seq_len(self) -> int:
        return self.source.seq_len

    @property
    def labels(self) -> Tensor | None:
        labels = self.source.labels
        return None if labels is None else labels[: self.n]

    def rows(self, idx: Tensor) -> TextSplit:
        return self.source.rows(idx)

    def tokens(self) -> int:
        return self.n * self.seq_len

    def real_tokens(self) -> int:
        return int(self.rows(torch.arange(self.n)).attention.sum()) if self.n else 0


def text_teacher_preflight(
    spec: JobSpec,
    teacher: nn.Module | None,
    val: TextRows,
    train: TextRows,
    vocab_size: int,
    num_classes: int | None,
    device: torch.device,
) -> dict[str, Any] | None:
    """report.teacher_preflight for a text job; raises TeacherCheckError near chance."""
    if teacher is None:
        return None
    split, name = (val, "validation") if len(val) else (train, "train")
    sample = _Head(split, PREFLIGHT_SAMPLES)
    measured = evaluate_text(teacher.to(device), sample, spec, device)
    result: dict[str, Any] = {"split": name, "samples": len(sample)}
    if spec.task == "text_classification":
        chance = 1.0 / max(num_classes or 1, 1)
        threshold = CHANCE_MARGIN * chance
        result.update(
            accuracy=round(measured["accuracy"], 4),
            chance=round(chance, 4),
            threshold_accuracy=round(threshold, 4),
            passed=measured["accuracy"] >= threshold,
        )
        figure = f"{measured['accuracy']:.1%} accuracy, near chance ({chance:.1%})"
    else:
        limit = vocab_size / CHANCE_MARGIN
        result.update(
            perplexity=round(measured["perplexity"], 4),
            vocab_size=vocab_size,
            threshold_perplexity=round(limit, 4),
            passed=measured["perplexity"] <= limit,
        )
        figure = (
            f"a perplexity of {measured['perplexity']:.4g}, near a uniform guess over its "
            f"{vocab_size} tokens"
        )
    trained = all(model.checkpoint for _, model in spec.teacher_models())
    result["check"] = spec.distillation.teacher_check if trained else "warn"
    if not result["passed"] and result["check"] == "fail":
        raise TeacherCheckError(
            f"the teacher scores {figure} on {result['samples']} {name} rows before "
            "training, so distilling it would teach noise. Likely causes: the tokenizer is "
            "not the one it was trained with (dataset.tokenizer, or the folder's "
            "tokenizer.json), its labels are in another order than the dataset's, or the "
            "checkpoint is not the trained one. To go on anyway, set "
            'distillation.teacher_check to "warn"'
        )
    return result
