"""An embedding job from spec to outputs: the teacher's sentence-transformers folder,
the student (its config over the teacher's, layers taken from the teacher's), the
passages, the teacher's embeddings stored once, training in the one loop, fidelity on
held-out text, a sentence-transformers folder, ONNX and the report.
`kdcore.runs.distributed.run_one` sends task `embedding` here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from kdcore.engine.callbacks import Callbacks
from kdcore.engine.loop import LoopResult, train_loop
from kdcore.engine.precision import uses_bf16
from kdcore.errors import DataError
from kdcore.spec import JobSpec
from kdcore.text.embedding.encoder import (
    SentenceEncoder,
    build_encoder_backbone,
    encode_batches,
    load_encoder_weights,
)
from kdcore.text.embedding.export import export_encoder, write_sentence_transformer
from kdcore.text.embedding.fidelity import MAX_FIDELITY_PASSAGES, fidelity, model_size, speed
from kdcore.text.embedding.folder import EncoderFolder, read_encoder_folder
from kdcore.text.embedding.passages import Batcher, Passages, PassageSet, load_passages
from kdcore.text.embedding.store import EmbeddingStore, file_sha256, store_key, teacher_embeddings
from kdcore.text.embedding.task import EmbeddingTask, agreement
from kdcore.text.models import init_from_teacher, read_model_folder
from kdcore.text.tokens import TextTokenizer, load_tokenizer

STUDENT_FILE = "student.safetensors"
COLLAPSED_COSINE = 0.995  # a teacher whose passages all embed alike reads no text


@dataclass
class _Job:
    tok: TextTokenizer
    max_len: int
    teacher: SentenceEncoder
    student: SentenceEncoder
    data: PassageSet
    key: str
    initialised_from: list[int] | None


def _max_len(spec: JobSpec, folder: EncoderFolder) -> int:
    limits = [
        spec.dataset.seq_len,
        folder.max_seq_length,
        folder.model.config.get("max_position_embeddings"),
    ]
    return min(int(v) for v in limits if isinstance(v, int) and v > 0)


def _student(
    spec: JobSpec, teacher: SentenceEncoder, t_config: dict[str, Any], vocab: int
) -> tuple[SentenceEncoder, list[int] | None]:
    """The student's config is the teacher's with the student's keys over it (give only
    what differs: `{"num_hidden_layers": 3}`), or its own folder's."""
    s = spec.student
    assert s.arch is not None
    config, weights = {**t_config, **(s.config or {})}, None
    if s.checkpoint:
        own = read_model_folder(Path(s.checkpoint))
        config, weights = {**own.config, **(s.config or {})}, own.weights
    torch.manual_seed(spec.training.seed)
    backbone = build_encoder_backbone(s.arch, config, vocab, "/student")
    try:
        if weights is not None:
            load_encoder_weights(backbone, weights, "/student/checkpoint")
    finally:
        if s.checkpoint:
            own.close()
    taken = None
    if s.init_from_teacher:
        taken = init_from_teacher(backbone, teacher.backbone, s.teacher_layers, keep_ends=True)
    return SentenceEncoder(backbone, teacher.pooling, teacher.dimension), taken


