"""What an embedding job's spec must hold beyond its schema (kdcore.text.validate sends
task `embedding` here)."""

from __future__ import annotations

from kdcore.spec import JobSpec
from kdcore.text.embedding.task import EMBEDDING_METHODS

EMBEDDING_EXPORTS = {"safetensors", "onnx"}


def embedding_problems(spec: JobSpec) -> list[tuple[str, str]]:
    from kdcore.text.models import text_names

    problems: list[tuple[str, str]] = []
    ds, t = spec.dataset, spec.teacher
    if ds.name != "text":
        problems.append(
            ("/dataset/name", "task embedding reads dataset 'text': one passage a line")
        )
    elif not ds.path:
        problems.append(("/dataset/path", "dataset 'text' needs a path"))
    if spec.kind != "distill" or t is None:
        problems.append(("/kind", "task embedding distils a teacher's embeddings: kind distill"))
    elif t.outputs is not None or t.endpoint is not None or not t.checkpoint:
        problems.append(("/teacher/checkpoint", "an embedding teacher is a model folder"))
    for pointer, model in spec.model_roles():
        if model.arch is None or model.arch not in text_names("embedding"):
            problems.append(
                (
                    f"{pointer}/arch",
                    "task embedding takes encoders: hf:<Name>Model, e.g. hf:BertModel",
                )
            )
    if spec.kind == "distill" and spec.distillation.method not in EMBEDDING_METHODS:
        problems.append(
            ("/distillation/method", f"task embedding distils with {', '.join(EMBEDDING_METHODS)}")
        )
    refused = {
        "/sweep": spec.sweep is not None and "sweeps are built for image jobs",
        "/augment": spec.augment.enabled and "augmentation is for images",
        "/teachers": spec.teachers is not None and "an embedding job distils one teacher",
        "/training/quantization": spec.training.quantization != "none"
        and "quantisation-aware training is built for image jobs",
        "/distillation/sharding": spec.distillation.sharding != "none"
        and "fsdp sharding is built for causal_lm jobs",
        "/gate": spec.gate is not None
        and "the readiness gate checks classifiers and language models",
        "/resources/gpus": spec.resources.gpus > 1 and "an embedding job runs in one process",
    }
    problems += [(p, str(msg)) for p, msg in refused.items() if msg]
    bad = sorted(set(spec.export) - EMBEDDING_EXPORTS)
    if bad:
        problems.append(
            (
                "/export",
                "embedding jobs export safetensors (a sentence-transformers folder) and onnx",
            )
        )
    return problems
