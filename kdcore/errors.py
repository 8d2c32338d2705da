"""The exceptions kdcore raises on bad input. Each carries a message a user can act on,
and a name that is not one of the choices says which it was closest to ("Did you mean
...?", below): difflib alone misses what people actually type (`resnet-20` for
`cifar_resnet20`, `ResNet20`, `fashion-mnist`), so names are compared without case and
punctuation first, then by containment, then by edit similarity."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import AliasChoices, BaseModel


class KDError(Exception):
    """Base class: a problem with what the user gave us (spec, file, data), not a bug."""


MAX_ERRORS = 50  # past this, one more entry says more follow: an answer of bounded size
MORE_ERRORS = ("", "more errors follow; fix these first")


def capped(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """At most MAX_ERRORS (pointer, message) pairs, then MORE_ERRORS if some were cut."""
    return errors if len(errors) <= MAX_ERRORS else [*errors[:MAX_ERRORS], MORE_ERRORS]


class SpecError(KDError):
    """The job spec is invalid. `errors` holds (JSON pointer, message) pairs, capped."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = capped(errors)
        super().__init__("; ".join(f"{loc or '/'}: {msg}" for loc, msg in self.errors))


class CheckpointError(KDError):
    """A checkpoint cannot be loaded safely or does not fit the model."""


class DataError(KDError):
    """A dataset file or archive is missing, malformed or unsafe."""


class ChannelCountError(DataError):
    """dataset.mean/std give another number of values than the images have channels."""

    def __init__(self, given: int, channels: int):
        super().__init__(f"dataset.mean has {given} values for {channels} channels")
        self.given, self.channels = given, channels


class TeacherCheckError(KDError):
    """The teacher, scored on held-out data before training, is near chance: it would be
    distilled into noise. The message gives the figures and the likely causes."""


class Cancelled(Exception):
    """Raised inside the training loop when the caller asked it to stop."""


# Did you mean ...?

SHOWN = 12  # past this many choices, name the command that lists them instead
MAX_NAME = 100  # a longer name is no one's typo: shown cut, compared with nothing


def _plain(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to `n` choices most like `name`, best first; [] when none is close."""
    options = sorted(set(choices))
    plain = _plain(name)
    if not plain or len(name) > MAX_NAME:
        return []
    by_plain: dict[str, list[str]] = {}
    for choice in options:
        by_plain.setdefault(_plain(choice), []).append(choice)
    found: list[str] = list(by_plain.get(plain, []))
    if found:
        return found[:n]
    if len(plain) >= 3:  # `resnet20` inside `cifar_resnet20`, `mnist` inside `fashion_mnist`
        contained = [
            c for c in options if c not in found and (plain in _plain(c) or _plain(c) in plain)
        ]
        contained = [c for c in contained if len(_plain(c)) >= 3]
        found += sorted(contained, key=lambda c: (abs(len(_plain(c)) - len(plain)), c))
    if found:
        return found[:n]
    similar = difflib.get_close_matches(plain, list(by_plain), n=n, cutoff=0.6)
    found += [c for p in similar for c in by_plain[p] if c not in found]
    return found[:n]


def did_you_mean(name: str, choices: Iterable[str], listed_by: str = "", shown: int = SHOWN) -> str:
    """` Did you mean 'x'? Choices: a, b, c` (all of them when at most `shown`, else
    how to list them): the tail of an error message, starting with a space."""
    options = sorted(set(choices))
    close = closest(name, options)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    if len(options) <= shown:
        return f"{hint} Choices: {', '.join(options)}."
    where = f": {listed_by}" if listed_by else ""
    return f"{hint} {len(options)} choices{where}."


def unknown_field(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The message for a field `model` does not take at `loc` (pydantic's
    extra_forbidden): its name, the closest fields, the fields there."""
    name, names = str(loc[-1]), field_names(model, loc[:-1])
    if name in names:  # an alias given beside its field (`builtin` and `name`)
        return f"{name!r} is another name of a field given already: give one of them"
    if len(name) > MAX_NAME:  # no field is this long: echo a bounded part, guess nothing
        return f"unknown field {name[:MAX_NAME]!r}... ({len(name):,} characters)." + did_you_mean(
            "", names, shown=100
        )
    return f"unknown field {name!r}." + did_you_mean(name, names, shown=100)


def field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The fields (and their aliases) the object at `loc` inside `model` takes."""
    annotation: Any = model
    for part in loc:
        inner = _model_in(annotation)
        if inner is None:
            return []
        if isinstance(part, int):
            continue  # an index into a list of objects
        field = inner.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
    inner = _model_in(annotation)
    if inner is None:
        return []
    names = []
    for name, field in inner.model_fields.items():
        names.append(name)
        if isinstance(field.validation_alias, AliasChoices):
            names += [a for a in field.validation_alias.choices if isinstance(a, str)]
    return names


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model in `X`, `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
