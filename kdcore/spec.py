"""The job spec: one schema for the `kdcore` CLI and the service
(docs/kdcore.md, "The job spec").

Pydantic gives typed parsing, JSON pointers for every bad field and a JSON schema for
the service's OpenAPI document. This module is a leaf: it imports neither torch nor
the registries, so the API and the CLI can load it cheaply. Registry names
(architectures, datasets, methods) are checked by kdcore.checks.validate.parse_spec.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from kdcore.tasks import TEXT_TASKS, Task

MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_CLASSES = 100_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EndpointSpec(_Strict):
    """A causal-LM teacher behind an OpenAI-compatible server (vLLM, TGI's OpenAI API,
    llama.cpp's server, a hosted API) that answers the job's prompts: sequence-level KD
    (kdcore.text.endpoint)."""

    url: str = Field(
        min_length=8,
        max_length=2048,
        description="the API's base URL, e.g. http://127.0.0.1:8000/v1 (http or https; "
        "no user:password in it)",
    )
    model: str = Field(min_length=1, max_length=200, description="the served model's name")
    api: Literal["completions", "chat"] = Field(
        default="completions",
        description="completions: POST {url}/completions with the prompt's text; chat: "
        "POST {url}/chat/completions with the prompt as the user's message",
    )
    api_key_file: str | None = Field(
        default=None,
        max_length=4096,
        description="a file on the machine that runs the job holding the API key (sent as "
        "a Bearer token; a mounted secret, mode 0600); the key itself never goes in a spec, "
        "and `kd submit` never uploads this file",
    )
    logprobs: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="token-level KD (methods forward_kl, reverse_kl, gkd) from the server's "
        "top-k log-probabilities at every position of each training row (completions API "
        "with echo and vLLM's return_tokens_as_token_ids; the student's tokenizer must be "
        "the server model's, checked). None: sequence-level KD from its answers",
    )
    credential: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="the service only: the name of an API key this tenant stored with "
        "PUT /v1/credentials/{name} (write-only, encrypted at rest); the worker hands it to "
        "the job as api_key_file. kdcore alone reads api_key_file",
    )
    address: str | None = Field(
        default=None,
        max_length=45,
        description="connect to this IP address instead of resolving the url's host (the "
        "Host header and the TLS name stay the url's, like curl --resolve); the service "
        "sets it to the address its egress check approved, and refuses it from a client",
    )
    max_requests: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="the job's request budget, retries included; spent, the job fails "
        "keeping every answer it has",
    )
    concurrency: int = Field(default=4, ge=1, le=64, description="requests in flight at once")
    timeout_s: float = Field(default=60.0, gt=0.0, le=600.0, description="per request")
    retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="retries of a request that timed out, could not connect, or got 429 "
        "or 5xx, with exponential backoff (Retry-After honoured up to 30 s)",
    )

    @field_validator("url")
    @classmethod
    def _plain_http_url(cls, url: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the endpoint's url is http:// or https:// with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("no credentials in the url: give the key in api_key_file")
        if parts.query or parts.fragment:
            raise ValueError("the endpoint's url is a base URL: no query or fragment")
        return url.rstrip("/")

    @field_validator("address")
    @classmethod
    def _ip_literal(cls, address: str | None) -> str | None:
        import ipaddress

        if address is not None:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError("address is an IPv4 or IPv6 address, no name") from None
        return address


class ModelSpec(_Strict):
    arch: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="A registry name (kdcore list models). None: a teacher whose checkpoint "
        "is an ONNX graph (students always name an arch).",
    )
    num_classes: int | None = Field(default=None, ge=1, le=MAX_CLASSES)
    in_channels: int | None = Field(default=None, ge=1, le=64)
    checkpoint: str | None = Field(
        default=None,
        max_length=4096,
        description="Weights: a path (CLI) or an uploaded file / artifact id (service). "
        "safetensors or a weights-only torch state dict (TorchScript is refused: "
        "loading it runs code); for a teacher without arch, an ONNX graph.",
    )

    outputs: str | None = Field(
        default=None,
        max_length=4096,
        description="causal_lm teachers only, instead of a model: the teacher's stored top-k "
        "outputs over the job's training rows (an earlier job's teacher_outputs.zip "
        "artifact, an uploaded file of that format, or a path); no teacher model is "
        "built (docs/language-models.md, Teacher outputs)",
    )
    endpoint: EndpointSpec | None = Field(
        default=None,
        description="causal_lm teachers only, instead of a model: an OpenAI-compatible "
        "server that answers the job's prompts (method sequence); docs/language-models.md",
    )
    config: dict[str, Any] | None = Field(
        default=None,
        description="hf:<Class> only: the transformers config (a JSON object, e.g. a small "
        "ViT); an uploaded model folder brings its own config.json",
    )
    reset_head: bool = Field(
        default=False,
        description="student: load `checkpoint` except the classifier head (the last "
        "Linear), which starts fresh, e.g. for ImageNet weights on another class count",
    )
    init_from_teacher: bool = Field(
        default=False,
        description="language models: the student starts from the teacher's embeddings, "
        "final norm and head and an evenly spaced subset of its layers (DistilBERT's "
        "initialisation); the widths must match",
    )
    teacher_layers: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="with init_from_teacher: the teacher layer (0-based) each student layer "
        "starts from, in order, e.g. [0, 3, 5]; none: evenly spaced (every other layer "
        "for half the depth), or for task embedding the first and last kept and the rest "
        "spread between them",
    )

    @model_validator(mode="after")
    def _layers_need_init(self) -> ModelSpec:
        if self.teacher_layers is not None and not self.init_from_teacher:
            raise ValueError("teacher_layers says where init_from_teacher takes layers from")
        return self

    @property
    def label(self) -> str:
        """What reports call the model: its arch, or "onnx" for a graph teacher."""
        return self.arch or "onnx"


class TeacherSpec(ModelSpec):
    """One of several teachers: its soft targets count with `weight` (normalised)."""

    weight: float = Field(default=1.0, gt=0.0, le=1000.0)


MAX_TEACHERS = 8


# kdcore.image.streaming (images), kdcore.text.rows (text)
STREAMABLE_DATASETS = frozenset({"imagefolder", "webdataset", "text"})


class DatasetSpec(_Strict):
    name: str = Field(
        validation_alias=AliasChoices("name", "builtin"),
        min_length=1,
        max_length=100,
        description="digits, fashion_mnist, synthetic, imagefolder or npz",
    )
    path: str | None = Field(
        default=None,
        max_length=4096,
        description="Archive (imagefolder), .npz file, or IDX folder (fashion_mnist); "
        "an uploaded file id in the service.",
    )
    image_size: int | None = Field(default=None, ge=4, le=1024)
    val_fraction: float = Field(default=0.1, ge=0.0, lt=0.9)
    test_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    max_samples: int | None = Field(default=None, ge=10, description="Use at most this many")
    # synthetic only
    num_samples: int = Field(default=1024, ge=10, le=1_000_000)
    num_classes: int = Field(
        default=10, ge=1, le=1000, description="classes, or targets if regression"
    )
    shape: list[int] = Field(default_factory=lambda: [1, 16, 16], min_length=1, max_length=3)
    regression: bool = False
    noise: float = Field(default=0.5, ge=0.0, le=100.0)
    mean: list[float] | None = Field(
        default=None,
        min_length=1,
        max_length=4,
        description="normalise with these per-channel means (with std) instead of the "
        "training split's, e.g. ImageNet's [0.485, 0.456, 0.406] for a teacher trained so",
    )
    std: list[float] | None = Field(default=None, min_length=1, max_length=4)
    # text (task causal_lm or text_classification)
    seq_len: int = Field(
        default=128, ge=8, le=8192, description="text: tokens per training sequence"
    )
    tokenizer: str | None = Field(
        default=None,
        max_length=4096,
        description="text: a tokenizer.json (the tokenizers library's format); default the "
        "teacher's folder's, else the student's, else bytes (257 tokens)",
    )
    streaming: bool | Literal["auto"] = Field(
        default="auto",
        description="imagefolder and webdataset sets: decode batches as they are needed "
        "(true) or the whole set into memory once (false); text sets: tokenise once into "
        "rows on disk read batch by batch (true) or hold the rows in memory (false); auto "
        "streams when the set held in memory would pass memory_budget_mb",
    )
    memory_budget_mb: int = Field(
        default=4096,
        ge=1,
        le=1 << 20,
        description="auto streaming: the most a set may take in memory at the in-memory "
        "path's peak (images: the files read whole plus the set decoded once as float32; "
        "text about 16 bytes per byte of text)",
    )

    def streams(self, decoded_bytes: int) -> bool:
        """Whether this set is streamed (kdcore.image.streaming) when it would take
        `decoded_bytes` decoded in memory: forced by `streaming`, else by the budget."""
        if self.name not in STREAMABLE_DATASETS or self.streaming is False:
            return False
        return self.streaming is True or decoded_bytes > self.memory_budget_mb * 1024**2

    @model_validator(mode="after")
    def _fractions(self) -> DatasetSpec:
        if (self.mean is None) != (self.std is None) or (
            self.mean is not None and self.std is not None and len(self.mean) != len(self.std)
        ):
            raise ValueError("give mean and std together, one value per channel each")
        if self.std is not None and not all(0 < v < 1e6 for v in self.std):
            raise ValueError("std values must be positive")
        if self.val_fraction + self.test_fraction >= 0.95:
            raise ValueError("val_fraction + test_fraction must leave data to train on")
        if self.name == "synthetic" and not self.regression and self.num_classes < 2:
            raise ValueError("synthetic classification needs num_classes >= 2")
        if any(d < 1 or d > 4096 for d in self.shape):
            raise ValueError("shape entries must be between 1 and 4096")
        return self


RESIZE_RATIO = 0.875  # the imagenet preset keeps images at side / 0.875 (224 -> 256)


def stored_side(side: int) -> int:
    """The side an image is kept at for the imagenet preset's crops of `side`."""
    return round(side / RESIZE_RATIO)


class AugmentSpec(_Strict):
    crop_padding: int = Field(default=0, ge=0, le=64)
    hflip: bool = False
    preset: Literal["none", "imagenet"] = Field(
        default="none",
        description="imagenet: training crops by RandomResizedCrop (crop_scale, crop_ratio) "
        "to dataset.image_size plus a horizontal flip, from images kept at image_size / "
        "0.875; evaluation by resize and center crop (kdcore.image.augment)",
    )
    crop_scale: tuple[float, float] = Field(
        default=(0.08, 1.0), description="imagenet: the crop's share of the image's area"
    )
    crop_ratio: tuple[float, float] = Field(
        default=(3 / 4, 4 / 3), description="imagenet: the crop's width / height"
    )

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.preset != "none"

    @model_validator(mode="after")
    def _one_kind_of_crop(self) -> AugmentSpec:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError("crop_scale must be 0 < low <= high <= 1")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi <= 10:
            raise ValueError("crop_ratio must be 0 < low <= high <= 10")
        if self.preset == "imagenet" and self.crop_padding:
            raise ValueError("preset imagenet crops by itself: leave crop_padding at 0")
        return self


# The references tune each method's weights (mdistiller, RepDistiller, the papers' code);
# a field the spec leaves unset takes its method's value here, else the field default.
# docs/kdcore.md "Methods" explains each row; /v1/capabilities and `kdcore list` show it.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "kd": {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9},
    "dkd": {"temperature": 4.0, "ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "warmup_epochs": 1.0},
    "dist": {
        "temperature": 4.0,
        "ce_weight": 1.0,
        "kd_weight": 2.0,
        "inter_weight": 1.0,
        "intra_weight": 1.0,
    },
    "at": {"ce_weight": 1.0, "kd_weight": 0.0, "feature_weight": 1000.0},
    "fitnet": {"ce_weight": 1.0, "kd_weight": 0.0, "feature_weight": 100.0, "regressor": "convreg"},
    "crd": {
        "ce_weight": 1.0,
        "kd_weight": 0.0,
        "feature_weight": 0.8,
        "crd_feature_dim": 128,
        "crd_negatives": 16384,
        "crd_temperature": 0.07,
        "crd_momentum": 0.5,
    },
    "mse": {"kd_weight": 0.9},
    # language models (kdcore.text): the divergence at T 1 mixed half and half with the
    # data's cross-entropy (DistillKit's alpha 0.5): from a student trained from scratch
    # reverse KL and JSD alone stall (docs/language-models.md has the figures). Reverse
    # KL seeks the teacher's modes and drops the rest of the text's mass: it keeps the
    # cross-entropy in full (MiniLLM keeps a language-modelling loss too); at half, it
    # lost to the student alone on 2 of 3 seeds, at full it won on all 3
    "forward_kl": {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
    "reverse_kl": {"temperature": 1.0, "ce_weight": 1.0, "kd_weight": 0.5},
    "gkd": {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5, "jsd_beta": 0.5},
    "sequence": {"ce_weight": 1.0, "kd_weight": 0.0},
    # ULD (Boizard et al. 2024): the data's cross-entropy in full, plus the distance
    # between the sorted distributions
    "uld": {"temperature": 1.0, "ce_weight": 1.0, "kd_weight": 1.0},
}
# Sun et al. standardise the logits that a softmax compares; feature methods have none
LOGIT_STANDARDIZED_METHODS = ("kd", "dkd", "dist")


class DistillationSpec(_Strict):
    method: str = Field(default="kd", max_length=50)
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    ce_weight: float = Field(
        default=0.1, ge=0.0, le=1000.0, description="default: per method (METHOD_DEFAULTS)"
    )
    kd_weight: float = Field(
        default=0.9, ge=0.0, le=1000.0, description="default: per method (METHOD_DEFAULTS)"
    )
    feature_weight: float = Field(
        default=1.0, ge=0.0, le=1e6, description="at, fitnet, crd: weight of the feature term"
    )
    alpha: float = Field(default=1.0, ge=0.0, le=1000.0, description="DKD target-class weight")
    beta: float = Field(default=8.0, ge=0.0, le=1000.0, description="DKD non-target weight")
    inter_weight: float = Field(
        default=1.0, ge=0.0, le=1000.0, description="DIST inter-class (per sample) relation"
    )
    intra_weight: float = Field(
        default=1.0, ge=0.0, le=1000.0, description="DIST intra-class (per class) relation"
    )
    warmup_epochs: float = Field(
        default=0.0,
        ge=0.0,
        le=MAX_EPOCHS,
        description="Scale the distillation terms by min(epoch / warmup_epochs, 1), epochs "
        "counted from 1 (mdistiller's DKD: 20 on CIFAR-100, 1 on ImageNet); 0: no ramp",
    )
    logit_standardization: bool = Field(
        default=False,
        description="z-score student and teacher logits before the softened softmax "
        "(Sun et al., CVPR 2024); kd, dkd and dist",
    )
    regressor: Literal["convreg", "conv1x1"] = Field(
        default="convreg",
        description="fitnet: conv+BN+ReLU with the kernel chosen from the shapes "
        "(RepDistiller's ConvReg), or a bias-free 1x1 conv",
    )
    crd_feature_dim: int = Field(default=128, ge=2, le=4096, description="crd: embedding size")
    crd_negatives: int = Field(
        default=16384, ge=1, le=65536, description="crd: negatives drawn per sample"
    )
    crd_temperature: float = Field(
        default=0.07, gt=0.0, le=10.0, description="crd: NCE temperature"
    )
    crd_momentum: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="crd: memory bank update momentum"
    )
    jsd_beta: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="gkd: the generalised Jensen-Shannon divergence's beta (Agarwal et al. "
        "2024): near 0 it tends to forward KL, near 1 to reverse KL",
    )
    generation_temperature: float = Field(
        default=1.0, ge=0.0, le=10.0, description="sequence: sampling temperature (0: greedy)"
    )
    generation_max_tokens: int = Field(
        default=64, ge=1, le=4096, description="sequence: tokens generated per prompt"
    )
    samples_per_prompt: int = Field(
        default=1,
        ge=1,
        le=16,
        description="sequence: completions the teacher writes for each prompt (each its own "
        "training row: more of the teacher's text where the job's own is scarce)",
    )
    prompt_tokens: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="sequence on plain text: each prompt is a training sequence's first "
        "tokens (default a quarter of seq_len); JSONL prompts are used as they are",
    )
    student_layers: list[str] = Field(default_factory=list, max_length=16)
    teacher_layers: list[str] = Field(default_factory=list, max_length=16)
    cache_teacher: bool | Literal["auto"] = Field(
        default="auto",
        description="Precompute teacher outputs once. Needs deterministic inputs (no augment).",
    )
    teacher_topk: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="With a teacher cache folder: keep each sample's k largest teacher "
        "logits and one value for the rest (kdcore.image.teacher_cache); default: every class "
        "up to 128 classes, else 32",
    )
    teacher_precision: Literal["auto", "fp32", "int8"] = Field(
        default="auto",
        description="How the teacher runs each step when it is not cached "
        "(kdcore.image.fast_teacher): "
        "auto: int8 on a CPU if its soft targets pass the fidelity check, else fp32; "
        "fp32: fp32 with BatchNorm folded into the convolutions; int8: int8 regardless",
    )
    sharding: Literal["none", "fsdp"] = Field(
        default="none",
        description="causal_lm: fsdp splits the student, and a teacher that runs each "
        "step, across resources.gpus ranks (FSDP2's fully_shard per layer): each rank "
        "holds 1/N of the weights, gradients and optimizer state. training.batch_size is "
        "then the global batch, split across the ranks, and a checkpoint resumes on "
        "another number of ranks",
    )
    teacher_check: Literal["fail", "warn"] = Field(
        default="fail",
        description="Before training, the teacher is scored on up to 512 validation "
        "samples (report.teacher_preflight). Near chance (accuracy under 1.5x chance, or "
        "an MSE above the targets' variance) the job fails at once naming the likely "
        "causes; warn: record it and go on",
    )

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            method = data.get("method", "kd")
            defaults = METHOD_DEFAULTS.get(method, {}) if isinstance(method, str) else {}
            data = {**defaults, **data}
        return data

    @model_validator(mode="after")
    def _options_fit_the_method(self) -> DistillationSpec:
        if self.logit_standardization and self.method not in LOGIT_STANDARDIZED_METHODS:
            raise ValueError(
                "logit_standardization applies to methods "
                f"{', '.join(LOGIT_STANDARDIZED_METHODS)}, not {self.method!r}"
            )
        return self


