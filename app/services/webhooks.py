"""Webhooks: a signed POST on each terminal state, through an outbox.

1. The transaction that ends a job also writes its `webhook_deliveries` row (see
   `app.services.lifecycle.transition`): a job never ends without its delivery being
   recorded, whichever path ended it (worker, reaper, cancel route).
2. The `Dispatcher` (a thread in `kd serve` and in `kd worker`) claims due rows with a
   conditional UPDATE, commits, and only then sends them: no database connection is
   held during network I/O. At most `webhook_concurrency` requests run at once, each
   limited by `webhook_timeout_s`. A failed attempt is due again after 1 s, 2 s, 4 s...;
   after `webhook_attempts` the row is `failed`. Rows left pending by a restart are
   picked up by the next loop in any process.
3. Every attempt checks the destination again (app.services.egress) and connects to the
   address it checked. Redirects are never followed.

Signature header: `KD-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
the tenant's secret, as in Stripe's scheme: receivers check the HMAC and reject old `t`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.db.models import Job, Tenant, WebhookDelivery, utcnow
from app.db.session import session_scope
from app.services.egress import AllowList, EgressRefused, resolve
from app.settings import Settings

log = logging.getLogger("kd.webhooks")
_WAKE = threading.Event()  # set after a commit that queued a delivery in this process


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def payload(job: Job) -> dict[str, Any]:
    return {
        "type": f"job.{job.status}",
        "job": {
            "id": job.id,
            "name": job.name,
            "status": job.status,
            "error": job.error,
            "finished_at": job.finished_at.isoformat() + "Z" if job.finished_at else None,
            # the readiness verdict (spec `gate`), so a pipeline can ship or not on it
            "gate": (job.report or {}).get("gate"),
        },
    }


def enqueue(session: Session, job: Job) -> int | None:
    """Write the outbox row for the job's current (terminal) state, in the caller's
    transaction. Called by app.services.lifecycle only."""
    if not job.webhook_url:
        return None
    row = WebhookDelivery(
        job_id=job.id,
        url=job.webhook_url,
        event=f"job.{job.status}",
        payload=payload(job),
        next_attempt_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row.id


def wake() -> None:
    """Tell this process's dispatcher that a delivery was committed (it also polls)."""
    _WAKE.set()


def _claim_due(settings: Settings, limit: int) -> list[tuple[int, str, bytes, str, int]]:
    """Claim up to `limit` due deliveries: (id, url, body, secret, attempt). The claim
    pushes next_attempt_at past the attempt's deadline, so another process does not
    take the same row, and a process that dies mid-attempt leaves it due again."""
    now = utcnow()
    claimed = []
    with session_scope(settings.db_url) as session:
        rows = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.attempts)
            .where(
                WebhookDelivery.status == "pending",
                or_(
                    WebhookDelivery.next_attempt_at.is_(None),
                    WebhookDelivery.next_attempt_at <= now,
                ),
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(limit)
        ).all()
        hold = timedelta(seconds=2 * settings.webhook_timeout_s + 10)
        for delivery_id, attempts in rows:
            result = session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.attempts == attempts,
                )
                .values(attempts=attempts + 1, next_attempt_at=now + hold)
            )
            if getattr(result, "rowcount", 0) != 1:
                continue
            row = session.get(WebhookDelivery, delivery_id)
            job = session.get(Job, row.job_id) if row is not None else None
            tenant = session.get(Tenant, job.tenant_id) if job is not None else None
            if row is None or job is None or tenant is None:
                continue
            body = json.dumps(row.payload or payload(job)).encode()
            claimed.append((delivery_id, row.url, body, tenant.webhook_secret, attempts + 1))
    return claimed


def _attempt(
    settings: Settings, url: str, body: bytes, secret: str
) -> tuple[int | None, str | None]:
    """One POST. Returns (HTTP status or None, error or None). No database here."""
    try:
        target = resolve(url, AllowList.parse(settings.webhook_allow))
    except EgressRefused as exc:
        return None, f"refused: {exc}"
    headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "KD-Signature": sign(secret, body, int(time.time())),
        "User-Agent": "kdservice-webhooks/1",
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with httpx.Client(
            timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False
        ) as client:
            request = client.build_request(
                "POST", target.connect_url, content=body, headers=headers, extensions=extensions
            )
            response = client.send(request, stream=True)  # the body is never read
            response.close()
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}"


def _record(
    settings: Settings, delivery_id: int, attempt: int, status_code: int | None, error: str | None
) -> None:
    final = error is None or error.startswith("refused") or attempt >= settings.webhook_attempts
    values: dict[str, Any] = {"response_status": status_code, "last_error": error}
    if error is None:
        values.update(status="delivered", delivered_at=utcnow(), next_attempt_at=None)
    elif final:
        values.update(status="failed", next_attempt_at=None)
    else:
        backoff = min(60.0, 2.0 ** (attempt - 1))
        values.update(next_attempt_at=utcnow() + timedelta(seconds=backoff))
    with session_scope(settings.db_url) as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempts == attempt)
            .values(**values)
        )


def deliver_one(settings: Settings, claimed: tuple[int, str, bytes, str, int]) -> None:
    delivery_id, url, body, secret, attempt = claimed
    status_code, error = _attempt(settings, url, body, secret)
    try:
        _record(settings, delivery_id, attempt, status_code, error)
    except SQLAlchemyError as exc:  # the claim lapses and the attempt is made again
        log.warning("webhook %s: result not recorded: %s", delivery_id, exc)


def deliver_due(settings: Settings, pool: ThreadPoolExecutor | None = None) -> int:
    """Claim and send what is due now (all of it, `webhook_concurrency` at a time);
    returns how many attempts were made. Used by the Dispatcher and by tests."""
    made = 0
    own = pool is None
    pool = pool or ThreadPoolExecutor(settings.webhook_concurrency)
    try:
        while batch := _claim_due(settings, settings.webhook_concurrency):
            list(pool.map(lambda c: deliver_one(settings, c), batch))
            made += len(batch)
    finally:
        if own:
            pool.shutdown()
    return made


class Dispatcher:
    """The delivery loop: wakes when this process queued a delivery, else every
    `webhook_poll_s` (deliveries queued by other processes, retries, restarts)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(settings.webhook_concurrency, "kd-webhook")
        self.thread = threading.Thread(target=self._loop, name="kd-webhooks", daemon=True)

    def start(self) -> Dispatcher:
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop.is_set():
            _WAKE.wait(self.settings.webhook_poll_s)
            _WAKE.clear()
            if self.stop.is_set():
                break
            try:
                deliver_due(self.settings, self.pool)
            except SQLAlchemyError as exc:
                log.warning("webhook dispatcher skipped a round: %s", exc)
            except Exception:  # keep the loop alive whatever one delivery did
                log.exception("webhook dispatcher: unexpected error")
        self.pool.shutdown(wait=False)
