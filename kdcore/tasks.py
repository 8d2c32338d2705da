"""The one place that maps a task to its modality: which room of kdcore (kdcore.image,
kdcore.text) validates, sizes and runs it. A new modality is a new room and a line
here."""

from __future__ import annotations

from typing import Literal

Task = Literal["classification", "regression", "causal_lm", "text_classification", "embedding"]
Modality = Literal["image", "text"]

MODALITY: dict[Task, Modality] = {
    "classification": "image",
    "regression": "image",
    "causal_lm": "text",
    "text_classification": "text",
    "embedding": "text",  # a sentence encoder (kdcore.text.embedding)
}
TEXT_TASKS = frozenset(task for task, modality in MODALITY.items() if modality == "text")


def modality(task: Task) -> Modality:
    return MODALITY[task]