class EarlyStoppingSpec(_Strict):
    patience: int = Field(
        ge=1, le=MAX_EPOCHS, description="stop after this many epochs without improvement"
    )
    min_delta: float = Field(
        default=0.0,
        ge=0.0,
        le=1e6,
        description="an improvement is a validation metric better than the best by more than "
        "this (accuracy: a fraction, 0.001 = 0.1 point; regression: MSE)",
    )


class GateSpec(_Strict):
    """Limits a student must meet to be called ready (kdcore.shipping.readiness). Each limit set
    is checked on the test split; the job succeeds either way and reports the verdict."""

    max_accuracy_drop: float | None = Field(
        default=None, ge=0.0, le=1.0, description="teacher accuracy - student accuracy"
    )
    max_class_drop: float | None = Field(
        default=None, ge=0.0, le=1.0, description="the largest per-class accuracy drop"
    )
    max_latency_ms_batch1: float | None = Field(
        default=None, gt=0.0, le=1e6, description="the student's CPU latency at batch 1"
    )
    min_agreement: float | None = Field(
        default=None, ge=0.0, le=1.0, description="share of test samples where both agree"
    )
    min_kd_gain: float | None = Field(
        default=None,
        ge=-100.0,
        le=100.0,
        description="the least KD gain over the student trained without a teacher (needs "
        "baseline: true), in the report's kd_gain_unit: percentage points of accuracy, or "
        "baseline/student perplexity (or MSE) ratio",
    )

    def teacher_checks(self) -> list[str]:
        """The limits that compare the student with a teacher's classes."""
        names = ("max_accuracy_drop", "max_class_drop", "min_agreement")
        return [n for n in names if getattr(self, n) is not None]


