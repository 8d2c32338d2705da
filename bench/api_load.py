"""API capacity on this machine: `kd serve` as a real process on each database, and a
separate load generator (wrk for request rates, a Python asyncio client for SSE and
end-to-end latency). For each database (the embedded default: SQLite + the local
executor; and PostgreSQL + Redis), in the same run, wrk measures requests/s and p50/p99
of

  GET /healthz (the empty route: the ceiling), GET /v1/jobs/{id} of a finished job,
  the same with If-None-Match (304), GET /v1/jobs?limit=50, POST /v1/jobs

and prints each rate as a ratio to /healthz's, and /healthz's p99/p50 (event-loop
stalls). On PostgreSQL it then measures 500 SSE watchers (server memory per watcher,
delivery delay) and POST -> `running` with an idle `kd worker`.

    python bench/api_load.py [--db both|sqlite|postgresql] [--workers 1] [--duration 10]
                             [--connections 32] [--jobs 2000] [--watchers 500]

PostgreSQL runs in a throwaway database and Redis db 7, both removed after; SQLite in a
temporary data folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KEY = "kd_bench_" + secrets.token_hex(8)
TINY = {
    "name": "load",
    "kind": "train",
    "student": {"arch": "mlp_small"},
    "dataset": {"builtin": "synthetic", "num_samples": 64, "num_classes": 2, "shape": [4]},
    "training": {"epochs": 1, "batch_size": 32},
}


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += int(re.search(r"VmRSS:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    return total


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [pid, *(int(p) for p in out.split())]


def seed(db_url: str, count: int) -> list[str]:
    """`count` finished jobs with transitions, events and a report, as a service that
    has been running for a while holds them."""
    from app.db import repository as repo
    from app.db.models import Job, new_id, utcnow
    from app.db.session import session_scope
    from app.services.keys import tenant_for_key

    report = {"student": {"arch": "mlp_small", "accuracy": 0.9, "parameters": 6570}}
    ids = []
    with session_scope(db_url) as session:
        tenant = tenant_for_key(session, KEY)
        assert tenant is not None
        start = utcnow() - timedelta(days=1)
        for i in range(count):
            job = Job(
                id=new_id("job"),
                tenant_id=tenant.id,
                name=f"seeded-{i}",
                kind="train",
                status="queued",
                spec=TINY,
                max_attempts=3,
                progress={"epoch": 1, "epochs": 1, "step": 2, "total_steps": 2},
                created_at=start + timedelta(seconds=i),
            )
            session.add(job)
            session.flush()
            repo.record_created(session, job)
            repo.change_status(session, job.id, ("queued",), "running", "claimed")
            repo.change_status(
                session, job.id, ("running",), "succeeded", "training finished", report=report
            )
            ids.append(job.id)
            if i % 200 == 199:
                session.commit()
    return ids


def wrk(url: str, duration: int, connections: int, script: Path | None = None) -> dict[str, float]:
    # one wrk thread: on 2 cores a second one would mostly take CPU from the server
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    cmd += ["-H", f"Authorization: Bearer {KEY}"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


async def sse_watchers(
    base: str, db_url: str, broker: str, job_id: str, watchers: int, pids: list[int]
) -> dict[str, float]:
    """Open `watchers` streams on one running job, append events with their send time,
    and measure when each watcher receives them."""
    from app.db import repository as repo
    from app.db.models import Job
    from app.db.session import session_scope
    from app.nudge import nudge

    limits = httpx.Limits(max_connections=watchers + 10, max_keepalive_connections=watchers + 10)
    headers = {"Authorization": f"Bearer {KEY}"}
    before = rss_kib(pids)
    delays: list[float] = []
    connected = 0
    ready = asyncio.Event()
    timeout = httpx.Timeout(30, read=120)

    with session_scope(db_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        last_seq = str(job.event_seq)  # watch from now on: only the events sent below

    async def watch(client: httpx.AsyncClient) -> None:
        nonlocal connected
        async with client.stream(
            "GET",
            f"/v1/jobs/{job_id}/events/stream",
            headers={**headers, "Last-Event-ID": last_seq},
        ) as r:
            connected += 1
            if connected == watchers:
                ready.set()
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    data = json.loads(line[6:])
                    if "sent_at" in data:
                        delays.append(time.time() - data["sent_at"])
                    if data.get("status") == "succeeded":
                        return

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        tasks = [asyncio.create_task(watch(client)) for _ in range(watchers)]
        await asyncio.wait_for(ready.wait(), 120)
        await asyncio.sleep(2)
        during = rss_kib(pids)
        for _ in range(10):
            with session_scope(db_url) as session:
                repo.append_event(session, job_id, "progress", {"sent_at": time.time()})
            nudge(broker, job_id)
            await asyncio.sleep(0.5)
        with session_scope(db_url) as session:
            repo.change_status(session, job_id, ("running",), "succeeded", "bench done")
        nudge(broker, job_id)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    delays.sort()
    return {
        "watchers": watchers,
        "events_received": len(delays),
        "kib_per_watcher": (during - before) / watchers,
        "delay_p50_ms": 1000 * statistics.median(delays),
        "delay_p99_ms": 1000 * delays[int(0.99 * (len(delays) - 1))],
    }


def post_to_running(base: str, runs: int) -> dict[str, float]:
    """Submit one tiny job at a time to an idle worker; the delay is from the POST's
    response to the `running` transition (server clock for both ends)."""
    delays = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        for _ in range(runs):
            job = c.post("/v1/jobs", json=TINY).json()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                current = c.get(f"/v1/jobs/{job['id']}").json()
                if current["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.2)
            t = {x["to_status"]: x["at"] for x in current["status_transitions"]}
            assert "running" in t, current["status_transitions"]

            def parse(s: str) -> datetime:
                return datetime.fromisoformat(s.rstrip("Z"))

            delays.append((parse(t["running"]) - parse(t["queued"])).total_seconds())
    delays.sort()
    return {
        "runs": runs,
        "p50_ms": 1000 * statistics.median(delays),
        "p99_ms": 1000 * delays[int(0.99 * (len(delays) - 1))],
    }


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kdservice.cli", *args],
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_ready(base: str) -> None:
    for _ in range(240):
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{base} did not become ready")


def rates(base: str, ids: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """wrk on each request type, the same duration and connections; `--repeats` rounds
    over all of them (so a slow moment of the machine falls on every route alike), each
    figure the median of its rounds. A short warm-up first fills the caches."""
    finished = f"{base}/v1/jobs/{ids[len(ids) // 2]}"
    etag = httpx.get(finished, headers={"Authorization": f"Bearer {KEY}"}).headers.get("etag")
    inm, post, pages = tmp / "inm.lua", tmp / "post.lua", tmp / "pages.lua"
    # every request a different page (after= a different job): no two in flight alike,
    # so coalescing of identical requests does not help
    cursors = ",".join(json.dumps(i) for i in ids[50 : len(ids) : 7][:256])
    pages.write_text(
        f"local cursors = {{{cursors}}}\nlocal n = 0\n"
        "request = function()\n  n = n + 1\n"
        '  return wrk.format("GET", "/v1/jobs?limit=50&after=" .. cursors[(n % #cursors) + 1])\n'
        "end\n"
    )
    inm.write_text(f'wrk.headers["If-None-Match"] = {json.dumps(etag or "")}\n')
    post.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(TINY))}\n"
    )
    routes: dict[str, tuple[str, Path | None]] = {
        "GET /healthz": (f"{base}/healthz", None),
        "GET /v1/jobs/{id}": (finished, None),
        "GET /v1/jobs/{id} 304": (finished, inm),
        "GET /v1/jobs?limit=50": (f"{base}/v1/jobs?limit=50", None),
        "  ... distinct pages": (f"{base}/v1/jobs", pages),
    }
    for url, script in routes.values():
        wrk(url, 1, args.connections, script)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in routes}
    for _ in range(args.repeats):
        for name, (url, script) in routes.items():
            rounds[name].append(wrk(url, args.duration, args.connections, script))
    results = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in rounds.items()
    }
    # last: it adds jobs (and, on the embedded default, work for the local executor)
    results["POST /v1/jobs"] = wrk(f"{base}/v1/jobs", args.duration, args.connections, post)
    return results


def print_rates(title: str, results: dict[str, Any]) -> None:
    ceiling = results["GET /healthz"]
    print(f"\n{title} (medians of the rounds; POST: one run, non-2xx are 429s of the quota)")
    print(f"{'request':<26}{'req/s':>9}{'x healthz':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for name, r in results.items():
        print(
            f"{name:<26}{r['rps']:>9.1f}{r['rps'] / ceiling['rps']:>10.2f}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>9.0f}"
        )
    print(f"/healthz p99/p50: {ceiling['p99_ms'] / max(ceiling['p50_ms'], 1e-3):.1f}")


def run_sqlite(args: argparse.Namespace) -> None:
    """The embedded default: `kd serve` with SQLite and the local executor (idle)."""
    tmp = Path(tempfile.mkdtemp(prefix="kd_api_load_sqlite_"))
    port = 18000 + secrets.randbelow(1000)
    env = {
        "KD_DATABASE_URL": "",
        "KD_BROKER_URL": "",
        "KD_DATA_DIR": str(tmp / "data"),
        "KD_BOOTSTRAP_API_KEY": KEY,
        "KD_LOG_LEVEL": "warning",
        "KD_PORT": str(port),
    }
    base = f"http://127.0.0.1:{port}"
    server = start(["serve"], env, tmp / "serve.log")
    try:
        wait_ready(base)
        db_url = f"sqlite:///{tmp / 'data' / 'kdservice.db'}"
        ids = seed(db_url, args.jobs)
        print(
            f"\nkd serve: embedded default (SQLite + local executor, 1 process); {len(ids)} "
            f"jobs; wrk -t1 -c{args.connections} -d{args.duration}s x {args.repeats}; "
            f"{os.cpu_count()} cores"
        )
        print_rates("SQLite", rates(base, ids, args, tmp))
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["both", "sqlite", "postgresql"], default="both")
    parser.add_argument("--workers", type=int, default=1, help="kd serve processes (PostgreSQL)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians are printed")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--watchers", type=int, default=500, help="0: skip the SSE test")
    parser.add_argument("--runs", type=int, default=8, help="POST -> running samples (0: skip)")
    args = parser.parse_args()
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cpu_model())
    if args.db in ("both", "sqlite"):
        run_sqlite(args)
    if args.db in ("both", "postgresql"):
        run_postgresql(args)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run_postgresql(args: argparse.Namespace) -> None:
    db = f"kd_bench_{secrets.token_hex(4)}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    db_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    broker = "redis://127.0.0.1:6379/7"
    redis.Redis.from_url(broker).flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="kd_api_load_"))
    port = 18000 + secrets.randbelow(1000)
    env = {
        "KD_ENVIRONMENT": "production",
        "KD_DATABASE_URL": db_url,
        "KD_BROKER_URL": broker,
        "KD_DATA_DIR": str(tmp / "data"),
        "KD_BOOTSTRAP_API_KEY": KEY,
        "KD_LOG_LEVEL": "warning",
        "KD_PORT": str(port),
    }
    os.environ.update({k: v for k, v in env.items() if k != "KD_PORT"})
    subprocess.run(
        [sys.executable, "-m", "kdservice.cli", "migrate"],
        env={**os.environ, **env},
        check=True,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    server = start(["serve", "--workers", str(args.workers)], env, tmp / "serve.log")
    worker = None
    try:
        wait_ready(base)
        from app.db.session import session_scope
        from app.services.keys import ensure_key

        with session_scope(db_url) as session:
            ensure_key(session, "default", KEY)
        ids = seed(db_url, args.jobs)
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{db}", autocommit=True) as c:
            c.execute("VACUUM ANALYZE")  # steady state: not autovacuum after the seeding
        print(
            f"\nkd serve: PostgreSQL + Redis, {args.workers} process(es); {len(ids)} jobs; "
            f"wrk -t1 -c{args.connections} -d{args.duration}s x {args.repeats}; "
            f"{os.cpu_count()} cores"
        )
        print_rates("PostgreSQL", rates(base, ids, args, tmp))
        if args.watchers:
            # SSE: a job that is "running" (no worker yet), `--watchers` watchers
            watched = ids[0]
            with session_scope(db_url) as session:
                session.execute(
                    text("UPDATE jobs SET status='running' WHERE id=:i"), {"i": watched}
                )
            sse = asyncio.run(
                sse_watchers(base, db_url, broker, watched, args.watchers, children(server.pid))
            )
            print(
                f"\nSSE: {sse['watchers']} watchers, {sse['events_received']} events received, "
                f"{sse['kib_per_watcher']:.1f} KiB of server memory per watcher, delivery "
                f"delay p50 {sse['delay_p50_ms']:.1f} ms, p99 {sse['delay_p99_ms']:.1f} ms"
            )
        if args.runs:
            # POST -> running with an idle worker; drain the jobs the POST test queued
            with session_scope(db_url) as session:
                session.execute(text("UPDATE jobs SET status='cancelled' WHERE status='queued'"))
            redis.Redis.from_url(broker).flushdb()  # and their messages: the worker idles
            worker = start(["worker"], env, tmp / "worker.log")
            time.sleep(8)  # the worker connects and idles
            e2e = post_to_running(base, args.runs)
            print(
                f"POST -> running (idle worker, {e2e['runs']} jobs one at a time): "
                f"p50 {e2e['p50_ms']:.0f} ms, p99 {e2e['p99_ms']:.0f} ms"
            )
    finally:
        if worker is not None:
            stop(worker)
        stop(server)
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
