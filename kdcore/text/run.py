"""A text job from spec to outputs: tokenizer, data, teacher, student (and, for
`sequence`, the teacher's generations first), training, held-out measures, a Hugging
Face folder, and the report. `kdcore.runs.entry` sends tasks causal_lm and
text_classification here."""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.engine.callbacks import Callbacks
from kdcore.engine.precision import uses_bf16
from kdcore.errors import DataError, SpecError
from kdcore.shipping import kd_gain
from kdcore.shipping.readiness import evaluate_gate
from kdcore.spec import EndpointSpec, JobSpec, ModelSpec
from kdcore.text.data import TextData, completion_rows, load_text
from kdcore.text.endpoint import ask_endpoint
from kdcore.text.endpoint_logprobs import endpoint_store
from kdcore.text.evaluate import agreement, evaluate_text, model_size, tokens_per_s
from kdcore.text.generate import GENERATIONS, generate_completions
from kdcore.text.losses import CROSS_TOKENIZER_METHOD, SEQUENCE_METHOD
from kdcore.text.models import (
    ModelFolder,
    build_text_model,
    init_from_teacher,
    load_weights,
    read_model_folder,
)
from kdcore.text.preflight import text_teacher_preflight
from kdcore.text.rows import ROWS_DIR
from kdcore.text.teacher_store import TeacherOutputs, open_store, write_artifact
from kdcore.text.tokens import TextTokenizer, bytes_tokenizer, load_tokenizer
from kdcore.text.trainer import TextFit, fit_text

HF_FILES = ("config.json", "generation_config.json", "model.safetensors")
HF_ZIP = "student_hf.zip"


def _folder(model: ModelSpec | None) -> ModelFolder | None:
    return read_model_folder(Path(model.checkpoint)) if model and model.checkpoint else None


def _tokenizers(
    spec: JobSpec, teacher: ModelFolder | None, student: ModelFolder | None
) -> tuple[TextTokenizer, TextTokenizer]:
    """(the teacher's, the student's): dataset.tokenizer for both, else each folder's,
    else the other's, else bytes."""
    if spec.dataset.tokenizer:
        given = load_tokenizer(Path(spec.dataset.tokenizer))
        return given, given
    t_tok = teacher.tokenizer if teacher else None
    s_tok = student.tokenizer if student else None
    base = t_tok or s_tok or bytes_tokenizer()
    return t_tok or base, s_tok or base


def _build(
    model: ModelSpec,
    pointer: str,
    folder: ModelFolder | None,
    spec: JobSpec,
    tok: TextTokenizer,
    labels: int | None,
) -> nn.Module:
    config = model.config or (folder.config if folder else None)
    if model.arch is None or config is None:
        raise SpecError(
            [(pointer, "a text model names its hf:<Class> and a config or a model folder")]
        )
    try:
        built = build_text_model(model.arch, config, spec.task, tok, labels)
    except ValueError as exc:
        raise SpecError([(f"{pointer}/arch", str(exc))]) from None
    if folder is not None and folder.weights is not None:
        load_weights(built, folder.weights, pointer)
    return built


def _check_method(spec: JobSpec, same: bool, t_tok: TextTokenizer, s_tok: TextTokenizer) -> None:
    across = (SEQUENCE_METHOD, CROSS_TOKENIZER_METHOD)  # the methods for any two tokenizers
    if spec.kind == "distill" and not same and spec.distillation.method not in across:
        raise SpecError(
            [
                (
                    "/distillation/method",
                    f"the teacher's tokenizer ({t_tok.source}, {t_tok.vocab_size} tokens) and "
                    f"the student's ({s_tok.source}, {s_tok.vocab_size}) differ: token-level "
                    "methods compare distributions over the same tokens; use method "
                    "'sequence', which trains the student on the teacher's text, or 'uld', "
                    "which compares the two distributions' shapes (sorted probabilities)",
                )
            ]
        )