MAX_TRIALS = 64
SWEEP_ROOTS = ("distillation", "training", "student", "augment")  # what a trial may vary
SweepValue = str | int | float | bool


class SweepConstraints(_Strict):
    """A trial beyond a limit is reported and never selected."""

    max_latency_ms_batch1: float | None = Field(
        default=None, gt=0.0, le=1e6, description="the student's CPU latency at batch 1"
    )
    max_parameters: int | None = Field(default=None, ge=1, le=10**12)


class SweepSpec(_Strict):
    """Several full trainings of the job with some fields varied; the job's outputs are
    the best trial's (kdcore.runs.sweep)."""

    parameters: dict[str, list[SweepValue]] = Field(
        min_length=1,
        max_length=8,
        description="dotted spec fields under distillation, training, student or augment, "
        "each with the values to try, e.g. {'distillation.temperature': [2, 4, 8]}",
    )
    strategy: Literal["grid", "random", "halving"] = Field(
        default="grid",
        description="grid: every combination; random: max_trials of them, drawn with "
        "training.seed; halving: successive halving (a third go on, each rung with 3x "
        "the epochs, the last with training.epochs)",
    )
    max_trials: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TRIALS,
        description=f"grid: refused if it has more combinations; random/halving: how many "
        f"configurations to start with (default: all, at most {MAX_TRIALS})",
    )
    metric: Literal["accuracy", "mse"] | None = Field(
        default=None,
        description="what ranks trials, on the validation split (the test split when "
        "val_fraction is 0); default: accuracy, mse for regression",
    )
    constraints: SweepConstraints = Field(default_factory=SweepConstraints)

    @field_validator("parameters")
    @classmethod
    def _fields_a_trial_may_vary(
        cls, parameters: dict[str, list[SweepValue]]
    ) -> dict[str, list[SweepValue]]:
        for key, values in parameters.items():
            parts = key.split(".")
            if len(parts) < 2 or parts[0] not in SWEEP_ROOTS or not all(parts):
                raise ValueError(f"{key!r}: a dotted field under {', '.join(SWEEP_ROOTS)}")
            if parts[-1] in ("checkpoint", "path", "device"):
                raise ValueError(f"{key!r}: files and devices are not swept")
            if not 1 <= len(values) <= 32:
                raise ValueError(f"{key!r}: between 1 and 32 values")
        return parameters