def _prepare(spec: JobSpec) -> _Job:
    assert spec.teacher is not None and spec.teacher.checkpoint and spec.teacher.arch
    folder = read_encoder_folder(Path(spec.teacher.checkpoint))
    try:
        tok = (
            load_tokenizer(Path(spec.dataset.tokenizer))
            if spec.dataset.tokenizer
            else folder.model.tokenizer
        )
        if tok is None:
            raise DataError(
                "the teacher's folder has no tokenizer.json (or give dataset.tokenizer)"
            )
        vocab = int(folder.model.config.get("vocab_size", 0))
        if tok.vocab_size > vocab:
            raise DataError(
                f"the tokenizer has {tok.vocab_size} tokens, the teacher's embeddings {vocab}: "
                "they are not the same model's"
            )
        backbone = build_encoder_backbone(spec.teacher.arch, folder.model.config, vocab, "/teacher")
        assert folder.model.weights is not None  # read_encoder_folder says so
        load_encoder_weights(backbone, folder.model.weights, "/teacher/checkpoint")
        teacher = SentenceEncoder(backbone, folder.pooling).eval().requires_grad_(False)
        student, taken = _student(spec, teacher, folder.model.config, vocab)
        max_len = _max_len(spec, folder)
        key_parts = {
            "weights": file_sha256(folder.model.weights),
            "config": folder.model.config,
            "pooling": [folder.pooling.mode, folder.pooling.normalize],
            "tokenizer": tok.identity(),
            "max_len": max_len,
        }
    finally:
        folder.close()
    ds = spec.dataset
    assert ds.path is not None
    data = load_passages(
        Path(ds.path), ds.val_fraction, ds.test_fraction, spec.training.seed, ds.max_samples
    )
    key = store_key({**key_parts, "text": data.sha256, "passages": data.total})
    return _Job(tok, max_len, teacher, student, data, key, taken)


def _preflight(job: _Job, batcher: Batcher, device: torch.device) -> dict[str, Any]:
    """Before any step: the teacher's embeddings of a few held-out passages must be
    finite and tell the passages apart (a tokenizer that is not the teacher's maps
    text to unknown tokens, and every passage embeds alike)."""
    split = job.data.test
    emb = encode_batches(job.teacher.to(device), batcher.batches(split.head(32), 32), device)
    if not torch.isfinite(emb).all():
        raise DataError("the teacher's embeddings are not finite: its weights or config are broken")
    e = torch.nn.functional.normalize(emb.double(), dim=-1)
    sim = e @ e.T
    n = len(e)
    mean_cos = float((sim.sum() - sim.diagonal().sum()) / max(1, n * (n - 1)))
    if mean_cos > COLLAPSED_COSINE:
        raise DataError(
            f"the teacher embeds {n} different passages alike (mean cosine {mean_cos:.4f}): "
            "check that the tokenizer and the weights are the teacher's own"
        )
    return {"passages": n, "mean_cosine": round(mean_cos, 4), "passed": True}


def _store(
    spec: JobSpec,
    job: _Job,
    batcher: Batcher,
    out_dir: Path,
    cache: Path | None,
    device: torch.device,
    cb: Callbacks,
) -> EmbeddingStore:
    every = Passages(job.data.train.path, np.arange(job.data.total), job.data.train.offsets)
    return teacher_embeddings(
        job.teacher.to(device),
        every,
        batcher,
        spec.training.batch_size,
        out_dir / "teacher_embeddings",
        cache,
        job.key,
        device,
        cb,
    )


def _fidelity(
    model: SentenceEncoder,
    split: Passages,
    store: EmbeddingStore,
    batcher: Batcher,
    device: torch.device,
) -> dict[str, Any]:
    held = split.head(MAX_FIDELITY_PASSAGES)
    emb = encode_batches(model.to(device), batcher.batches(held, 64), device)
    teacher = store.rows(held.ids).float()
    return {
        **fidelity(emb, teacher),
        **{k: round(v, 6) for k, v in agreement(emb, teacher).items()},
    }


