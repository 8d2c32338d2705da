"""`kd credentials put | list | delete`: a tenant's write-only secrets for teacher
endpoints (a spec names one in teacher.endpoint.credential)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from kdservice.cli import render
from kdservice.cli.client_commands import CLIError, JsonFlag, _client, _print_rows, err_console

credentials_app = typer.Typer(
    help="Store, list and delete secrets for teacher endpoints (write-only).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
Name = Annotated[str, typer.Argument(metavar="NAME", help="the credential's name")]


def _read_secret() -> str:
    """From a pipe (`kd credentials put NAME < key.txt`), else typed without echo: a
    secret on the command line would stay in the shell's history and in `ps`."""
    if sys.stdin.isatty():
        return str(typer.prompt("secret", hide_input=True, err=True)).strip()
    return sys.stdin.read(8192).strip()


@credentials_app.command("put")
def credentials_put(ctx: typer.Context, name: Name) -> None:
    """Store (or replace) the secret NAME, read from stdin or typed without echo."""
    secret = _read_secret()
    if not secret:
        raise CLIError("no secret given on stdin")
    with _client(ctx) as client:
        info = client.put_credential(name, secret)
    err_console.print(f"stored {info.name} (the service never shows it again)")


@credentials_app.command("list")
def credentials_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """This tenant's credentials: names and dates, never values."""
    with _client(ctx) as client:
        found = client.credentials()
    _print_rows(found, render.credentials_table, as_json)


@credentials_app.command("delete")
def credentials_delete(ctx: typer.Context, name: Name) -> None:
    """Delete a credential (refused while an active job names it)."""
    with _client(ctx) as client:
        client.delete_credential(name)
    err_console.print(f"deleted {name}")
