"""webhook outbox (due time, frozen payload), per-tenant limits, finished_at index

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 16:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIMITS = ("max_active_jobs", "submissions_per_minute", "max_priority")


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("payload", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(), nullable=True))
        batch.create_index("ix_webhook_deliveries_due", ["status", "next_attempt_at"])
    with op.batch_alter_table("tenants") as batch:
        for name in LIMITS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_stored_bytes", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.create_index("ix_jobs_finished_at", ["finished_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_finished_at")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("max_stored_bytes")
        for name in reversed(LIMITS):
            batch.drop_column(name)
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_index("ix_webhook_deliveries_due")
        batch.drop_column("next_attempt_at")
        batch.drop_column("payload")
