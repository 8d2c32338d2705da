"""`kd serve | worker | keys | migrate`: run and administer the service."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kdservice.cli.startup import announce_when_answering, bind_listener, start_block

if TYPE_CHECKING:  # the server is imported only when a server command runs
    from app.settings import Settings


def get_settings() -> Settings:
    from app.settings import get_settings as settings_from_environment

    return settings_from_environment()


keys_app = typer.Typer(
    help="Manage API keys (run on the service's host).", no_args_is_help=True, rich_markup_mode=None
)


def database_url(settings: Settings) -> str:
    """The database a server command works on, made ready as `kd serve` makes it: the
    embedded SQLite is created and upgraded here; PostgreSQL is migrated on purpose
    (`kd migrate`), and a command that finds no tables says so in one line."""
    if settings.is_sqlite:
        from app.prepare import prepare

        prepare(settings)
    return settings.db_url


def _key_file(settings: Settings) -> Path:
    return settings.data_dir / "api_key"


def _first_start_key(settings: Settings) -> str:
    """On the first start, create a key for tenant 'default' and store it 0600; returns
    the start block's line about it (the key itself only when it was just made)."""
    from app.db.session import session_scope
    from app.services.keys import any_key, create_key

    path = _key_file(settings)
    with session_scope(settings.db_url) as session:
        if any_key(session):
            if path.exists():
                return f"{path} (`kd` commands read it)"
            return "kept by whoever made it (`kd keys create --tenant NAME` makes another)"
        _, plain = create_key(session, "default")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(plain + "\n")
    return f"{plain}\n             new, for tenant 'default', saved to {path}"


def background_loops(settings: Settings) -> list[Any]:
    """What runs beside the API in `kd serve`: the reaper and sweep, the webhook
    dispatcher and, with no broker, the local executor."""
    import logging

    from app.services.webhooks import Dispatcher
    from worker.local import LocalExecutor
    from worker.maintenance import Maintenance

    loops: list[Any] = [Maintenance(settings), Dispatcher(settings)]
    if not settings.broker_url and settings.local_workers > 0:
        loops.append(LocalExecutor(settings))
        logging.getLogger("kd.api").info(
            "local executor: %d worker thread(s)", settings.local_workers
        )
    return loops


def served_app() -> Any:
    """The app `kd serve` runs (also uvicorn's factory for `--workers N`)."""
    from app.main import create_app

    return create_app(get_settings(), background_loops)


def serve(
    host: Annotated[
        str | None, typer.Option(metavar="HOST", help="listen address (KD_HOST)")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(metavar="PORT", help="listen port (KD_PORT); 0: any free one, printed"),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            metavar="N", min=1, max=64, help="API processes (needs KD_BROKER_URL when > 1)"
        ),
    ] = 1,
) -> None:
    """Run the API (and, with no broker configured, the local executor)."""
    settings = get_settings()
    if host:
        settings.host = host
    if port is not None:
        settings.port = port
    if workers > 1 and not settings.broker_url:
        raise typer.BadParameter(
            "--workers > 1 needs KD_BROKER_URL: each process would run its own local executor"
        )
    # the port first: a second `kd serve` stops here, before it migrates or starts a
    # job runner; the bound socket is what uvicorn then serves on
    listener = bind_listener(settings.host, settings.port)
    settings.port = listener.getsockname()[1]  # port 0: the one the system chose

    import uvicorn

    from app.logs import configure_logging, dict_config
    from app.main import create_app
    from app.prepare import prepare

    configure_logging(settings)
    prepare(settings)
    key_line = _first_start_key(settings)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "warning",
        "log_config": dict_config(settings),  # the same lines in every worker process
        "timeout_graceful_shutdown": 5,
        # longer than a load balancer's idle timeout (often 60 s), and long enough that a
        # client reusing a kept-alive connection never races the server closing it
        "timeout_keep_alive": 75,
    }
    announce_when_answering(settings, start_block(settings, key_line))
    if workers > 1:
        # uvicorn's supervisor binds for its processes: the check above has done its work
        listener.close()
        # each process builds its app from the same environment (settings are env-only)
        os.environ["KD_HOST"], os.environ["KD_PORT"] = settings.host, str(settings.port)
        uvicorn.run("kdservice.cli.server:served_app", factory=True, workers=workers, **options)
    else:
        config = uvicorn.Config(create_app(settings, background_loops), **options)
        uvicorn.Server(config).run(sockets=[listener])


