"""`kd login | submit | jobs | show | watch | events | cancel | retry | artifacts | download
| files` (and `credentials`, kdservice.cli.credential_commands):
the service from a terminal, through kdservice.client."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from kdservice.cli import local_files, render
from kdservice.client import Client, Job
from kdservice.client._core import PARTS_ABOVE, load_spec
from kdservice.client.config import resolve, write_config

# a pipe or a file gets wide lines instead of a table squeezed to 80 columns
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)
files_app = typer.Typer(
    help="Upload, list and delete files (teacher checkpoints, datasets).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
Row = TypeVar("Row", bound=BaseModel)
STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON")]


def _print_rows(rows: Sequence[Row], table: Callable[[list[Row]], Table], as_json: bool) -> None:
    """A listing as a table on the console, or (`--json`) as a JSON array."""
    if as_json:
        print(json.dumps([row.model_dump() for row in rows], indent=2))
    else:
        console.print(table(list(rows)))


class CLIError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _client(ctx: typer.Context) -> Client:
    url, key = ctx.obj or (None, None)
    target = resolve(url, key)
    if not target.api_key:
        raise CLIError(
            "no API key: run `kd login`, set KD_API_KEY, or start `kd serve` here "
            "(it saves data/api_key)",
            3,
        )
    return Client(target.url, target.api_key)


def _print_version(given: bool) -> None:
    if given:
        from importlib.metadata import version

        print(f"kd {version('kdservice')}")
        raise typer.Exit()


def global_options(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="print the version and exit"
        ),
    ] = False,
    url: Annotated[
        str | None, typer.Option(metavar="URL", help="service URL (KD_URL)", show_default=False)
    ] = None,
    key: Annotated[
        str | None, typer.Option(metavar="KEY", help="API key (KD_API_KEY)", show_default=False)
    ] = None,
) -> None:
    """Knowledge distillation as a service: submit and watch jobs, run the service."""
    ctx.obj = (url, key)


def login(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(metavar="URL", help="service URL (default: the embedded one)"),
    ] = None,
    key: Annotated[
        str | None, typer.Option(metavar="KEY", help="API key (asked for if not given)")
    ] = None,
) -> None:
    """Check a key against the service and save URL and key for later commands."""
    base = url or (ctx.obj or (None, None))[0] or resolve().url
    key = key or (ctx.obj or (None, None))[1] or typer.prompt("API key", hide_input=True)
    with Client(base, key) as client:
        tenant = client.request("GET", "/v1/tenant").json()
    path = write_config(client.base_url, key)
    err_console.print(f"logged in to {client.base_url} as tenant {tenant['name']!r} ({path})")


def _prepare(client: Client, spec: dict[str, Any], spec_dir: Path) -> None:
    """A spec written for `kdcore` names local files: check them and the rest of the spec
    first, then upload each file the service does not hold yet, and put the ids in."""
    try:
        files = local_files.find(spec, spec_dir)
        local_files.check(files)
    except local_files.LocalFileError as exc:
        raise CLIError(f"the spec is invalid: {exc}") from None
    missing = local_files.already_there(client, spec, files)
    for f in files:
        if f not in missing:
            err_console.print(f"{f.path}: already uploaded (same sha256), reused")
    if not missing:  # nothing to send: the submission itself validates the spec
        return
    verdict = client.validate(spec)
    errors = local_files.problems_besides(verdict.errors, missing)
    if errors:
        shown = "; ".join(f"{loc}: {msg}" for loc, msg in errors)
        raise CLIError(f"the spec is invalid (nothing was uploaded or submitted): {shown}")
    for warning in verdict.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
    for f in missing:
        info = client.upload(f.path, f.purpose)
        f.put(spec, info.id)
        err_console.print(f"uploaded {f.path} as {info.id}")


def _follow(client: Client, job_id: str) -> int:
    with render.Watcher(console) as watcher:
        job = client.wait(job_id, on_event=watcher)
    console.print(render.job_details(job))
    if job.status != "succeeded":
        raise CLIError(render.outcome(job), 1)  # exit 1: the job failed or was cancelled
    return 0


def apply_overrides(spec: dict[str, Any], overrides: list[str]) -> None:
    """`training.epochs=2` sets spec["training"]["epochs"] = 2 (values read as JSON,
    else kept as text)."""
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted:
            raise CLIError(f"--set takes FIELD.PATH=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = spec
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CLIError(f"--set {item}: {part!r} is not an object in the spec")
            node = child
        node[leaf] = value


def submit(
    ctx: typer.Context,
    spec_file: Annotated[
        Path, typer.Argument(metavar="SPEC_FILE", help="job spec (.json, .yaml or .yml)")
    ],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="follow the job to its end")] = False,
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="override the spec's name")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="FIELD=VALUE",
            help="override a field, e.g. --set training.epochs=2 (repeatable; VALUE is "
            "read as JSON, else as text)",
        ),
    ] = None,
) -> None:
    """Submit a job. The spec is validated first; the local files it names are checked,
    then uploaded once each (a file the service already holds, by sha256, is reused)."""
    try:
        spec = load_spec(spec_file)
    except FileNotFoundError:
        raise CLIError(f"no such spec file: {spec_file}") from None
    except ValueError as exc:
        raise CLIError(f"{spec_file}: not a valid JSON/YAML job spec: {exc}") from None
    apply_overrides(spec, overrides or [])
    if name:
        spec["name"] = name
    with _client(ctx) as client:
        _prepare(client, spec, spec_file.parent)
        job = client.submit(spec)
        where = f", position {job.queue_position} in the queue" if job.queue_position else ""
        print(job.id)
        err_console.print(f"submitted {job.name!r}: {job.status}{where}")
        if watch:
            _follow(client, job.id)


def jobs(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(metavar="STATUS", help=f"only jobs in this status: {', '.join(STATUSES)}"),
    ] = None,
    name: Annotated[
        str | None, typer.Option(metavar="TEXT", help="only jobs whose name contains this")
    ] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", min=1, max=200, help="at most N jobs (1-200)")
    ] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    with _client(ctx) as client:
        page = client.list_jobs(limit, status=status, name=name)
    _print_rows(page.data, render.jobs_table, as_json)


def show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID", help="the job (job_...)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the job as JSON")] = False,
) -> None:
    """Show a job: status, progress, timeline and report."""
    with _client(ctx) as client:
        job = client.get(job_id)
    if as_json:
        print(job.model_dump_json(indent=2))
    else:
        console.print(render.job_details(job))


def watch(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID", help="the job (job_...)")],
) -> None:
    """Follow a job live (epoch, loss terms, accuracy, images/s, ETA) until it ends,
    then print its report. Exit code 1 if it did not succeed."""
    with _client(ctx) as client:
        _follow(client, job_id)


def events(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID", help="the job (job_...)")],
    after: Annotated[
        int, typer.Option(metavar="SEQ", min=0, help="events after this sequence number")
    ] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="stream until the job ends")
    ] = False,
) -> None:
    """Print a job's events as JSON lines."""
    with _client(ctx) as client:
        if follow:
            for event in client.events(job_id, after):
                print(event.model_dump_json(exclude_none=True), flush=True)
            return
        while True:
            page = client.event_page(job_id, after, 200)
            for event in page.data:
                print(event.model_dump_json())
            if not page.has_more or page.next_after is None:
                return
            after = page.next_after


