"""Text (causal LMs and text classifiers) as a task of the one training loop
(kdcore.engine.loop), as images are: batch order a function of (seed, epoch); a frozen
teacher in eval mode, or its top-k outputs read from a memory-mapped store built once
or given (kdcore.text.teacher_store). The loop keeps every RNG, the best epoch and
early stopping."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdcore.engine.callbacks import Callbacks
from kdcore.engine.loop import data_parallel, ranks, train_loop
from kdcore.engine.precision import autocast_for
from kdcore.engine.sharding import local_parameters, no_grad_for, per_rank, shard, unsharded
from kdcore.errors import DataError
from kdcore.losses import build_loss, task_loss
from kdcore.spec import JobSpec
from kdcore.text.cross_tokens import retokenise, uld_loss
from kdcore.text.evaluate import evaluate_text
from kdcore.text.losses import CROSS_TOKENIZER_METHOD, lm_loss, token_kd_loss
from kdcore.text.models import enable_checkpointing, is_checkpointing, layer_list
from kdcore.text.rows import TextRows, TextSplit
from kdcore.text.teacher_store import TeacherOutputs, build_store, open_store
from kdcore.text.tokens import TextTokenizer


@dataclass
class TextFit:
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    tokens_seen: int = 0
    steps: int = 0
    teacher_topk_cache: bool = False
    store: TeacherOutputs | None = None  # the teacher's top-k outputs it trained from
    uld_compared_fraction: float | None = None  # uld: predicted positions it compared
    selected_epoch: int | None = None  # whose weights the student holds at the end
    stopped_at_epoch: int | None = None  # early stopping ended the run after this epoch
    student: nn.Module | None = None  # the trained student, whole (a sharded one gathered)
    teacher: nn.Module | None = None  # a sharded live teacher, whole again
    gradient_checkpointing: bool = False
    sharding: dict[str, Any] | None = None  # fsdp: the ranks and what each one held

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / self.train_time_s if self.train_time_s > 0 else 0.0


def _teacher_side(
    spec: JobSpec,
    teacher: nn.Module | None,
    store: TeacherOutputs | None,
    train: TextRows,
    device: torch.device,
    topk_dir: Path | None,
    tokenizers: tuple[TextTokenizer, TextTokenizer] | None,
) -> tuple[Any, TeacherOutputs | None]:
    """The frozen teacher, the classifier's logit loss, and the teacher's top-k outputs
    (given, or built by rank 0 into topk_dir and read by the others), matched to the
    training rows."""
    if store is not None:
        store.match(train)
        return None, store
    if teacher is None:
        return None, None
    d = spec.distillation
    teacher.eval().requires_grad_(False)  # never trains, BatchNorm/dropout off
    builds_store = spec.task == "causal_lm" and bool(d.teacher_topk) and topk_dir is not None
    if d.sharding == "fsdp" and not builds_store:  # a live teacher: each rank keeps a shard
        shard(teacher, layer_list(teacher), device)
    else:
        teacher.to(device)
    logit_loss = None
    if spec.task == "text_classification":
        logit_loss = build_loss(d).to(device)
        assert train.labels is not None
        logit_loss.bind_train_labels(train.labels)
    if not builds_store:
        return logit_loss, None
    assert topk_dir is not None and d.teacher_topk is not None  # builds_store says so
    world, rank = ranks()
    if rank != 0:
        torch.distributed.barrier()  # rank 0 builds the store; the others read it
        store = open_store(topk_dir, topk_dir)
    else:
        assert tokenizers is not None, "the teacher's tokenizer names the store's tokens"
        store = build_store(topk_dir, teacher, train, d.teacher_topk, spec, device, tokenizers[0])
        if world > 1:
            torch.distributed.barrier()
    store.match(train)
    return logit_loss, store


ULD_CHECK_BATCHES = 4  # uld fails when its first batches compare no position at all


class TextTask:
    """A text job as the loop's task: rows of token ids (in memory or on disk, one
    shape, kdcore.text.rows), the loss against the targets, the teacher's logits
    (live or its top-k cache) or, for a classifier, its labels."""

    unit = "tokens"

    def __init__(
        self,
        spec: JobSpec,
        train: TextRows,
        val: TextRows,
        student: nn.Module,
        teacher: nn.Module | None,
        device: torch.device,
        topk_dir: Path | None,
        tokenizers: tuple[TextTokenizer, TextTokenizer] | None = None,
        store: TeacherOutputs | None = None,
    ):
        tr = spec.training
        self.tokenizers = tokenizers  # (the teacher's, the student's): ULD re-tokenises
        self.spec, self.train, self.val, self.student = spec, train, val, student
        self.teacher, self.device = teacher, device
        self.sharded = spec.distillation.sharding == "fsdp"
        # what builds a whole copy after training (fully_shard changes a module's class)
        self.student_class, self.teacher_class = type(student), type(teacher)
        if not self.sharded:
            student.to(device)  # a sharded one moves to the device a block at a time
        student.train()
        if tr.gradient_checkpointing:
            enable_checkpointing(student)
        world, rank = ranks()
        self.logit_loss, self.topk = _teacher_side(
            spec, teacher, store, train, device, topk_dir, tokenizers
        )
        self.extra: nn.Module | None = self.logit_loss
        # each rank takes its slice of every global batch; DDP or FSDP averages the
        # gradients. Sharded, batch_size is the global batch (the same steps on any
        # number of ranks: a checkpoint resumes on another count); in DDP, each rank's.
        self.world, self.rank = world, rank
        if self.sharded:
            self.batch_size = max(1, min(tr.batch_size, len(train)) // world)
            self.forward = shard(student, layer_list(student), device)
        else:
            self.batch_size = max(1, min(tr.batch_size, len(train) // world))
            self.forward = data_parallel(student, device)
        self.steps_per_epoch = max(1, len(train) // (self.batch_size * world))
        self.has_validation = len(val) > 0
        self.uld_batches = self.uld_compared = self.uld_predicted = 0

    def begin_epoch(self, epoch: int) -> None:
        if self.logit_loss is not None:
            self.logit_loss.set_epoch(epoch + 1)

    def batches(
        self, epoch: int, start: int
    ) -> Generator[tuple[int, tuple[TextSplit, Tensor]], None, None]:
        order = torch.randperm(
            len(self.train),
            generator=torch.Generator().manual_seed(self.spec.training.seed * 1_000_003 + epoch),
        )
        for i in range(start, self.steps_per_epoch):
            first = (i * self.world + self.rank) * self.batch_size  # this rank's slice
            idx = order[first : first + self.batch_size]
            yield i, (self.train.rows(idx), idx)

    def loss(self, batch: tuple[TextSplit, Tensor], step: int) -> tuple[dict[str, Tensor], int]:
        rows, idx = batch
        with autocast_for(self.device, self.spec.training.precision):
            terms = self._terms(rows, idx)
        return terms, int(rows.attention.sum())

    def _terms(self, rows: TextSplit, idx: Tensor) -> dict[str, Tensor]:
        spec, d, device = self.spec, self.spec.distillation, self.device
        ids, attention = rows.ids.to(device), rows.attention.to(device)
        logits = self.forward(input_ids=ids, attention_mask=attention).logits
        if spec.task == "text_classification":
            labels = rows.labels.to(device)  # type: ignore[union-attr]
            if self.teacher is None:
                return task_loss("classification", logits, labels)
            with torch.inference_mode():
                t_logits = self.teacher(input_ids=ids, attention_mask=attention).logits
            return self.logit_loss(logits, t_logits.clone(), labels, [], [])  # type: ignore[misc]
        targets = rows.targets.to(device)
        if d.method == CROSS_TOKENIZER_METHOD and self.teacher is not None:
            return self._uld_terms(rows, logits, ids, targets)
        teacher: Tensor | tuple[Tensor, Tensor] | None = None
        if self.topk is not None:
            teacher = self.topk(idx, device)
        elif self.teacher is not None:
            with no_grad_for(self.teacher):
                teacher = self.teacher(input_ids=ids, attention_mask=attention).logits.clone()
        if teacher is None:  # the teacher's own training, the baseline, sequence-level KD
            return lm_loss(logits, ids, targets)
        return token_kd_loss(
            d.method,
            logits,
            teacher,
            ids,
            targets,
            d.temperature,
            d.ce_weight,
            d.kd_weight,
            d.jsd_beta,
        )

    def _uld_terms(
        self, rows: TextSplit, logits: Tensor, ids: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        """ULD: the student's rows in the teacher's tokens, the teacher's logits there,
        and the distance between the sorted distributions at aligned positions."""
        assert self.tokenizers is not None and self.teacher is not None
        t_tok, s_tok = self.tokenizers
        config = getattr(self.teacher, "config", None)
        limit = getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None
        )
        batch = retokenise(rows, s_tok, t_tok, int(limit or 4 * rows.ids.shape[1]))
        self._count_compared(len(batch.student_positions), int(targets[:, 1:].sum()))
        with no_grad_for(self.teacher):
            t_logits = self.teacher(
                input_ids=batch.ids.to(self.device),
                attention_mask=batch.attention.to(self.device),
            ).logits.clone()
        d = self.spec.distillation
        ce = lm_loss(logits, ids, targets)["loss"]
        return uld_loss(logits, t_logits, batch, ce, d.temperature, d.ce_weight, d.kd_weight)

    def _count_compared(self, compared: int, predicted: int) -> None:
        """A ULD loss over no aligned position is zero: the student would train alone
        while the job reports distillation. Fail instead, and count the share."""
        self.uld_batches += 1
        self.uld_compared += compared
        self.uld_predicted += predicted
        if self.uld_batches == ULD_CHECK_BATCHES and self.uld_compared == 0:
            raise DataError(
                f"uld compared no position in its first {ULD_CHECK_BATCHES} batches: the "
                "teacher's and the student's tokens never start at the same character (or "
                "the teacher's context is too short for the rows); use method 'sequence'"
            )

    @property
    def uld_compared_fraction(self) -> float | None:
        if self.uld_predicted == 0:
            return None
        return round(self.uld_compared / self.uld_predicted, 4)

    def end_epoch(self) -> None:
        pass

    def whole(self) -> tuple[nn.Module, nn.Module | None, dict[str, Any] | None]:
        """The student and a live teacher as ordinary modules on the device, and what
        each rank held; a sharded pair is gathered (every rank calls this)."""
        if not self.sharded:
            return self.student, self.teacher, None
        held = {"student": per_rank(local_parameters(self.student))}
        student = _whole(self.student, self.student_class, self.device)
        teacher = self.teacher
        if teacher is not None and self.topk is None:  # it was sharded for the steps
            held["teacher"] = per_rank(local_parameters(teacher))
            teacher = _whole(teacher, self.teacher_class, self.device)
        return student, teacher, {"strategy": "fsdp", "ranks": self.world, "parameters": held}

    def evaluate(self) -> dict[str, float]:
        """On the validation rows, else the training rows (a set too small to split)."""
        held_out = self.val if len(self.val) else self.train
        return evaluate_text(self.student, held_out, self.spec, self.device)


def _whole(model: nn.Module, cls: Any, device: torch.device) -> nn.Module:
    """A Hugging Face model's whole copy: its class built from its config."""
    config = model.config  # type: ignore[union-attr]
    return unsharded(model, lambda: cls(config)).to(device)


