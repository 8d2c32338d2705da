"""The eviction rule of every cache that tenants share (the teacher cache, the
service's dataset cache): each tenant has an equal share of the bound."""

from __future__ import annotations

import shutil
from pathlib import Path


def evict_fairly(keys: dict[Path, list[tuple[float, int, Path]]], max_bytes: int) -> list[str]:
    """The eviction rule of every cache shared by tenants: `keys` maps each tenant's root
    to its entries (last use, bytes, folder). While the whole is over `max_bytes`, the
    tenant furthest over an equal share loses its least recently used entry."""
    held = {root: sorted(entries) for root, entries in keys.items() if entries}
    used = {root: sum(size for _, size, _ in entries) for root, entries in held.items()}
    total = sum(used.values())
    removed = []
    while total > max_bytes and held:
        share = max_bytes / len(held)
        root = max(held, key=lambda r: used[r] - share)
        _, size, folder = held[root].pop(0)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
        used[root] -= size
        total -= size
        if not held[root]:
            del held[root]
    return removed
