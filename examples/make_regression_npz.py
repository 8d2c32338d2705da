"""Write examples/data/regression.npz: 3,000 samples of 8 features -> 2 smooth targets
(a fixed random two-layer function plus noise). Deterministic: the same file every run.

    python examples/make_regression_npz.py [OUT.npz]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def make(path: Path, n: int = 3000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    w1 = rng.normal(size=(8, 16)) / np.sqrt(8)
    w2 = rng.normal(size=(16, 2)) / np.sqrt(16)
    y = np.tanh(x @ w1) @ w2 + 0.05 * rng.normal(size=(n, 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y.astype(np.float32))
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data/regression.npz"
    print(make(out))
