"""job routing: queue (worker pool) and priority

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 05:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("queue", sa.String(length=100), server_default="kd", nullable=False)
        )
        batch.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
        batch.create_index(
            "ix_jobs_queue_order", ["status", "queue", "priority", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_queue_order")
        batch.drop_column("priority")
        batch.drop_column("queue")
