"""`kd`: run the service (serve, worker), manage API keys, migrate the database."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from app.settings import Settings, get_settings


def _key_file(settings: Settings) -> Path:
    return settings.data_dir / "api_key"


def _first_start_key(settings: Settings) -> None:
    """On the first start, create a key for tenant 'default', store it 0600, print it."""
    from app.db.session import session_scope
    from app.services.keys import any_key, create_key

    path = _key_file(settings)
    with session_scope(settings.db_url) as session:
        if any_key(session):
            if path.exists():
                print(f"kd: API key in {path}", file=sys.stderr)
            return
        _, plain = create_key(session, "default")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(plain + "\n")
    print(
        f"kd: created an API key for tenant 'default' (saved to {path}):\n{plain}", file=sys.stderr
    )


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app, prepare

    settings = get_settings()
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    prepare(settings)
    _first_start_key(settings)
    mode = f"Celery via {settings.broker_url}" if settings.broker_url else "local executor"
    print(
        f"kd: serving on http://{settings.host}:{settings.port} ({mode}, "
        f"database {settings.db_url.split('@')[-1]})",
        file=sys.stderr,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    return 0


def worker(args: argparse.Namespace) -> int:
    from worker.maintenance import Maintenance

    settings = get_settings()
    if not settings.broker_url:
        print("kd: error: `kd worker` needs KD_BROKER_URL (a Redis URL)", file=sys.stderr)
        return 2
    from worker.tasks import app

    Maintenance(settings).start()
    argv = [
        "worker",
        "--loglevel",
        args.loglevel,
        "--concurrency",
        "1",
        "--pool",
        "prefork",
        "--max-tasks-per-child",
        "1",
        "--queues",
        "kd",
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        args.hostname,
    ]
    app.worker_main(argv)
    return 0


def keys(args: argparse.Namespace) -> int:
    from app.db.session import session_scope
    from app.services.keys import create_key, list_keys, revoke_key

    settings = get_settings()
    with session_scope(settings.db_url) as session:
        if args.keys_command == "create":
            row, plain = create_key(session, args.tenant)
            print(f"{row.id} {plain}")
        elif args.keys_command == "list":
            for key, tenant in list_keys(session):
                state = "revoked" if key.revoked_at else "active"
                print(f"{key.id}\t{tenant.name}\t{key.prefix}...\t{state}\t{key.created_at}")
        elif not revoke_key(session, args.key_id):
            print(f"kd: error: no active key {args.key_id}", file=sys.stderr)
            return 2
    return 0


def migrate(args: argparse.Namespace) -> int:
    from app.db.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    print(f"kd: database at head ({settings.db_url.split('@')[-1]})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the API (and, with no broker, the local executor)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=serve)
    p = sub.add_parser("worker", help="run a Celery worker (one per GPU)")
    p.add_argument("--loglevel", default="warning")
    p.add_argument("--hostname", default=f"kd@{os.uname().nodename}-{os.getpid()}")
    p.set_defaults(func=worker)
    p = sub.add_parser("keys", help="manage API keys")
    ks = p.add_subparsers(dest="keys_command", required=True)
    c = ks.add_parser("create")
    c.add_argument("--tenant", required=True)
    ks.add_parser("list")
    r = ks.add_parser("revoke")
    r.add_argument("key_id")
    p.set_defaults(func=keys)
    p = sub.add_parser("migrate", help="upgrade the database to the latest schema")
    p.set_defaults(func=migrate)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except Exception as exc:  # settings errors, unreachable database...
        from pydantic import ValidationError

        if isinstance(exc, ValidationError | OSError) or "sqlalchemy" in type(exc).__module__:
            print(f"kd: error: {exc}".splitlines()[0], file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