def worker(
    loglevel: Annotated[str, typer.Option(metavar="LEVEL", help="Celery's log level")] = "warning",
    hostname: Annotated[str, typer.Option(metavar="NAME", help="Celery node name")] = (
        f"kd@{os.uname().nodename}-{os.getpid()}"
    ),
    queues: Annotated[
        str,
        typer.Option(
            metavar="QUEUES",
            help="pools to take jobs from, comma-separated: kd (jobs with no gpu_type) "
            "and/or kd.<gpu_type>, e.g. --queues kd.h200,kd",
        ),
    ] = "kd",
) -> None:
    """Run a Celery worker (one per GPU)."""
    from app.logs import configure_logging
    from worker.maintenance import Maintenance

    settings = get_settings()
    if not settings.broker_url:
        raise typer.BadParameter("`kd worker` needs KD_BROKER_URL (a Redis URL)")
    configure_logging(settings)
    import kdcore.checks.validate  # noqa: F401  (torch, for sizing jobs: once here, not per claim)
    from app.prepare import private_files
    from app.services.egress import quiet_libraries
    from app.services.webhooks import Dispatcher
    from worker.tasks import app

    quiet_libraries()
    private_files(settings)
    Maintenance(settings).start()
    Dispatcher(settings).start()
    argv = [
        "worker",
        "--loglevel",
        loglevel,
        "--concurrency",
        "1",
        "--pool",
        "prefork",
        "--queues",
        queues,
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        hostname,
    ]
    app.worker_main(argv)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(metavar="TENANT", help="tenant name")],
) -> None:
    """Create a key; prints its id and the key (shown once)."""
    from app.db.session import session_scope
    from app.services.keys import create_key

    with session_scope(database_url(get_settings())) as session:
        row, plain = create_key(session, tenant)
        print(f"{row.id} {plain}")


@keys_app.command("list")
def keys_list() -> None:
    """List keys (prefixes only)."""
    from app.db.session import session_scope
    from app.services.keys import list_keys

    with session_scope(database_url(get_settings())) as session:
        for key, tenant in list_keys(session):
            state = "revoked" if key.revoked_at else "active"
            print(f"{key.id}\t{tenant.name}\t{key.prefix}...\t{state}\t{key.created_at}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="the key (key_...)")],
) -> None:
    """Revoke a key by id."""
    from app.db.session import session_scope
    from app.services.keys import revoke_key

    with session_scope(database_url(get_settings())) as session:
        if not revoke_key(session, key_id):
            raise typer.BadParameter(f"no active key {key_id}")


@keys_app.command("limits")
def keys_limits(
    tenant: Annotated[str, typer.Argument(metavar="TENANT", help="tenant name")],
    max_active_jobs: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="jobs queued or running at once")
    ] = None,
    submissions_per_minute: Annotated[
        int | None, typer.Option(metavar="N", min=1, help="job submissions per minute")
    ] = None,
    max_stored_bytes: Annotated[
        int | None,
        typer.Option(metavar="BYTES", min=0, help="bytes of uploads and artifacts kept"),
    ] = None,
    max_priority: Annotated[
        int | None,
        typer.Option(metavar="P", min=0, max=9, help="the highest priority its jobs may ask"),
    ] = None,
    reset: Annotated[bool, typer.Option(help="back to the service-wide defaults")] = False,
) -> None:
    """Show or set a tenant's limits (unset ones follow the KD_* defaults)."""
    from sqlalchemy import select

    from app.db.models import Tenant
    from app.db.session import session_scope
    from app.services.quotas import Limits, limits_for

    settings = get_settings()
    given = {
        "max_active_jobs": max_active_jobs,
        "submissions_per_minute": submissions_per_minute,
        "max_stored_bytes": max_stored_bytes,
        "max_priority": max_priority,
    }
    with session_scope(database_url(settings)) as session:
        row = session.scalar(select(Tenant).where(Tenant.name == tenant))
        if row is None:
            raise typer.BadParameter(f"no tenant {tenant!r}")
        for name in Limits.__dataclass_fields__:
            if reset:
                setattr(row, name, None)
            elif given[name] is not None:
                setattr(row, name, given[name])
        for name, value in vars(limits_for(row, settings)).items():
            source = "tenant" if getattr(row, name) is not None else "default"
            print(f"{name}\t{value}\t({source})")


def migrate() -> None:
    """Upgrade the database to the latest schema."""
    from app.db.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    print(f"kd: database at head ({settings.db_url.split('@')[-1]})", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(worker)
    app.command()(migrate)
    app.add_typer(keys_app, name="keys")
