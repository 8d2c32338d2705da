"""What a client may name in a spec, from the registries: the service's
`GET /v1/capabilities` and `GET /v1/architectures` read it here, so the service knows
kdcore's registries only through kdcore.checks."""

from __future__ import annotations

from kdcore.image.data import DATASETS
from kdcore.losses import LOSSES
from kdcore.text.embedding.task import EMBEDDING_METHODS
from kdcore.text.losses import LM_METHODS
from kdcore.text.validate import CLASSIFIER_METHODS


def datasets() -> list[str]:
    """Dataset names: the image registry's, then `text` (a text set)."""
    return [*DATASETS.names(), "text"]


def image_methods() -> list[str]:
    return LOSSES.names()


def text_methods() -> dict[str, list[str]]:
    """Methods by text task (docs/language-models.md)."""
    return {
        "causal_lm": list(LM_METHODS),
        "text_classification": list(CLASSIFIER_METHODS),
        "embedding": list(EMBEDDING_METHODS),
    }
