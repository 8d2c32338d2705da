"""Webhooks: a signed POST on each terminal state, retried with backoff.

Signature header: `KD-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
the tenant's secret, as in Stripe's scheme: receivers check the HMAC and reject old `t`.
Redirects are never followed and every attempt has a time limit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx
from sqlalchemy.orm import Session

from app.db.models import Job, Tenant, WebhookDelivery, utcnow
from app.db.session import session_scope
from app.settings import Settings


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
        },
    }


def enqueue(session: Session, job: Job) -> int | None:
    if not job.webhook_url:
        return None
    row = WebhookDelivery(job_id=job.id, url=job.webhook_url, event=f"job.{job.status}")
    session.add(row)
    session.flush()
    return row.id


def deliver(settings: Settings, delivery_id: int) -> None:
    """Try the delivery up to `webhook_attempts` times, backing off 1 s, 2 s, 4 s..."""
    with session_scope(settings.db_url) as session:
        row = session.get(WebhookDelivery, delivery_id)
        if row is None or row.status != "pending":
            return
        job = session.get(Job, row.job_id)
        tenant = session.get(Tenant, job.tenant_id) if job else None
        if job is None or tenant is None:
            return
        body = json.dumps(payload(job)).encode()
        url, secret = row.url, tenant.webhook_secret
    status, error, response_status, attempts = "failed", None, None, 0
    for attempt in range(settings.webhook_attempts):
        attempts = attempt + 1
        ts = int(time.time())
        try:
            response = httpx.post(
                url,
                content=body,
                timeout=settings.webhook_timeout_s,
                follow_redirects=False,
                headers={
                    "Content-Type": "application/json",
                    "KD-Signature": sign(secret, body, ts),
                    "User-Agent": "kdservice-webhooks/1",
                },
            )
            response_status = response.status_code
            if 200 <= response.status_code < 300:
                status, error = "delivered", None
                break
            error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if attempt + 1 < settings.webhook_attempts:
            time.sleep(min(30.0, 2.0**attempt))
    with session_scope(settings.db_url) as session:
        row = session.get(WebhookDelivery, delivery_id)
        if row is not None:
            row.status, row.attempts, row.last_error = status, attempts, error
            row.response_status = response_status
            row.delivered_at = utcnow() if status == "delivered" else None