def run_embedding(
    spec: JobSpec,
    out_dir: Path,
    callbacks: Callbacks | None = None,
    resume_from: str | Path | None = None,
    keep_checkpoints: int | None = None,
    teacher_cache: Path | None = None,
) -> dict[str, Any]:
    """Run an embedding job; `teacher_cache` keeps the teacher's embeddings for later
    jobs on the same teacher and text."""
    from kdcore.engine.device import pick_device
    from kdcore.engine.resume import load_resume

    cb = callbacks or Callbacks()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(spec.training.device)
    job = _prepare(spec)
    batcher = Batcher(job.tok, job.max_len)
    report: dict[str, Any] = {"teacher_preflight": _preflight(job, batcher, device)}
    store = _store(spec, job, batcher, out_dir, teacher_cache, device, cb)
    if spec.baseline:  # the teacher-initialised student before any step
        report["baseline"] = {
            "model": "the student before training",
            **_fidelity(job.student, job.data.test, store, batcher, device),
        }
    task = EmbeddingTask(spec, job.data.train, job.data.val, job.student, store, batcher, device)
    done = train_loop(
        spec,
        task,
        device,
        out_dir / "checkpoints",
        cb,
        resume=load_resume(spec, resume_from),
        keep_checkpoints=keep_checkpoints,
    )
    job.student.eval()
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return {}
    report.update(_report(spec, job, store, done, device))
    report["student"] = {
        **_fidelity(job.student, job.data.test, store, batcher, device),
        **speed(job.student, job.data.test, batcher, spec.training.batch_size, device),
        **model_size(job.student),
    }
    report["teacher"] = {
        **speed(job.teacher, job.data.test, batcher, spec.training.batch_size, device),
        **model_size(job.teacher),
    }
    report["speedup"] = round(
        report["student"]["tokens_per_s"] / max(report["teacher"]["tokens_per_s"], 1e-9), 3
    )
    if "baseline" in report:
        report["fidelity_gain"] = {
            k: round(report["student"][k] - report["baseline"][k], 4)
            for k in report["student"]
            if k.startswith(("spearman", "top")) and k in report["baseline"]
        }
    _outputs(spec, job, report, done, batcher, out_dir)
    return report


def _report(
    spec: JobSpec, job: _Job, store: EmbeddingStore, done: LoopResult, device: torch.device
) -> dict[str, Any]:
    return {
        "name": spec.name,
        "kind": spec.kind,
        "task": spec.task,
        "method": spec.distillation.method,
        "device": device.type,
        "processes": spec.resources.ranks,  # data-parallel ranks, on all hosts
        "nodes": spec.resources.nodes,
        "precision": "bf16" if uses_bf16(device, spec.training.precision) else "fp32",
        "dataset": {
            "name": spec.dataset.name,
            "passages": job.data.total,
            "train": len(job.data.train),
            "val": len(job.data.val),
            "test": len(job.data.test),
            "max_tokens": job.max_len,
        },
        "pooling": {
            "mode": job.teacher.pooling.mode,
            "normalize": job.teacher.pooling.normalize,
            "dimension": job.teacher.dimension,
            "projection": job.student.projection is not None,
        },
        "initialised_from_teacher_layers": job.initialised_from,
        "teacher_embeddings": store.describe(),
        "epochs": spec.training.epochs,
        "steps": done.steps,
        "training_time_s": round(done.train_time_s, 3),
        "train_tokens_per_s": round(done.rate, 1),
        "selection": spec.training.select if spec.selects_best else "last",
        "selected_epoch": done.selected_epoch,
        "stopped_early_at_epoch": done.stopped_at_epoch,
        "history": done.history,
    }


def _outputs(
    spec: JobSpec,
    job: _Job,
    report: dict[str, Any],
    done: LoopResult,
    batcher: Batcher,
    out_dir: Path,
) -> None:
    from kdcore.shipping.outputs import write_report
    from kdcore.shipping.plots import plot_curves
    from kdcore.shipping.tensorboard_events import write_events

    student = job.student.cpu()
    files = {"safetensors": out_dir / STUDENT_FILE}
    state = {k: v.detach().contiguous() for k, v in student.state_dict().items()}
    save_file(state, str(files["safetensors"]))
    files["sentence_transformer"] = write_sentence_transformer(
        student, job.tok, job.max_len, out_dir
    )
    if "onnx" in spec.export:
        texts = job.data.test.texts(np.arange(min(4, len(job.data.test))))
        files["onnx"], report["onnx_max_abs_error"] = export_encoder(
            student, batcher, texts, out_dir
        )
    files["curves"] = plot_curves(done.history, out_dir / "curves.png", spec.name, "mse", None)
    files["tensorboard"] = write_events(report, out_dir)
    write_report(report, files, out_dir)
