"""`kd`: the service's command line.

Client commands (login, submit, jobs, show, watch, events, cancel, retry, artifacts, download,
files) talk to a running service through kdservice.client; with no flags they reach
the embedded default on http://127.0.0.1:8000 with the key `kd serve` saved locally.
Server commands (serve, worker, keys, migrate) run and administer the service.

Exit codes: 0 success; 1 the job failed or was cancelled, or the service answered an
error; 2 bad usage or invalid input (an unreadable or invalid spec, a 4xx about the
request); 3 the service cannot be reached or refused the key; 130 interrupted.
"""

from __future__ import annotations

import sys

import typer

from kdservice.cli import client_commands, server

EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130


def _argument_without_type(self: typer.core.TyperArgument, ctx: object) -> None:
    return None


# typer prints an argument as `JOB_ID <str>` and `FILE_ID <list[str]>`: Python types a
# user does not need beside a name that says what to give. Arguments show their name.
typer.core.TyperArgument.display_type_rich = _argument_without_type  # type: ignore[method-assign,assignment]

app = typer.Typer(
    name="kd",
    help=__doc__.split("\n\n")[0] if __doc__ else None,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: `-w, --watch  follow ...`, no <bool> type labels
)
client_commands.register(app)
server.register(app)


def _error(message: str, code: int) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    print(f"kd: error: {first}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run `kd`; every error ends as one line on stderr and a conventional exit code."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="kd", standalone_mode=False)
    except KeyboardInterrupt:
        return _error("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:
        handled = _client_error(exc) or _usage_error(exc)
        if handled is None:
            raise
        message, code = handled
        return _error(message, code) if message else code
    return int(result or 0)


def _client_error(exc: Exception) -> tuple[str, int] | None:
    """(message, exit code) for what the client or the service said."""
    import httpx

    from kdservice.client import ApiError, KDClientError

    if isinstance(exc, client_commands.CLIError):
        return str(exc), exc.code
    if isinstance(exc, ApiError):
        if exc.status == 401:
            return f"{exc} (log in with `kd login` or set KD_API_KEY)", EXIT_UNREACHABLE
        code = EXIT_USAGE if exc.status in (400, 404, 409, 413, 415, 422) else EXIT_JOB_FAILED
        return str(exc), code
    if isinstance(exc, httpx.ConnectError):
        return f"cannot reach the service: {exc}", EXIT_UNREACHABLE
    if isinstance(exc, httpx.HTTPError):
        return f"HTTP error: {exc}", EXIT_UNREACHABLE
    if isinstance(exc, KDClientError):
        return str(exc), EXIT_JOB_FAILED
    return None


def _usage_error(exc: Exception) -> tuple[str, int] | None:
    """(message, exit code) for bad usage, settings, files, and the server commands'
    database; an empty message: already printed (the help)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):  # settings from the environment
        return str(exc).replace("\n", " "), EXIT_USAGE
    if isinstance(exc, OSError):
        return str(exc), EXIT_USAGE
    # click's errors (typer may vendor its own copy of click, so match by shape)
    if type(exc).__name__ == "NoArgsIsHelpError":
        return "", EXIT_USAGE
    if type(exc).__name__ == "Abort":
        return "interrupted", EXIT_INTERRUPTED
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
        return exc.format_message(), EXIT_USAGE
    if "sqlalchemy" in type(exc).__module__:
        text = str(exc)
        if "no such table" in text or ("relation" in text and "does not exist" in text):
            return "the database has no tables yet: run `kd migrate` first", EXIT_USAGE
        return f"database: {text.splitlines()[0]}", EXIT_UNREACHABLE
    return None
