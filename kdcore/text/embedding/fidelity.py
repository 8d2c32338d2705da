"""How faithfully a student reproduces its teacher's embedding space on held-out text:
the Spearman correlation between the two models' pairwise cosine similarities (the
order of every pair of passages, which search and clustering read), the mean overlap of
each passage's 10 nearest neighbours, and the mean cosine between the two embeddings
of the same passage (where their widths agree). Speed: tokens/s at a batch and the
median latency of one passage."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdcore.text.embedding.passages import Batcher, Passages

NEIGHBOURS = 10
MAX_FIDELITY_PASSAGES = 2000  # pairwise similarities: n^2 / 2 pairs
SPEED_PASSAGES = 256
LATENCY_RUNS = 20


def _ranks(x: Tensor) -> Tensor:
    order = torch.argsort(x)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    ra, rb = _ranks(a.double()), _ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp(min=1e-12))


def _cosines(e: Tensor) -> Tensor:
    e = nn.functional.normalize(e.double(), dim=-1)
    return e @ e.T


def fidelity(student: Tensor, teacher: Tensor) -> dict[str, Any]:
    """The figures for two [passages, width] embedding matrices of the same passages."""
    n = len(teacher)
    s_sim, t_sim = _cosines(student), _cosines(teacher)
    upper = torch.triu_indices(n, n, offset=1)
    rho = spearman(s_sim[upper[0], upper[1]], t_sim[upper[0], upper[1]])
    k = min(NEIGHBOURS, n - 1)
    eye = torch.eye(n, dtype=torch.bool)
    s_nn = s_sim.masked_fill(eye, -2).topk(k, dim=1).indices
    t_nn = t_sim.masked_fill(eye, -2).topk(k, dim=1).indices
    overlap = np.mean(
        [len(set(s.tolist()) & set(t.tolist())) / k for s, t in zip(s_nn, t_nn, strict=True)]
    )
    out = {
        "spearman": round(rho, 4),
        f"top{k}_overlap": round(float(overlap), 4),
        "passages": n,
    }
    if student.shape[1] == teacher.shape[1]:
        same = nn.functional.cosine_similarity(student.double(), teacher.double(), dim=-1)
        out["cosine_to_teacher"] = round(float(same.mean()), 4)
    return out


@torch.inference_mode()
def speed(
    model: nn.Module, split: Passages, batcher: Batcher, batch_size: int, device: torch.device
) -> dict[str, float]:
    """tokens/s over up to SPEED_PASSAGES held-out passages at `batch_size` (after one
    warm-up batch), and the median milliseconds to embed one passage."""
    model.eval()
    texts = split.texts(np.arange(min(SPEED_PASSAGES, len(split))))
    batches = [batcher(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    model(batches[0][0].to(device), batches[0][1].to(device))
    tokens, start = 0, time.perf_counter()
    for ids, mask in batches:
        model(ids.to(device), mask.to(device))
        tokens += int(mask.sum())
    elapsed = time.perf_counter() - start
    single = []
    for text in texts[:LATENCY_RUNS]:
        ids, mask = batcher([text])
        t0 = time.perf_counter()
        model(ids.to(device), mask.to(device))
        single.append((time.perf_counter() - t0) * 1000)
    return {
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms_batch1": round(statistics.median(single), 3),
    }


def model_size(model: nn.Module) -> dict[str, int]:
    params = sum(p.numel() for p in model.parameters())
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"parameters": int(params), "bytes": int(size)}
