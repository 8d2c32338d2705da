"""Help for every command and flag of `kd` and `kdcore`: each option and argument says
what it takes (a metavar, not a Python type like `<bool>` or `<list[str]>`) and what it
does."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from kdcore.cli import build_parser
from kdservice.cli import app


def _commands(command: Any, path: tuple[str, ...] = ()):
    yield path, command
    # typer may vendor its own click: groups and options are recognised by their shape
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


KD = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path,command", KD, ids=[" ".join(p) or "kd" for p, _ in KD])
def test_every_kd_command_and_parameter_has_help(path, command) -> None:
    assert command.help, f"kd {' '.join(path)} has no help"
    for param in command.params:
        if param.name == "help":
            continue
        assert getattr(param, "help", None), f"kd {' '.join(path)}: {param.name} has no help"
        if hasattr(param, "opts") and param.param_type_name == "option" and not param.is_flag:
            assert param.metavar, f"kd {' '.join(path)} {param.opts[0]} shows a type, not a name"


def test_kd_help_shows_no_python_types() -> None:
    # in this process (typer's runner renders the help `kd ... --help` prints): a new
    # interpreter per command cost about 0.6 s each, for the same text
    runner = CliRunner()
    for path, _ in KD:
        shown = runner.invoke(app, [*path, "--help"], prog_name="kd")
        assert shown.exit_code == 0, (path, shown.output)
        assert "Usage: kd" in shown.output, (path, shown.output)
        for python_type in ("<bool>", "<list", "<str>", "<int>"):
            assert python_type not in shown.output, (path, shown.output)


def test_kd_jobs_status_lists_the_statuses() -> None:
    from app.db.models import STATUSES

    jobs = dict(KD)[("jobs",)]
    status = next(p for p in jobs.params if p.name == "status")
    assert all(s in (status.help or "") for s in STATUSES)


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


KDCORE = list(_parsers(build_parser()))


@pytest.mark.parametrize("path,parser", KDCORE, ids=[" ".join(p) or "kdcore" for p, _ in KDCORE])
def test_every_kdcore_argument_has_help(path, parser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        assert action.help, f"kdcore {' '.join(path)}: {action.dest} has no help"
