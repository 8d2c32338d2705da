"""The teacher's outputs for each training step, as cheaply as they can be had: from the
whole split's cache when inputs are deterministic, from the on-disk store of an earlier
job (kdcore.image.teacher_cache), or from a forward pass of the folded or int8 teacher
(kdcore.image.fast_teacher)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdcore.engine.precision import predict, uses_bf16
from kdcore.errors import SpecError
from kdcore.image.augment import augment_batch
from kdcore.image.data import Split
from kdcore.image.fast_teacher import TeacherForward, faster_teacher
from kdcore.image.features import FeatureTap
from kdcore.image.streaming import input_digest
from kdcore.image.teacher_cache import (
    EpochLabels,
    TeacherStore,
    cache_key,
    compress,
    expand,
    model_digest,
    soft_label_k,
)
from kdcore.losses import DistillLoss
from kdcore.spec import JobSpec


def sample_batches(
    train: Split, spec: JobSpec, channels_last: bool, device: torch.device
) -> Callable[[int, int], list[Tensor]]:
    """Augmented training batches for calibrating and checking a faster teacher: batch
    `offset + i` of a fixed seeded order, augmented by its own seeded generator, so the
    same arguments give the same batches (and a resumed job the same int8 teacher).
    The global RNG is not touched."""
    size = max(2, min(spec.training.batch_size, 64, len(train)))
    order = torch.randperm(
        len(train), generator=torch.Generator().manual_seed(spec.training.seed * 5_003 + 17)
    )

    def sample(count: int, offset: int) -> list[Tensor]:
        batches = []
        for i in range(offset, offset + count):
            start = (i * size) % max(1, len(train) - size + 1)
            x = train.x[order[start : start + size].to(train.x.device)].to(device)
            if spec.augment.enabled and x.ndim == 4:
                gen = torch.Generator().manual_seed(1_000 + i)
                x = augment_batch(x, spec.augment, gen, spec.dataset.image_size)
            batches.append(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        return batches

    return sample


@dataclass
class Batching:
    """How the steps cut the training split, which decides each step's crops."""

    batch_size: int  # per rank
    steps_per_epoch: int
    world: int
    rank: int
    classes: int


