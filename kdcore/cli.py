"""`kdcore` command line: run a job spec locally, export a student, list the registries.

Exit codes: 0 done, 1 the run failed, 2 bad input (spec, files), 130 interrupted.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import kdcore
from kdcore.engine.callbacks import Callbacks, Progress
from kdcore.errors import Cancelled, KDError, SpecError
from kdcore.spec import EXPORT_FORMATS


class ProgressPrinter(Callbacks):
    """A live one-line bar on a terminal; plain log lines (at most one per second,
    plus one per epoch) when output is a file or a pipe."""

    def __init__(self, stream: TextIO = sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self._last = 0.0

    def on_step(self, p: Progress) -> None:
        now = time.monotonic()
        if not self.tty and now - self._last < 1.0:
            return
        self._last = now
        frac = p.step / max(1, p.total_steps)
        loss = p.losses.get("loss", float("nan"))
        eta = f"{int(p.eta_s // 60):02d}:{int(p.eta_s % 60):02d}" if p.eta_s is not None else "--"
        rate = (
            f"{p.tokens_per_s:.0f} tokens/s"
            if p.tokens_per_s is not None
            else f"{p.images_per_s:.0f} img/s"
        )
        text = (
            f"{p.phase} epoch {p.epoch}/{p.epochs} step {p.step}/{p.total_steps} "
            f"loss {loss:.4f} lr {p.lr:.4g} {rate} ETA {eta}"
            if p.stage == "training"
            else f"generating: the teacher answered {p.step}/{p.total_steps}"
        )
        if self.tty:
            bar = "#" * int(frac * 20)
            self.stream.write(f"\r[{bar:<20}] {text}\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def on_epoch_end(self, p: Progress) -> None:
        shown = " ".join(f"{k} {v:.4f}" for k, v in p.metrics.items() if k != "epoch_time_s")
        prefix = "\r\x1b[K" if self.tty else ""
        self.stream.write(f"{prefix}{p.phase} epoch {p.epoch}/{p.epochs} done: {shown}\n")
        self.stream.flush()


def _load_spec_file(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise KDError(f"spec file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise KDError(f"spec file {path} is not valid JSON: {exc}") from None


def _count(text: str) -> int:
    """A whole number >= 0 (argparse type)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _run(args: argparse.Namespace, kind: str) -> int:
    from kdcore.checks.input_files import spec_file_problems
    from kdcore.checks.validate import parse_spec
    from kdcore.runs.entry import run

    data = _load_spec_file(args.spec)
    if isinstance(data, dict) and "kind" not in data:
        data = {**data, "kind": kind}
    spec = parse_spec(data)
    problems = spec_file_problems(spec)
    if problems:
        raise SpecError(problems)
    if spec.kind != kind:
        raise SpecError([("/kind", f"this spec is a {spec.kind!r} job; run `kdcore {spec.kind}`")])
    keep = args.keep_checkpoints or None  # 0: keep every epoch's checkpoint
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = run(spec, args.out, ProgressPrinter(), args.resume, keep, args.teacher_cache)
    summary = {
        k: report[k]
        for k in (
            "student",
            "teacher",
            "agreement",
            "compression_ratio",
            "baseline",
            "kd_gain",
            "kd_gain_unit",
            "kd_verdict",
            "train_images_per_s",
        )
        if k in report
    }
    print(json.dumps(summary, indent=2))
    print(f"outputs in {Path(args.out).resolve()}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from kdcore.image.export import load_student, save_student

    model, config = load_student(args.dir)
    out = Path(args.out or args.dir)
    paths = save_student(model, config, out, args.formats)
    for fmt, path in paths.items():
        print(f"{fmt}: {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from kdcore.image.data import DATASETS
    from kdcore.losses import LOSSES
    from kdcore.models import MODELS, architecture_names, parameter_count
    from kdcore.registry import Registry
    from kdcore.spec import METHOD_DEFAULTS

    families: dict[str, Registry[Any]] = {"models": MODELS, "datasets": DATASETS, "methods": LOSSES}
    for name, registry in families.items():
        if args.family not in (None, name):
            continue
        names = architecture_names() if name == "models" else registry.names()
        names = fnmatch.filter(names, args.match) if args.match else names
        if name == "models" and args.params:  # one per line, sized at this shape
            shape = tuple(args.input_shape)
            for arch in names:
                count = parameter_count(arch, args.classes, shape)
                print(f"{arch}\t{count if count is not None else '-'}")
        else:
            if name == "datasets":  # text sets are read by kdcore.text, not a registry
                names = sorted({*names, "text"})
            print(f"{name}: {' '.join(names)}")
    if args.family in (None, "methods"):  # what a spec that leaves them unset gets
        from kdcore.text.losses import LM_METHODS

        for method in LOSSES.names():
            defaults = METHOD_DEFAULTS.get(method, {})
            print(f"  {method:<7} " + " ".join(f"{k}={v}" for k, v in defaults.items()))
        print("text methods (task causal_lm; text_classification takes kd, dkd, dist):")
        for method in LM_METHODS:
            defaults = METHOD_DEFAULTS.get(method, {})
            print(f"  {method:<10} " + " ".join(f"{k}={v}" for k, v in defaults.items()))
        print("embedding methods (task embedding): mse cosine")
    return 0


def _shape_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-shape",
        type=int,
        nargs="+",
        default=[3, 32, 32],
        metavar="N",
        help="the dataset's input shape: C H W (images) or D (vectors); default 3 32 32",
    )
    p.add_argument("--classes", type=int, default=10, metavar="N", help="outputs (default 10)")


def _layers(args: argparse.Namespace) -> int:
    """Every layer's name, type and output shape: the names student_layers and
    teacher_layers take."""
    import torch

    from kdcore.image.features import layer_shapes
    from kdcore.models import build_model

    config = _hf_config(Path(args.config)) if args.config else None
    shape = tuple(args.input_shape)
    try:
        model = build_model(args.arch, args.classes, shape, config)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise SpecError([("arch", f"cannot build {args.arch}: {exc}")]) from None
    print(f"{args.arch} at input {list(shape)}, {args.classes} outputs:")
    for name, kind, out in layer_shapes(model, torch.zeros(2, *shape)):
        print(f"  {name:<48} {kind:<24} (N, {', '.join(map(str, out[1:]))})")
    return 0


def _hf_config(path: Path) -> Any:
    """A config.json, or the one inside a zipped/tarred model folder."""
    from kdcore.io.archives import MAX_UNPACKED_BYTES
    from kdcore.models.ecosystems import is_model_folder

    if not is_model_folder(path):
        return _load_spec_file(str(path))
    import shutil

    from kdcore.models.ecosystems import read_hf_folder

    config, weights = read_hf_folder(path, MAX_UNPACKED_BYTES)
    shutil.rmtree(weights.parent, ignore_errors=True)
    return config


def _validate(args: argparse.Namespace) -> int:
    from kdcore.checks.input_files import spec_file_problems
    from kdcore.checks.validate import parse_spec

    spec = parse_spec(_load_spec_file(args.spec))
    problems = spec_file_problems(spec)
    if problems:
        raise SpecError(problems)
    print(f"ok: {spec.kind} job {spec.name!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdcore", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kdcore {kdcore.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for kind in ("distill", "train"):
        p = sub.add_parser(kind, help=f"run a {kind} job spec locally")
        p.add_argument("spec", help="job spec JSON (the service's schema)")
        p.add_argument("--out", required=True, metavar="DIR", help="output folder")
        p.add_argument("--resume", metavar="CHECKPOINT", help="training checkpoint to resume from")
        p.add_argument(
            "--keep-checkpoints",
            type=_count,
            default=2,
            metavar="N",
            help="keep the newest N of OUT/checkpoints/epochN.pt, plus the one resumed "
            "from (default 2; 0 keeps all)",
        )
        p.add_argument(
            "--teacher-cache",
            metavar="DIR",
            help="keep the teacher's outputs in DIR and reuse them: the whole split's "
            "without augmentation, each crop's soft labels with it (a later job with the "
            "same teacher, data and seed skips the teacher); default: none kept",
        )
        p.add_argument(
            "--threads",
            type=_count,
            default=0,
            metavar="N",
            help="CPU threads for this job (default 0: PyTorch's choice, one per core); "
            "jobs sharing a host should split its cores",
        )
        p.set_defaults(func=lambda a, k=kind: _run(a, k))
    p = sub.add_parser("export", help="write TorchScript/ONNX from a student folder")
    p.add_argument("dir", help="folder with student.json and student.safetensors (a job's out)")
    p.add_argument(
        "--formats",
        nargs="+",
        default=["torchscript", "onnx"],
        choices=list(EXPORT_FORMATS),
        metavar="FORMAT",
        help=f"one or more of {', '.join(EXPORT_FORMATS)} (default: torchscript onnx)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: the input folder)")
    p.set_defaults(func=_export)
    p = sub.add_parser("list", help="list architectures, datasets and methods")
    p.add_argument(
        "family",
        nargs="?",
        choices=["models", "datasets", "methods"],
        help="list only this family (default: all three)",
    )
    p.add_argument(
        "--match", metavar="GLOB", help="only names matching this glob, e.g. 'timm:resnet*'"
    )
    p.add_argument("--params", action="store_true", help="models: parameter counts")
    _shape_arguments(p)
    p.set_defaults(func=_list)
    p = sub.add_parser("layers", help="the layers of an architecture, with output shapes")
    p.add_argument("arch", help="a registry name, timm:<name> or hf:<Class>")
    p.add_argument(
        "--config", metavar="PATH", help="hf:<Class>: its config.json (or a model folder's)"
    )
    _shape_arguments(p)
    p.set_defaults(func=_layers)
    p = sub.add_parser(
        "validate", help="check a spec and the local files it names, without running it"
    )
    p.add_argument("spec", help="job spec JSON (the service's schema)")
    p.set_defaults(func=_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KDError as exc:
        print(f"kdcore: error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # registry lookups outside spec validation
        print(f"kdcore: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled as exc:
        print(f"kdcore: cancelled: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("kdcore: interrupted", file=sys.stderr)
        return 130
    except FloatingPointError as exc:
        print(f"kdcore: training diverged: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