def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID", help="the job (job_...)")],
) -> None:
    """Cancel a queued or running job."""
    with _client(ctx) as client:
        job = client.cancel(job_id)
    err_console.print(render.status_text(job.status), f"{job.id}")


def retry(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID", help="the job (job_...)")],
    from_checkpoint: Annotated[
        bool, typer.Option("--from-checkpoint", help="resume from its newest checkpoint")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="follow the new job to its end")
    ] = False,
) -> None:
    """Run a failed or cancelled job again as a new job."""
    with _client(ctx) as client:
        job = client.retry(job_id, from_checkpoint)
        print(job.id)
        err_console.print(f"retry of {job_id}: {job.status}")
        if watch:
            _follow(client, job.id)


def _artifact_names(job: Job, fmt: str | None, formats: list[str]) -> list[str]:
    """The artifacts `kd download` fetches: the student in `fmt`, by default its weights
    (image jobs: student.safetensors + student.json) or its model folder (language
    models: student_hf.zip, which transformers and a later job's teacher take)."""
    files = (job.report or {}).get("files") or {}
    if fmt is None:
        fmt = "hf_zip" if "hf_zip" in files else "safetensors"
    if fmt not in files:
        have = sorted(k for k in files if k in (*formats, "hf_zip"))
        raise CLIError(
            f"job {job.id} has no {fmt} export; it has {', '.join(have) or 'none'} "
            "(--format FORMAT picks one, --all downloads every artifact)"
        )
    names = [files[fmt]["name"]]
    if fmt == "safetensors" and "student.json" not in names:
        names.append("student.json")  # how to rebuild the model around the weights
    return names