def fit_text(
    spec: JobSpec,
    train: TextRows,
    val: TextRows,
    student: nn.Module,
    teacher: nn.Module | None,
    device: torch.device,
    checkpoint_dir: Path | None,
    callbacks: Callbacks | None = None,
    phase: str = "train",
    resume: dict[str, Any] | None = None,
    topk_dir: Path | None = None,
    log_every: int = 10,
    keep_checkpoints: int | None = None,
    tokenizers: tuple[TextTokenizer, TextTokenizer] | None = None,
    store: TeacherOutputs | None = None,
) -> TextFit:
    """Train `student` on `train` for spec.training.epochs (distilling `teacher` when
    given, or its stored top-k outputs), evaluating on `val` after each epoch; from
    `resume` (a checkpoint) if given."""
    task = TextTask(spec, train, val, student, teacher, device, topk_dir, tokenizers, store)
    done = train_loop(
        spec,
        task,
        device,
        checkpoint_dir,
        callbacks,
        phase=phase,
        resume=resume,
        log_every=log_every,
        keep_checkpoints=keep_checkpoints,
    )
    checkpointing = is_checkpointing(student)
    student, teacher, sharding = task.whole()
    student.eval()
    return TextFit(
        history=done.history,
        train_time_s=done.train_time_s,
        tokens_seen=done.seen,
        steps=done.steps,
        teacher_topk_cache=task.topk is not None,
        store=task.topk,
        uld_compared_fraction=task.uld_compared_fraction,
        selected_epoch=done.selected_epoch,
        stopped_at_epoch=done.stopped_at_epoch,
        student=student,
        teacher=teacher,
        gradient_checkpointing=checkpointing,
        sharding=sharding,
    )