class TeacherOutputs:
    """Teacher outputs for a batch: from a precomputed cache when inputs are
    deterministic, else a forward pass under inference_mode, of the folded or int8
    teacher where that passes (kdcore.image.fast_teacher). With a `store_root`, a
    classification job keeps those outputs on disk for later jobs
    (kdcore.image.teacher_cache): the whole split's, or each epoch's crop soft labels."""

    def __init__(
        self,
        teacher: nn.Module,
        loss_fn: DistillLoss,
        spec: JobSpec,
        train: Split,
        device: torch.device,
        tap: FeatureTap | None,
        channels_last: bool,
        batches: Batching,
        store_root: Path | None = None,
    ):
        self.model, self.tap, self.device = teacher, tap, device
        self.forward: TeacherForward | None = None
        self.store: TeacherStore | None = None
        self.batches = batches
        self.epoch: EpochLabels | None = None
        # kept on disk: classification logits (features and regression outputs are not)
        root = store_root if spec.task == "classification" and tap is None else None
        want = spec.distillation.cache_teacher
        can = not spec.augment.enabled and not loss_fn.needs_features
        if want is True and not can:
            why = "augment is on" if spec.augment.enabled else "the method needs teacher features"
            raise SpecError([("/distillation/cache_teacher", f"cannot cache the teacher: {why}")])
        self.cache: Tensor | None = None
        if want is not False and can:
            if root is not None:
                self.store = self._open(root, teacher, spec, train, "full", channels_last)
                self.cache = self._whole_split(teacher, spec, train).to(device)
            else:
                self.cache = predict(
                    teacher, train.x, spec.training.eval_batch_size, device, spec.training.precision
                )
        elif tap is None:  # run every step; taps need the original modules
            self.model, self.forward = faster_teacher(
                teacher,
                spec.distillation.teacher_precision,
                device,
                spec.distillation.temperature,
                spec.task == "classification",
                sample_batches(train, spec, channels_last, device),
            )
            if channels_last and self.forward.precision == "fp32":
                self.model.to(memory_format=torch.channels_last)  # folding made new weights
            if root is not None:
                self.store = self._open(root, teacher, spec, train, "crops", channels_last)

    def _open(
        self,
        root: Path,
        teacher: nn.Module,
        spec: JobSpec,
        train: Split,
        form: str,
        channels_last: bool,
    ) -> TeacherStore:
        """The store of this job's key: everything the teacher's outputs depend on."""
        classes = self.batches.classes
        k = soft_label_k(classes, spec.distillation.teacher_topk)
        tr, d = spec.training, spec.distillation
        parts: dict[str, Any] = {
            "form": form,
            "teacher": model_digest(teacher),
            # what is no tensor: an ensemble's weights, each member's arch (not its path)
            "teachers": [
                {k: v for k, v in m.model_dump(mode="json").items() if k != "checkpoint"}
                for _, m in spec.teacher_models()
            ],
            # how it ran, not the check's figures (measured at T): the int8 plan is
            # calibrated the same whatever T, so a sweep over T shares the outputs
            "forward": (
                {"precision": self.forward.precision, "folded": self.forward.folded_batchnorm}
                if self.forward
                else None
            ),
            "x": input_digest(train.x),
            "classes": classes,
            "k": k,
            # T shapes the stored values only through the rest's value (k < classes)
            # and an ensemble's combined output
            "temperature": (d.temperature if k < classes or spec.teachers is not None else None),
            "precision": uses_bf16(self.device, tr.precision),
            "device": self.device.type,
            "channels_last": channels_last,
        }
        if form == "crops":  # the crops of step s come from (seed, epoch, s, batching)
            parts.update(
                augment=spec.augment.model_dump(mode="json"),
                seed=tr.seed,
                samples=len(train),
                batches=self.batches.__dict__,
            )
        return TeacherStore(root, cache_key(parts), classes, k, d.temperature)

    def _whole_split(self, teacher: nn.Module, spec: JobSpec, train: Split) -> Tensor:
        assert self.store is not None
        cached = self.store.read("full")
        if cached is not None and cached[0].shape[0] == len(train):
            self.store.hits += 1
            return expand(cached[0], cached[1], self.store.classes)
        tr = spec.training
        logits = predict(teacher, train.x, tr.eval_batch_size, self.device, tr.precision)
        values, indices = compress(logits, self.store.k, self.store.temperature)
        self.store.write("full", values, indices)
        self.store.computed += 1
        return expand(values, indices, self.store.classes)

    def end_epoch(self) -> None:
        if self.epoch is not None:
            self.epoch.finish()
            self.epoch = None

    def _labels(self, epoch: int) -> EpochLabels:
        assert self.store is not None
        if self.epoch is None or self.epoch.name != f"epoch{epoch + 1:04d}":
            self.end_epoch()
            b = self.batches
            self.epoch = EpochLabels(self.store, epoch + 1, b.steps_per_epoch, b.batch_size)
        return self.epoch

    def __call__(self, x: Tensor, idx: Tensor, epoch: int, i: int) -> tuple[Tensor, list[Tensor]]:
        if self.cache is not None:
            return self.cache[idx.to(self.cache.device)], []
        labels = self._labels(epoch) if self.store is not None else None
        if labels is not None:
            stored = labels.get(i)
            if stored is not None:  # this crop's soft labels from an earlier job
                return stored.to(x.device), []
        with torch.inference_mode():
            out = self.model(x)
            feats = self.tap.collect() if self.tap else []
        if labels is not None:  # what a later job will read: use exactly that here too
            return labels.put(i, out).to(x.device), []
        # inference tensors cannot be saved for backward; clone them into normal tensors
        return out.clone(), [f.clone() for f in feats]
