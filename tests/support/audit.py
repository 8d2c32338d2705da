"""Checks on a job's recorded history, shared by the lifecycle and fault tests."""

from __future__ import annotations

from sqlalchemy import select

from app.db.models import TERMINAL, JobEvent, JobTransition, WebhookDelivery
from app.db.session import session_scope


def assert_ended_once(db_url: str, job_id: str, status: str, webhook: bool = True) -> None:
    """Exactly one terminal transition (to `status`), one terminal `status` event and,
    for a job with a webhook_url, one outbox row for that end."""
    with session_scope(db_url) as session:
        ends = session.scalars(
            select(JobTransition.to_status).where(
                JobTransition.job_id == job_id, JobTransition.to_status.in_(TERMINAL)
            )
        ).all()
        events = [
            e.data["status"]
            for e in session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "status")
            )
            if e.data.get("status") in TERMINAL
        ]
        deliveries = session.scalars(
            select(WebhookDelivery.event).where(WebhookDelivery.job_id == job_id)
        ).all()
    assert list(ends) == [status], ends
    assert events == [status], events
    assert list(deliveries) == ([f"job.{status}"] if webhook else []), deliveries
