import os
from pathlib import Path

import pytest
import torch


def _pin_xdist_worker() -> None:
    """Under `pytest -n N`, each worker (and every process it starts, which inherits the
    mask) runs on its own share of the cores: N workers each training with every core
    would oversubscribe the machine, and torch's threads then wait on one another."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < count:
        return
    share = cpus[int(worker[2:]) % count :: count]
    os.sched_setaffinity(0, share)


_pin_xdist_worker()
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
# now, for the whole process: torch sized its pool when it was imported, before the pin,
# and a module- or session-scoped fixture runs before the per-test fixture below; two
# OpenMP threads spinning on one core made such a fixture's training 30x slower
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # the exact-resume and golden tests compare bits; keep the thread count fixed, and
    # the same as a process started from here takes by default (its cores)
    torch.set_num_threads(THREADS)
    yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files that hold slow tests first, the heaviest first (a file's cost is the
    largest `slow(seconds=N)` among its tests: the seconds it took in a measured run;
    a plain `slow` counts 1), and a stable sort: each file's own order is kept. Under
    `--dist loadfile --no-loadscope-reorder` (`make test`) the long files then start at
    once and the short ones fill in around them, rather than one long file running
    alone at the end on one core while the other waits."""
    cost = file_costs(items)
    items.sort(key=lambda item: -cost[item.path])


def file_costs(items: list[pytest.Item]) -> dict[Path, float]:
    """{path: cost} for every collected file (0 for a file without slow tests)."""
    cost = {item.path: 0.0 for item in items}
    for item in items:
        marker = item.get_closest_marker("slow")
        if marker is not None:
            cost[item.path] = max(cost[item.path], float(marker.kwargs.get("seconds", 1)))
    return cost