def _sequence_data(
    spec: JobSpec,
    teacher: nn.Module | None,
    data: TextData,
    t_tok: TextTokenizer,
    s_tok: TextTokenizer,
    out_dir: Path,
    device: torch.device,
    callbacks: Callbacks,
) -> TextData:
    """The teacher (a model, or a server: teacher.endpoint) completes every training
    prompt; the student's training rows become the prompts and those completions (in
    the student's tokens)."""
    d = spec.distillation
    packed = data.form == "plain"  # the teacher's text takes the form of the job's data
    prompt_tokens = d.prompt_tokens or max(1, spec.dataset.seq_len // 4)
    prompts = [p for p in data.prompts(prompt_tokens) for _ in range(d.samples_per_prompt)]
    ranks = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if ranks else 0
    if rank != 0:  # rank 0 generates; the others read its finished file
        torch.distributed.barrier()
    if teacher is None:  # a server answers: its text, in the job's tokens
        assert spec.teacher is not None and spec.teacher.endpoint is not None
        answers = ask_endpoint(
            spec.teacher.endpoint,
            # ends of text kept as text ("<|endoftext|>"): servers read them as the token
            [str(t_tok.tok.decode(p, skip_special_tokens=False)) for p in prompts],
            out_dir,
            d.generation_temperature,
            d.generation_max_tokens,
            callbacks,
        )
        if ranks and rank == 0:
            torch.distributed.barrier()
        # a server strips the end of text from its answers; an answer shorter than
        # max_tokens ended there, so it gets it back (packed rows keep document bounds)
        completions = [s_tok.encode(a) for a in answers]
        completions = [
            c + [s_tok.eos_id] if len(c) < d.generation_max_tokens else c for c in completions
        ]
        train = completion_rows(prompts, completions, s_tok, spec.dataset.seq_len, packed=packed)
        return TextData(train, data.val, data.test, "prompts", data.seq_len, data.num_classes)
    completions = generate_completions(
        teacher.to(device),
        prompts,
        t_tok,
        out_dir,
        d.generation_temperature,
        d.generation_max_tokens,
        spec.training.eval_batch_size,
        spec.training.seed,
        device,
        callbacks,
        stop_at_eos=not packed,
    )
    if ranks and rank == 0:
        torch.distributed.barrier()
    if s_tok.identity() != t_tok.identity():  # the student reads the same text in its tokens
        prompts = [s_tok.encode(t_tok.decode(p)) for p in prompts]
        completions = [s_tok.encode(t_tok.decode(c)) for c in completions]
    train = completion_rows(prompts, completions, s_tok, spec.dataset.seq_len, packed=packed)
    return TextData(train, data.val, data.test, "prompts", data.seq_len, data.num_classes)


def _scored_by_endpoint(
    endpoint: EndpointSpec, job: _Job, out_dir: Path, callbacks: Callbacks
) -> TeacherOutputs:
    """The server's top-k over the training rows (kdcore.text.endpoint_logprobs): rank 0
    asks; the other ranks open the store it finished."""
    ranks = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if ranks else 0
    if rank != 0:
        torch.distributed.barrier()
    store = endpoint_store(out_dir / "teacher_topk", endpoint, job.data.train, job.s_tok, callbacks)
    if ranks and rank == 0:
        torch.distributed.barrier()
    return store


def _measures(
    arch: str | None, model: nn.Module, data: TextData, spec: JobSpec, device: torch.device
) -> dict[str, Any]:
    return {
        "arch": arch,
        **evaluate_text(model, data.test, spec, device),
        **model_size(model),
        "tokens_per_s": round(tokens_per_s(model, data.test, spec, device), 1),
    }


def _save_student(student: nn.Module, tok: TextTokenizer, out_dir: Path) -> dict[str, Path]:
    """A Hugging Face folder in out_dir itself (config.json, model.safetensors,
    tokenizer files: transformers' from_pretrained loads it) and the same files zipped
    (an upload that a later job takes as its teacher's model folder)."""
    staging = out_dir / ".hf"
    shutil.rmtree(staging, ignore_errors=True)
    student.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[operator]
    tok.save(staging)
    files: dict[str, Path] = {}
    with zipfile.ZipFile(out_dir / HF_ZIP, "w") as zf:
        for f in sorted(staging.iterdir()):
            zf.write(f, f.name)
            f.replace(out_dir / f.name)
            files[f.stem if f.suffix == ".json" else f.name] = out_dir / f.name
    staging.rmdir()
    files["hf_zip"] = out_dir / HF_ZIP
    return files


def _baseline(
    spec: JobSpec,
    data: TextData,
    tok: TextTokenizer,
    labels: int | None,
    teacher: nn.Module | None,
    device: torch.device,
    callbacks: Callbacks,
) -> dict[str, Any]:
    """The same student, same start (its model folder's weights, its config's random
    weights, or the teacher's layers with init_from_teacher), data, budget and seed,
    trained without the teacher."""
    torch.manual_seed(spec.training.seed)
    scratch = spec.model_copy(update={"kind": "train", "teacher": None})
    folder = _folder(spec.student)  # a student given as a model folder starts from it
    try:
        student = _build(spec.student, "/student", folder, spec, tok, labels)
    finally:
        if folder is not None:
            folder.close()
    if spec.student.init_from_teacher:
        assert teacher is not None  # validation: a teacher given by its outputs has no layers
        init_from_teacher(student, teacher, spec.student.teacher_layers)
    fit = fit_text(
        scratch, data.train, data.val, student, None, device, None, callbacks, phase="baseline"
    )
    assert fit.student is not None
    kept = ("epoch", "accuracy", "perplexity", "loss")
    return {
        **evaluate_text(fit.student, data.test, spec, device),
        "training_time_s": round(fit.train_time_s, 3),
        "history": [{k: h[k] for k in kept if k in h} for h in fit.history],
    }


@dataclass
class _Job:
    """What a text job trains with, built once by `_prepare`."""

    t_tok: TextTokenizer
    s_tok: TextTokenizer
    same: bool  # the tokenizers are identical
    t_data: TextData  # in the teacher's tokens
    data: TextData  # in the student's
    teacher: nn.Module | None
    student: nn.Module
    store: TeacherOutputs | None = None  # the teacher's stored top-k outputs, if named


def _checked_outputs(
    spec: JobSpec, store: TeacherOutputs, tok: TextTokenizer, seq_len: int
) -> TeacherOutputs:
    """The stored outputs a job names instead of a teacher, checked against its tokens."""
    meta, k = store.meta, spec.distillation.teacher_topk
    if meta["tokenizer"]["identity"] != tok.identity():
        raise DataError(
            f"the teacher outputs were made with another tokenizer "
            f"({meta['tokenizer'].get('source')}) than the student's ({tok.source}): "
            "token ids would mean other text"
        )
    if meta["seq_len"] != seq_len:
        raise DataError(
            f"the teacher outputs hold rows of {meta['seq_len']} tokens; dataset.seq_len is "
            f"{seq_len}: set it to {meta['seq_len']}"
        )
    if meta["vocab_size"] > tok.vocab_size:
        raise DataError(
            f"the teacher outputs' vocabulary ({meta['vocab_size']}) is larger than the "
            f"student's tokenizer's ({tok.vocab_size})"
        )
    if k is not None and k != store.k:
        raise DataError(f"distillation.teacher_topk is {k}; the stored outputs hold k = {store.k}")
    return store


def _prepare(spec: JobSpec, out_dir: Path) -> _Job:
    """Tokenizers, data (a streamed set's rows written under out_dir), teacher and
    student, each model folder read once."""
    t_folder, s_folder = _folder(spec.teacher), _folder(spec.student)
    outputs = None
    if spec.teacher_outputs is not None:
        outputs = open_store(Path(spec.teacher_outputs), out_dir)
    try:
        t_tok, s_tok = _tokenizers(spec, t_folder, s_folder)
        if outputs is not None and not spec.dataset.tokenizer and s_folder is None:
            t_tok = s_tok = outputs.tokenizer  # the outputs bring the tokenizer they used
        same = t_tok.identity() == s_tok.identity()
        _check_method(spec, same, t_tok, s_tok)
        seed = spec.training.seed
        t_data = load_text(spec.dataset, spec.task, t_tok, seed, out_dir)
        data = t_data if same else load_text(spec.dataset, spec.task, s_tok, seed, out_dir)
        teacher, store = None, None
        if outputs is not None:
            store = _checked_outputs(spec, outputs, s_tok, data.seq_len)
        elif spec.kind == "distill" and spec.teacher_endpoint is None:
            assert spec.teacher is not None
            teacher = _build(spec.teacher, "/teacher", t_folder, spec, t_tok, data.num_classes)
            teacher.eval()
        torch.manual_seed(seed)
        student = _build(spec.student, "/student", s_folder, spec, s_tok, data.num_classes)
    finally:
        for folder in (t_folder, s_folder):
            if folder is not None:
                folder.close()
    return _Job(t_tok, s_tok, same, t_data, data, teacher, student, store)


def _compare(
    spec: JobSpec, job: _Job, report: dict[str, Any], device: torch.device, cb: Callbacks
) -> None:
    """The teacher's measures, the agreement and the baseline, into the report."""
    teacher, data = job.teacher, job.data
    no_model = job.store is not None or spec.teacher_endpoint is not None
    if teacher is None and no_model and spec.baseline:  # outputs or a server, no model
        report["baseline"] = _baseline(spec, data, job.s_tok, data.num_classes, None, device, cb)
        report.update(kd_gain.compare(report["student"], report["baseline"]))
    if teacher is None:
        return
    if job.same:
        report["teacher"] = _measures(
            spec.teacher.arch if spec.teacher else None, teacher, data, spec, device
        )
        report["agreement"] = agreement(job.student, teacher, data.test, spec, device)
    else:  # its perplexity is over other tokens: not comparable
        report["teacher"] = {
            **evaluate_text(teacher, job.t_data.test, spec, device),
            **model_size(teacher),
        }
    if spec.baseline:
        report["baseline"] = _baseline(spec, data, job.s_tok, data.num_classes, teacher, device, cb)
        report.update(kd_gain.compare(report["student"], report["baseline"]))


def _outputs(
    spec: JobSpec,
    job: _Job,
    report: dict[str, Any],
    fit: TextFit,
    out_dir: Path,
) -> None:
    from kdcore.shipping.outputs import write_report
    from kdcore.shipping.plots import plot_curves
    from kdcore.shipping.tensorboard_events import write_events

    store = fit.store
    files = _save_student(job.student, job.s_tok, out_dir)
    built_here = job.store is None or spec.teacher_endpoint is not None  # not a named one
    if store is not None and built_here:  # a later job's teacher
        files["teacher_outputs"] = write_artifact(store, out_dir)
    asked = job.teacher is not None or spec.teacher_endpoint is not None
    if spec.kind == "distill" and spec.distillation.method == SEQUENCE_METHOD and asked:
        files["generations"] = out_dir / GENERATIONS
    if "onnx" in spec.export and spec.task == "text_classification":
        from kdcore.text.onnx_export import export_classifier

        files["onnx"], report["onnx_max_abs_error"] = export_classifier(
            job.student, job.data, out_dir
        )
    key = "accuracy" if spec.task == "text_classification" else "perplexity"
    teacher_quality = (report.get("teacher") or {}).get(key) if job.same else None
    files["curves"] = plot_curves(
        fit.history,
        out_dir / "curves.png",
        spec.name,
        key,
        teacher_quality,
        report.get("baseline", {}).get("history"),
    )
    files["tensorboard"] = write_events(report, out_dir)
    write_report(report, files, out_dir)


def run_text(
    spec: JobSpec,
    out_dir: Path,
    callbacks: Callbacks | None = None,
    resume_from: str | Path | None = None,
    keep_checkpoints: int | None = None,
) -> dict[str, Any]:
    """Run a text job; `keep_checkpoints` N keeps the newest N epochN.pt."""
    from kdcore.engine.device import pick_device
    from kdcore.engine.resume import load_resume

    cb = callbacks or Callbacks()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(spec.training.device)
    job = _prepare(spec, out_dir)
    report: dict[str, Any] = {}
    # before any step: a teacher near chance fails the job here (kdcore.text.preflight)
    preflight = text_teacher_preflight(
        spec,
        job.teacher,
        job.t_data.val,
        job.t_data.train,
        job.t_tok.vocab_size,
        job.t_data.num_classes,
        device,
    )
    if preflight is not None:
        report["teacher_preflight"] = preflight
    if job.teacher is not None and spec.student.init_from_teacher:
        report["initialised_from_teacher_layers"] = init_from_teacher(
            job.student, job.teacher, spec.student.teacher_layers
        )
    resume = load_resume(spec, resume_from)
    endpoint = spec.teacher_endpoint if spec.kind == "distill" else None
    if endpoint is not None and endpoint.logprobs is not None:  # the server's top-k, stored
        job.store = _scored_by_endpoint(endpoint, job, out_dir, cb)
    train_data, live_teacher = job.data, job.teacher
    asks = job.teacher is not None or spec.teacher_endpoint is not None
    if spec.kind == "distill" and asks and spec.distillation.method == SEQUENCE_METHOD:  # answers
        train_data = _sequence_data(
            spec, job.teacher, job.t_data, job.t_tok, job.s_tok, out_dir, device, cb
        )
        live_teacher = None  # the student learns from the teacher's text only
    fit = fit_text(
        spec,
        train_data.train,
        job.data.val,
        job.student,
        live_teacher,
        device,
        out_dir / "checkpoints",
        cb,
        resume=resume,
        topk_dir=out_dir / "teacher_topk",
        keep_checkpoints=keep_checkpoints,
        tokenizers=(job.t_tok, job.s_tok),
        store=job.store,
    )
    assert fit.student is not None
    job.student = fit.student  # whole again where it was sharded
    if fit.teacher is not None:
        job.teacher = fit.teacher
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        if spec.baseline and (job.teacher or job.store or spec.teacher_endpoint):  # collective
            _baseline(spec, job.data, job.s_tok, job.data.num_classes, job.teacher, device, cb)
        return {}
    store = fit.store
    if store is not None:
        report["teacher_outputs"] = store.describe()
    report.update(_report(spec, device, job.data, fit, job.t_tok, job.s_tok, job.same))
    report["gradient_checkpointing"] = fit.gradient_checkpointing
    report["sharding"] = fit.sharding  # fsdp: the ranks and the parameters each held
    report["student"] = _measures(spec.student.arch, job.student, job.data, spec, device)
    _compare(spec, job, report, device, cb)
    if spec.gate is not None:
        report["gate"] = evaluate_gate(spec.gate, report)
    _outputs(spec, job, report, fit, out_dir)
    shutil.rmtree(out_dir / ROWS_DIR, ignore_errors=True)  # a streamed set's rows: done
    return report


def _report(
    spec: JobSpec,
    device: torch.device,
    data: TextData,
    fit: TextFit,
    t_tok: TextTokenizer,
    s_tok: TextTokenizer,
    same: bool,
) -> dict[str, Any]:
    d = spec.distillation
    return {
        "name": spec.name,
        "kind": spec.kind,
        "task": spec.task,
        "method": d.method if spec.kind == "distill" else None,
        "device": device.type,
        "processes": spec.resources.ranks,  # data-parallel ranks, on all hosts
        "nodes": spec.resources.nodes,
        "precision": "bf16" if uses_bf16(device, spec.training.precision) else "fp32",
        "dataset": {
            "name": spec.dataset.name,
            "form": data.form,
            "seq_len": data.seq_len,
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
            "test_tokens": data.test.tokens(),
            "loading": data.loading,
        },
        "tokenizer": {
            "teacher": t_tok.source,
            "student": s_tok.source,
            "vocab_size": s_tok.vocab_size,
            "identical": same,
        },
        "epochs": spec.training.epochs,
        "steps": fit.steps,
        "training_time_s": round(fit.train_time_s, 3),
        "train_tokens_per_s": round(fit.tokens_per_s, 1),
        "teacher_topk_cache": fit.teacher_topk_cache,
        "uld_compared_fraction": fit.uld_compared_fraction,  # uld: share of positions compared
        "selection": spec.training.select if spec.selects_best else "last",
        "selected_epoch": fit.selected_epoch,  # whose weights the student holds
        "stopped_early_at_epoch": fit.stopped_at_epoch,  # None: ran every epoch
        "history": fit.history,
        "generation": (
            {
                "file": GENERATIONS,
                "temperature": d.generation_temperature,
                "max_tokens": d.generation_max_tokens,
            }
            if spec.kind == "distill" and d.method == SEQUENCE_METHOD
            else None
        ),
    }
