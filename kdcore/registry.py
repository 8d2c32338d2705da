"""One tiny registry type shared by every family (losses, models, datasets).

`register` adds a named builder, `get` returns it; an unknown name raises a
`KeyError` subclass whose message lists the choices, so a typo in a spec tells
the user what would have worked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kdcore.errors import did_you_mean

T = TypeVar("T")


class UnknownNameError(KeyError):
    def __init__(self, family: str, name: str, choices: list[str], listed_by: str = ""):
        self.family, self.name, self.choices = family, name, choices
        super().__init__(f"unknown {family} {name!r}.{did_you_mean(name, choices, listed_by)}")

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, family: str, listed_by: str = ""):
        self.family, self.listed_by = family, listed_by
        self._items: dict[str, T] = {}
        self._sources: list[Callable[[Registry[T]], None]] = []
        self._loading = threading.RLock()

    def defer(self, source: Callable[[Registry[T]], None]) -> None:
        """A family whose names cost an import to learn (torchvision's models: about
        1.8 s, as it imports torch._dynamo): `source(registry)` registers them the first
        time a name is missed or the names are listed, so a process that never asks
        never pays."""
        self._sources.append(source)

    def _load_deferred(self) -> None:
        # under the lock, and a source leaves the list only once it has registered its
        # names: a request thread never sees the family half loaded (an unknown name)
        with self._loading:
            while self._sources:
                self._sources[0](self)
                self._sources.pop(0)

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def add(self, name: str, item: T) -> None:
        self.register(name)(item)

    def get(self, name: str) -> T:
        if name not in self:
            raise self.unknown(name)
        return self._items[name]

    def unknown(self, name: str) -> UnknownNameError:
        return UnknownNameError(self.family, name, self.names(), self.listed_by)

    def names(self) -> list[str]:
        self._load_deferred()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self._load_deferred()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