class TrackingSpec(_Strict):
    mlflow: bool = Field(
        default=True,
        description="service only: log this job to the operator's MLflow server "
        "(KD_MLFLOW_URI) when one is configured; false opts out",
    )


class TrainingSpec(_Strict):
    epochs: int = Field(default=10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(default=64, ge=1, le=MAX_BATCH)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0.0, le=100.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0.0, le=1.0)
    schedule: Literal["cosine", "step", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(default=0.0, ge=0.0, le=MAX_EPOCHS)
    step_size: int = Field(default=30, ge=1, description="step schedule: epochs per decay")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0, description="step schedule: decay factor")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    eval_batch_size: int = Field(default=512, ge=1, le=MAX_BATCH)
    select: Literal["best", "last"] = Field(
        default="best",
        description="the weights a job keeps: those of the epoch with the best validation "
        "metric (accuracy; MSE for regression, perplexity for causal_lm), or the last "
        "epoch's. Default best: it costs nothing and a late epoch that got worse is not "
        "what anyone wants to ship. Without "
        "a validation split the default keeps the last (selecting on the test split "
        "would leak it)",
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None,
        description="stop when the validation metric (as for select) stops improving, for "
        "every task (needs a val split)",
    )
    quantization: Literal["none", "int8"] = Field(
        default="none",
        description="int8: after training, fine-tune with fake int8 quantisation under the "
        "same distillation loss (kdcore.image.qat) and export that as student.int8.onnx; the "
        "report's quantization compares it with post-training int8",
    )
    qat_epochs: int | None = Field(
        default=None,
        ge=1,
        le=MAX_EPOCHS,
        description="epochs of the quantisation-aware fine-tune; default a fifth of epochs",
    )
    channels_last: bool | Literal["auto"] = Field(
        default="auto",
        description="NHWC tensors for the models and batches; auto: on for image inputs "
        "(oneDNN and cuDNN convolutions run faster in it, fp32 included)",
    )
    data_workers: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="streamed datasets: decoding processes; default one per core (at most "
        "8), 0 decodes in the training process",
    )
    decode: Literal["auto", "workers", "device"] = Field(
        default="auto",
        description="streamed datasets: where JPEGs are decoded; device: on the training "
        "device (nvJPEG on CUDA), auto: device on CUDA, else the workers",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="language models: recompute activations in the backward pass "
        "(transformers' gradient checkpointing): less memory, about a third more time",
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the student's training forward (off: it pays only on "
        "long GPU runs, after a compile of tens of seconds)",
    )

    @model_validator(mode="after")
    def _finite(self) -> TrainingSpec:
        for field in ("lr", "momentum", "weight_decay", "gamma", "warmup_epochs"):
            if not math.isfinite(getattr(self, field)):
                raise ValueError(f"{field} must be a finite number")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError("warmup_epochs must be smaller than epochs")
        return self


