"""job_slots: one host's place in a job that runs on several hosts (resources.nodes)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_slots",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("node_rank", sa.Integer(), nullable=True),
        sa.Column("rendezvous", sa.String(260), nullable=True),
        sa.Column("offered_at", sa.DateTime(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("job_id", "host", name="uq_job_slots_job_host"),
    )
    op.create_index("ix_job_slots_job_id", "job_slots", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_slots_job_id", "job_slots")
    op.drop_table("job_slots")
