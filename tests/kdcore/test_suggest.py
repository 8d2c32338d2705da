"""The closest names to a mistyped one, for every "did you mean"."""

from __future__ import annotations

import pytest

from kdcore.checks.validate import parse_spec
from kdcore.errors import SpecError, closest, did_you_mean
from kdcore.models import MODELS, unknown_arch


@pytest.mark.parametrize(
    "typed,meant",
    [
        ("resnet-20", "cifar_resnet20"),  # containment, not edit distance
        ("ResNet20", "cifar_resnet20"),
        ("small-cnn", "small_cnn"),  # case and punctuation ignored
        ("smoll_cnn", "small_cnn"),  # a typo
    ],
)
def test_closest_finds_what_people_type(typed: str, meant: str) -> None:
    assert closest(typed, MODELS.names())[0] == meant


def test_nothing_close_suggests_nothing() -> None:
    assert closest("zzzz", ["kd", "dkd", "dist"]) == []
    assert did_you_mean("zzzz", ["kd", "dkd"]) == " Choices: dkd, kd."


def test_a_long_list_is_counted_and_where_to_list_it_named() -> None:
    message = unknown_arch("resnet-20")
    assert "Did you mean 'cifar_resnet20'?" in message
    assert f"{len(MODELS.names())} choices: `kdcore list models`" in message
    assert "wide_resnet" not in message


def test_an_alias_beside_its_field_is_said_to_be_given_twice() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(
            {"student": {"arch": "small_cnn"}, "dataset": {"name": "digits", "builtin": "digits"}}
        )
    ((pointer, message),) = info.value.errors
    assert pointer == "/dataset/builtin" and "another name of a field" in message


def test_a_spec_that_is_not_an_object_says_so() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(["not", "a", "spec"])
    assert info.value.errors == [("", "a job spec is a JSON object")]
