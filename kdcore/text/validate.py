"""What a text job's spec must hold beyond its schema (kdcore.checks.validate sends tasks
causal_lm and text_classification here)."""

from __future__ import annotations

from kdcore.spec import JobSpec
from kdcore.text.losses import LM_METHODS, SEQUENCE_METHOD, TOKEN_METHODS

CLASSIFIER_METHODS = ("kd", "dkd", "dist")  # logit methods, as for images
TEXT_EXPORTS = {"safetensors", "onnx"}


def text_problems(spec: JobSpec) -> list[tuple[str, str]]:
    from kdcore.text.models import text_names

    if spec.task == "embedding":
        from kdcore.text.embedding.validate import embedding_problems

        return embedding_problems(spec)
    problems: list[tuple[str, str]] = []
    ds = spec.dataset
    if ds.name != "text":
        problems.append(
            ("/dataset/name", f"task {spec.task} reads dataset 'text' (.txt or .jsonl)")
        )
    elif not ds.path:
        problems.append(("/dataset/path", "dataset 'text' needs a path"))
    for pointer, model in spec.model_roles():
        if model.arch is None or model.arch not in text_names(spec.task):
            names = ", ".join(n for n in text_names(spec.task)[:6])
            problems.append(
                (f"{pointer}/arch", f"task {spec.task} takes hf:<Class> models, e.g. {names}")
            )
    problems += _method_problems(spec) + _outputs_problems(spec)
    refused = {
        "/sweep": spec.sweep is not None and "sweeps are built for image jobs",
        "/augment": spec.augment.enabled and "augmentation is for images",
        "/teachers": spec.teachers is not None and "a text job distils one teacher",
        "/training/quantization": spec.training.quantization != "none"
        and "quantisation-aware training is built for image jobs",
        "/student/init_from_teacher": spec.student.init_from_teacher
        and spec.kind != "distill"
        and "init_from_teacher needs a teacher",
    }
    problems += [(p, str(msg)) for p, msg in refused.items() if msg]
    problems += _sharding_problems(spec)
    bad = sorted(set(spec.export) - TEXT_EXPORTS)
    if bad or ("onnx" in spec.export and spec.task == "causal_lm"):
        problems.append(
            (
                "/export",
                "text jobs export safetensors (a Hugging Face folder), and onnx for classifiers",
            )
        )
    return problems


def _sharding_problems(spec: JobSpec) -> list[tuple[str, str]]:
    """fsdp: a causal LM whose global batch splits evenly across the ranks."""
    if spec.distillation.sharding == "none":
        return []
    if spec.task != "causal_lm":
        return [("/distillation/sharding", "fsdp sharding is built for causal_lm jobs")]
    ranks = spec.resources.gpus
    if spec.training.batch_size % ranks:
        return [
            (
                "/training/batch_size",
                f"with sharding fsdp, batch_size is the global batch: {spec.training.batch_size}"
                f" does not split evenly across {ranks} ranks (resources.gpus)",
            )
        ]
    return []


def _endpoint_problems(spec: JobSpec, logprobs: int | None) -> list[tuple[str, str]]:
    """A teacher endpoint: its answers (method sequence) or, with logprobs, its top-k
    log-probabilities (a token-level method; teacher_topk, if given, is that k)."""
    if spec.task != "causal_lm" or spec.kind != "distill":
        return [("/teacher/endpoint", "a teacher endpoint serves causal_lm distill jobs")]
    method, topk = spec.distillation.method, spec.distillation.teacher_topk
    if logprobs is None and method != SEQUENCE_METHOD:
        return [
            (
                "/distillation/method",
                "a teacher endpoint answers prompts: method 'sequence' (its answers are the "
                "student's training text), or a token-level method with endpoint.logprobs",
            )
        ]
    if logprobs is not None and method not in TOKEN_METHODS:
        return [
            (
                "/distillation/method",
                f"endpoint.logprobs trains on the server's top-k: method one of "
                f"{sorted(TOKEN_METHODS)} (its answers alone: method sequence, no logprobs)",
            )
        ]
    if logprobs is not None and topk is not None and topk != logprobs:
        return [("/distillation/teacher_topk", f"the server gives {logprobs} logprobs, not {topk}")]
    if spec.student.init_from_teacher:
        return [("/student/init_from_teacher", "an endpoint's teacher has no layers here")]
    return []


def _outputs_problems(spec: JobSpec) -> list[tuple[str, str]]:
    """A teacher given by its stored top-k outputs: a token-level causal-LM distillation;
    a teacher behind an endpoint: sequence-level."""
    if spec.teacher is not None and spec.teacher.endpoint is not None:
        return _endpoint_problems(spec, spec.teacher.endpoint.logprobs)
    if spec.teacher_outputs is None:
        return []
    where = "/teacher/outputs"
    if spec.task != "causal_lm" or spec.kind != "distill":
        return [(where, "stored teacher outputs serve causal_lm distill jobs")]
    if spec.distillation.method not in TOKEN_METHODS:
        return [(where, f"stored teacher outputs serve methods {', '.join(TOKEN_METHODS)}")]
    if spec.student.init_from_teacher:
        return [("/student/init_from_teacher", "stored outputs hold no teacher layers")]
    return []


def _method_problems(spec: JobSpec) -> list[tuple[str, str]]:
    d = spec.distillation
    if spec.kind != "distill":
        return []
    methods = LM_METHODS if spec.task == "causal_lm" else CLASSIFIER_METHODS
    if d.method not in methods:
        return [("/distillation/method", f"task {spec.task} distils with {', '.join(methods)}")]
    if d.teacher_topk and d.method not in TOKEN_METHODS:
        return [("/distillation/teacher_topk", "teacher_topk is for the token-level methods")]
    return []