ExportFormat = Literal["safetensors", "torchscript", "onnx", "onnx_fp16", "onnx_int8"]
Kind = Literal["distill", "train"]
# the one list of each, for the CLI, /v1/capabilities and the dashboard
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
KINDS: tuple[str, ...] = get_args(Kind)
TASKS: tuple[str, ...] = get_args(Task)


MAX_NODES = 64  # hosts of one job


class ResourcesSpec(_Strict):
    """What the job needs: `gpus` is honoured by kdcore itself; `gpu_type` by the
    service's routing only."""

    gpu_type: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$",
        description="Run only on workers of this pool, e.g. 'h200' (queue kd.h200); "
        "none: any worker of the default pool (queue kd)",
    )
    gpus: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Data-parallel processes for one job (DistributedDataParallel on one "
        "host: one per GPU, or gloo processes on the CPU); training.batch_size is per "
        "process (with distillation.sharding fsdp: the global batch). The service routes "
        "N > 1 to queue <pool>.x<N>.",
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=MAX_NODES,
        description="Hosts for one job: M > 1 runs M x gpus ranks on M workers of the "
        "job's pool at once (torch.distributed.elastic agents, c10d rendezvous), claimed "
        "all or nothing; training.batch_size is per rank (docs/multi-host.md)",
    )

    @property
    def ranks(self) -> int:
        """Data-parallel processes in all: gpus on each of nodes hosts."""
        return self.gpus * self.nodes


