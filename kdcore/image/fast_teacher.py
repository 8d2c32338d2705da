"""The frozen teacher, made cheaper to run every step, and checked before it is used.

When augmentation is on, the teacher runs forward on every batch, and on a CPU that
forward costs as much as the student's whole step. Two transformations pay:

- **Conv-BN folding** (`fold_batchnorm`): in eval mode a BatchNorm after a convolution
  is an affine map of fixed statistics, so it folds into the convolution's weights and
  bias (torch.fx's `fuse`). Same function, fewer passes over memory; the outputs
  differ from the unfolded model only by float rounding.
- **Static int8 quantisation** (`quantize_int8`, CPU only): FX graph-mode quantisation
  with oneDNN's kernels (per-channel weights, activations calibrated on augmented
  training batches). About 3-4x faster than the fp32 forward on an AVX2 CPU without
  VNNI (docs/benchmarks.md), but it changes the soft targets, so it is used only if
  they stay within `INT8_MIN_AGREEMENT` and `INT8_MAX_KL` of the fp32 teacher's on
  other training batches (`fidelity`). Otherwise the job runs the folded fp32 teacher
  and the report says why.

Neither applies where the exact module is needed: a teacher whose features a method
taps (the hooks sit on its modules), a teacher that is not traceable by torch.fx (the
job keeps it as it is), or the precomputed teacher cache (computed once, so nothing to
gain). `distillation.teacher_precision` chooses: `auto` (int8 on a CPU when it passes
the check, else folded fp32), `fp32` (folded fp32) or `int8` (int8 even if the check
fails; the report carries the figures).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# the soft targets of an int8 teacher must stay this close to the fp32 teacher's
INT8_MIN_AGREEMENT = 0.99  # the share of samples with the same top-1 class
INT8_MAX_KL = 0.01  # mean KL(fp32 || int8) per sample, in nats, at the job's temperature
_ENGINES = ("onednn", "x86", "fbgemm")  # fastest first where all exist (oneDNN on AVX2)


@dataclass
class TeacherForward:
    """How the teacher ran during training: the report's `teacher_forward`."""

    precision: str  # "fp32" or "int8" (under bf16 autocast where the job uses it)
    folded_batchnorm: bool
    agreement: float | None = None  # int8 against fp32, on `checked_samples`
    kl: float | None = None
    checked_samples: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _traced(fn: Callable[[], nn.Module]) -> nn.Module | None:
    """Run an FX transformation; None when the model is not traceable (control flow on
    values, ONNX teachers, ...). The FX and quantisation APIs warn about their own
    deprecation schedules; those warnings are no news to the job's log."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except Exception:  # tracing fails in many ways, all of which mean "keep it as it is"
        return None


def fold_batchnorm(model: nn.Module) -> nn.Module | None:
    """A copy of the eval-mode `model` with each Conv-BN pair folded into one conv."""
    from torch.fx.experimental.optimization import fuse

    return _traced(lambda: fuse(copy.deepcopy(model).eval()))


class _Int8Teacher(nn.Module):
    """A quantised graph as the teacher: fp32 in, fp32 out, never under autocast (the
    trainer's bf16 autocast would hand its quantised kernels bf16 inputs)."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.graph(x.float())


def int8_engine() -> str | None:
    supported = torch.backends.quantized.supported_engines
    return next((e for e in _ENGINES if e in supported), None)


def quantize_int8(model: nn.Module, calibration: list[Tensor]) -> nn.Module | None:
    """A statically quantised copy of the eval-mode `model` (CPU), its activation ranges
    observed on the `calibration` batches; None where FX cannot quantise it."""
    engine = int8_engine()
    if engine is None or not calibration:
        return None
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    def build() -> nn.Module:
        torch.backends.quantized.engine = engine  # process-wide: one job per process
        mapping = get_default_qconfig_mapping(engine)
        prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, (calibration[0],))
        with torch.inference_mode():
            for batch in calibration:
                prepared(batch)
        return _Int8Teacher(convert_fx(prepared))

    return _traced(build)


@torch.inference_mode()
def fidelity(
    reference: nn.Module, candidate: nn.Module, batches: list[Tensor], temperature: float
) -> tuple[float, float]:
    """(top-1 agreement, mean KL(reference || candidate) at `temperature`) of the two
    models' soft targets on `batches`."""
    same, kl, n = 0.0, 0.0, 0
    for x in batches:
        ref = reference(x).float()
        cand = candidate(x).float()
        same += (ref.argmax(1) == cand.argmax(1)).sum().item()
        log_p = F.log_softmax(ref / temperature, dim=1)
        log_q = F.log_softmax(cand / temperature, dim=1)
        kl += F.kl_div(log_q, log_p, log_target=True, reduction="sum").item()
        n += len(x)
    return same / max(n, 1), kl / max(n, 1)


def faster_teacher(
    teacher: nn.Module,
    requested: str,
    device: torch.device,
    temperature: float,
    classification: bool,
    sample_batches: Callable[[int, int], list[Tensor]],
) -> tuple[nn.Module, TeacherForward]:
    """The module to run as the teacher each step, and how it runs.
    `sample_batches(count, offset)` gives `count` augmented training batches, the same
    ones for the same arguments (a resumed job rebuilds the same int8 teacher)."""
    folded = fold_batchnorm(teacher)
    fp32 = folded if folded is not None else teacher
    plan = TeacherForward("fp32", folded is not None)
    wants_int8 = requested == "int8" or (requested == "auto" and device.type == "cpu")
    if not wants_int8:
        return fp32, plan
    if device.type != "cpu" or not classification:
        if requested == "int8":
            plan.note = "int8 runs on the CPU and for classification only"
        return fp32, plan
    int8 = quantize_int8(teacher, sample_batches(8, 0))
    if int8 is None:
        plan.note = "the teacher cannot be quantised (not traceable by torch.fx, or no engine)"
        return fp32, plan
    checked = sample_batches(8, 8)
    plan.agreement, plan.kl = fidelity(fp32, int8, checked, temperature)
    plan.checked_samples = sum(len(b) for b in checked)
    close = plan.agreement >= INT8_MIN_AGREEMENT and plan.kl <= INT8_MAX_KL
    if close or requested == "int8":
        plan.precision = "int8"
        if not close:
            plan.note = "int8 was requested; its soft targets are outside the tolerance"
        return int8, plan
    plan.note = (
        f"int8 was not used: agreement {plan.agreement:.4f} (needs >= {INT8_MIN_AGREEMENT}), "
        f"KL {plan.kl:.4g} (needs <= {INT8_MAX_KL})"
    )
    return fp32, plan