def download(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID", help="the job (job_...)")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            metavar="FORMAT",
            help="an export: safetensors, torchscript, onnx, onnx_fp16, onnx_int8, or hf_zip "
            "(a language model's folder); default: the job's student (safetensors + "
            "student.json, or student_hf.zip)",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="folder to write to")
    ] = Path("."),
    everything: Annotated[bool, typer.Option("--all", help="every artifact of the job")] = False,
) -> None:
    """Download a job's distilled student (resumes a partial download, checks sha256)."""
    with _client(ctx) as client:
        formats = list(client.capabilities()["export_formats"])  # the server's list
        if fmt is not None and fmt not in (*formats, "hf_zip"):
            raise CLIError(f"--format must be one of {', '.join([*formats, 'hf_zip'])}")
        job = client.get(job_id)
        if job.status != "succeeded":
            raise CLIError(f"job {job.id} is {job.status}; outputs exist once it succeeds")
        names = None if everything else _artifact_names(job, fmt, formats)
        for path in client.download_outputs(job.id, out, names):
            print(path)


def artifacts(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID", help="the job (job_...)")],
    name: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="print only the id of this artifact (e.g. student_hf.zip), for scripts and "
            "for a later job's teacher.checkpoint",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List a job's artifacts: id, name, size and sha256 (an artifact id serves as a
    later job's input where its kind fits: weights, an ONNX graph or a model folder as
    a checkpoint)."""
    with _client(ctx) as client:
        found = client.artifacts(job_id)
    if name is not None:
        match = [a for a in found if a.name == name]
        if not match:
            names = ", ".join(a.name for a in found) or "none"
            raise CLIError(f"job {job_id} has no artifact {name!r}; it has {names}")
        print(match[0].id)
    else:
        _print_rows(found, render.artifacts_table, as_json)


@files_app.command("upload")
def files_upload(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH", exists=True, dir_okay=False, readable=True, help="the file to send"
        ),
    ],
    purpose: Annotated[
        str, typer.Option(metavar="PURPOSE", help="checkpoint, dataset or teacher_outputs")
    ] = "checkpoint",
    parts: Annotated[
        bool, typer.Option("--parts", help="send in parts (resumable) whatever the size")
    ] = False,
) -> None:
    """Upload a teacher checkpoint (safetensors / weights-only .pt), a dataset archive or
    a teacher's stored outputs (teacher_outputs.zip).
    Files over 64 MiB go in parts with a progress bar; run the same command again after
    an interruption and it sends only the parts the service does not have."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with _client(ctx) as client:
        if path.stat().st_size <= PARTS_ABOVE and not parts:
            info = client.upload(path, purpose)
        else:
            columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
            with Progress(*columns, console=err_console, transient=True) as bar:
                task = bar.add_task("upload", total=path.stat().st_size)
                info = client.upload_in_parts(
                    path, purpose, lambda done, _: bar.update(task, completed=done)
                )
    print(info.id)
    err_console.print(f"{info.filename}: {info.bytes:,} bytes, sha256 {info.sha256[:16]}...")


@files_app.command("list")
def files_list(
    ctx: typer.Context,
    purpose: Annotated[
        str | None,
        typer.Option(
            metavar="PURPOSE",
            help="only checkpoint, dataset or teacher_outputs files",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option(metavar="N", min=1, max=200, help="at most N files")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List uploaded files, newest first."""
    if purpose not in (None, "checkpoint", "dataset", "teacher_outputs"):
        raise CLIError(f"--purpose must be checkpoint, dataset or teacher_outputs, not {purpose!r}")
    with _client(ctx) as client:
        found = client.files(limit, purpose)
    _print_rows(found, render.files_table, as_json)


@files_app.command("delete")
def files_delete(
    ctx: typer.Context,
    file_ids: Annotated[
        list[str], typer.Argument(metavar="FILE_ID", help="files to delete (one or more)")
    ],
) -> None:
    """Delete uploaded files (refused for a file an active job uses)."""
    with _client(ctx) as client:
        for file_id in file_ids:
            client.delete_file(file_id)
            err_console.print(f"deleted {file_id}")


def register(app: typer.Typer) -> None:
    app.callback()(global_options)
    commands = (login, submit, jobs, show, watch, events, cancel, retry, artifacts, download)
    for command in commands:
        app.command()(command)
    app.add_typer(files_app, name="files")
    from kdservice.cli.credential_commands import credentials_app

    app.add_typer(credentials_app, name="credentials")


__all__ = ["CLIError", "register"]