class JobSpec(_Strict):
    name: str = Field(default="job", min_length=1, max_length=200)
    kind: Kind = "distill"
    task: Task = "classification"
    teacher: ModelSpec | None = None
    teachers: list[TeacherSpec] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TEACHERS,
        description="Several teachers instead of `teacher`: the soft targets are the "
        "weighted mean of their softened probabilities (of their outputs in regression). "
        "Logit methods only (kd, dkd, dist, mse).",
    )
    student: ModelSpec
    dataset: DatasetSpec
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    distillation: DistillationSpec = Field(default_factory=DistillationSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    checkpoint_every_epochs: int = Field(default=1, ge=1, le=MAX_EPOCHS)
    export: list[ExportFormat] = Field(default_factory=lambda: list[ExportFormat](["safetensors"]))
    baseline: bool = Field(
        default=False, description="Also train the student from scratch and report the KD gain"
    )
    webhook_url: str | None = Field(default=None, max_length=2048)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    sweep: SweepSpec | None = Field(
        default=None,
        description="Train several trials and keep the best (kdcore.runs.sweep); the report's "
        "sweep lists every trial, the best and the Pareto front of quality against latency",
    )
    gate: GateSpec | None = Field(
        default=None,
        description="Readiness limits checked on the test split; the report's gate says "
        "passed true/false check by check (the job succeeds either way)",
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    priority: int = Field(
        default=0,
        ge=0,
        le=9,
        description="0 (default) to 9 (most urgent): within its pool a higher priority "
        "job is started before older lower-priority ones (service only)",
    )
    max_runtime_s: int | None = Field(
        default=None,
        ge=1,
        le=30 * 24 * 3600,
        description="The service stops the run and fails the job after this many seconds "
        "of training (per attempt); the kdcore CLI ignores it.",
    )

    def teacher_models(self) -> list[tuple[str, ModelSpec]]:
        """(JSON pointer, spec) of each teacher model: `teacher`, or each of `teachers`
        (a teacher given by its stored outputs alone is no model: `teacher_outputs`)."""
        if self.teachers is not None:
            return [(f"/teachers/{i}", t) for i, t in enumerate(self.teachers)]
        if self.teacher is None or self.teacher_outputs is not None:
            return []
        if self.teacher.endpoint is not None:  # a server's answers, no model here
            return []
        return [("/teacher", self.teacher)]

    @property
    def teacher_endpoint(self) -> EndpointSpec | None:
        """The server that answers the job's prompts, when the teacher is one."""
        return self.teacher.endpoint if self.teacher is not None else None

    @property
    def teacher_outputs(self) -> str | None:
        """The teacher's stored top-k outputs, when the job names them instead of a model."""
        return self.teacher.outputs if self.teacher is not None else None

    def model_roles(self) -> list[tuple[str, ModelSpec]]:
        """(JSON pointer, spec) of every model the job builds: teachers, then the student."""
        return [*self.teacher_models(), ("/student", self.student)]

    @property
    def student_arch(self) -> str:
        return self.student.arch or ""  # never empty: _student_names_an_arch

    @field_validator("student")
    @classmethod
    def _student_names_an_arch(cls, student: ModelSpec) -> ModelSpec:
        if student.arch is None:
            raise ValueError("the student needs an arch (only a teacher may be an ONNX graph)")
        if student.outputs is not None or student.endpoint is not None:
            raise ValueError("outputs and endpoints are a teacher's: the student is a model")
        if student.reset_head and student.checkpoint is None:
            raise ValueError("reset_head needs a checkpoint to start from")
        return student

    @field_validator("teacher", "teachers")
    @classmethod
    def _teachers_name_something(cls, value: Any) -> Any:
        for teacher in value if isinstance(value, list) else [value]:
            if teacher is not None and (teacher.outputs or teacher.endpoint):
                given = "its outputs" if teacher.outputs else "an endpoint"
                if isinstance(value, list):
                    raise ValueError(f"teachers are models; {given} stands for one teacher")
                fields = ("arch", "checkpoint", "config", "outputs", "endpoint")
                named = [f for f in fields if getattr(teacher, f)]
                if len(named) > 1:
                    raise ValueError(
                        f"a teacher given by {given} is no model: give one of {', '.join(named)}"
                    )
                continue
            if teacher is not None and teacher.arch is None and teacher.checkpoint is None:
                raise ValueError(
                    "a teacher needs an arch, an ONNX graph as its checkpoint, or "
                    "(causal_lm) its stored outputs"
                )
            if teacher is not None and teacher.reset_head:
                raise ValueError("reset_head is for the student: a teacher is used as trained")
        return value

    @field_validator("name")
    @classmethod
    def _printable_name(cls, name: str) -> str:
        # names appear in logs, terminals and the dashboard: no NUL, newline or escape
        if any(ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029" for c in name):
            raise ValueError("name may not contain control characters (NUL, newlines, ESC...)")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.teacher is not None and self.teachers is not None:
            raise ValueError("give either teacher or teachers, not both")
        has_teacher = self.teacher is not None or self.teachers is not None
        if self.kind == "distill" and not has_teacher:
            raise ValueError("a distill job needs a teacher")
        if self.kind == "train" and has_teacher:
            raise ValueError("a train job has no teacher; put the model under 'student'")
        if self.gate is not None:
            self._gate_fits(self.gate)
        if "safetensors" not in self.export:
            self.export = ["safetensors", *self.export]
        if self.training.quantization == "int8":
            self._quantization_fits()
        if {"onnx_fp16", "onnx_int8"} & set(self.export) and "onnx" not in self.export:
            self.export = [*self.export, "onnx"]  # the variants are derived from student.onnx
        if self.augment.preset == "imagenet" and self.dataset.image_size is None:
            raise ValueError("augment.preset imagenet needs dataset.image_size (the crop side)")
        if self.dataset.val_fraction == 0:  # the held-out metric would be the test split's
            if "select" in self.training.model_fields_set and self.training.select == "best":
                raise ValueError("training.select 'best' needs a validation split (val_fraction)")
            if self.training.early_stopping is not None:
                raise ValueError("training.early_stopping needs a validation split (val_fraction)")
        return self

    def _gate_fits(self, gate: GateSpec) -> None:
        """Each limit set is one this job can measure."""
        teacher_checks = gate.teacher_checks()
        if teacher_checks and (self.kind != "distill" or self.task != "classification"):
            names = ", ".join(teacher_checks)
            raise ValueError(f"gate {names}: a classification distillation's checks")
        if gate.min_kd_gain is not None and (self.kind != "distill" or not self.baseline):
            raise ValueError(
                "gate min_kd_gain compares with a baseline: a distill job with baseline: true"
            )
        if gate.max_latency_ms_batch1 is not None and self.task in TEXT_TASKS:
            raise ValueError("gate max_latency_ms_batch1: a text job measures tokens/s")

    def _quantization_fits(self) -> None:
        if self.resources.gpus > 1:
            raise ValueError("training.quantization int8 runs in one process: gpus 1")
        logit_methods = (*LOGIT_STANDARDIZED_METHODS, "mse")
        if self.kind == "distill" and self.distillation.method not in logit_methods:
            raise ValueError(
                "training.quantization int8 works with the logit methods "
                f"({', '.join(logit_methods)}), not {self.distillation.method}"
            )
        if "onnx_int8" not in self.export:
            self.export = [*self.export, "onnx_int8"]  # what the fine-tune is for

    @property
    def selects_best(self) -> bool:
        """Keep the best validation epoch's weights (a validation split exists)."""
        return self.training.select == "best" and self.dataset.val_fraction > 0


def model_entries(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(JSON pointer, model dict) of every model named in a spec *dict* (stored or
    about to be sent; not parsed): the dicts themselves, so callers may rewrite
    their checkpoints in place."""
    entries = [(f"/{r}", spec[r]) for r in ("teacher", "student") if isinstance(spec.get(r), dict)]
    teachers = spec.get("teachers")
    if isinstance(teachers, list):
        entries += [(f"/teachers/{i}", t) for i, t in enumerate(teachers) if isinstance(t, dict)]
    return entries
