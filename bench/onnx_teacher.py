"""An ONNX teacher's cost: the same network as a torch module (eager, inference mode)
and as an ONNX graph in onnxruntime (what kdcore runs for a graph-only teacher), on the
CPU with the same thread count. Prints images/s (median of --repeats) and the ratio.

    python bench/onnx_teacher.py [--batch 512] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdcore.models import build_model  # noqa: E402
from kdcore.models.onnx import OnnxTeacher, inspect_onnx  # noqa: E402
from tests.support.graphs import export_graph  # noqa: E402


def rate(fn, x: torch.Tensor, repeats: int) -> float:
    fn(x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--archs", nargs="+", default=["small_cnn_wide", "cifar_resnet20"])
    args = parser.parse_args()
    shape = (1, 28, 28)
    x = torch.randn(args.batch, *shape)
    print(f"CPU, {torch.get_num_threads()} threads, batch {args.batch}, input {list(shape)}")
    print("| teacher | torch eager img/s | onnxruntime img/s | onnxruntime / torch |")
    print("|---|---|---|---|")
    for arch in args.archs:
        model = build_model(arch, 10, shape).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = export_graph(model, Path(tmp) / f"{arch}.onnx", shape)
            graph = OnnxTeacher(path, inspect_onnx(path))
            with torch.inference_mode():
                eager = rate(model, x, args.repeats)
                ort = rate(graph, x, args.repeats)
        print(f"| {arch} | {eager:,.0f} | {ort:,.0f} | {ort / eager:.2f} |")


if __name__ == "__main__":
    main()
