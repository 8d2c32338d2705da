"""kdcore: knowledge distillation as a library. The entry points are `kdcore.run`,
`kdcore.distill` and `kdcore.train` (defined in kdcore.runs.entry: no module may share an
exported name, or importing it would replace the function with the module);
kdcore.spec is the job schema.

The names below are loaded on first use (PEP 562), so `import kdcore.spec` or
`import kdcore.errors` does not pull in torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:  # the distribution's version (pyproject.toml): one number for kd, kdcore and the API
    __version__ = version("kdservice")
except PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Callbacks": "kdcore.engine.callbacks",
    "Progress": "kdcore.engine.callbacks",
    "Cancelled": "kdcore.errors",
    "CheckpointError": "kdcore.errors",
    "DataError": "kdcore.errors",
    "KDError": "kdcore.errors",
    "SpecError": "kdcore.errors",
    "JobSpec": "kdcore.spec",
    "parse_spec": "kdcore.checks.validate",
    "run": "kdcore.runs.entry",
    "distill": "kdcore.runs.entry",
    "train": "kdcore.runs.entry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kdcore' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
