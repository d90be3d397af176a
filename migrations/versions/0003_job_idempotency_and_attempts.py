"""job idempotency keys, trial attempts and send times

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 20:40:00.000000

- `jobs.idempotency_key` (unique) and `jobs.request_hash`: `POST /v1/jobs` with an
  `Idempotency-Key` header returns the job that key created instead of a duplicate.
- `trials.attempts`: the earlier attempts of a trial (time, worker, outcome); `error` keeps
  only the last attempt's failure.
- `trials.sent_at`: when the trial's message was last sent; the sweeper re-sends a queued
  trial whose message is older than the grace period and was never claimed.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_jobs_idempotency_key"), ["idempotency_key"], unique=True
        )
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.drop_column("sent_at")
        batch_op.drop_column("attempts")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_idempotency_key"))
        batch_op.drop_column("request_hash")
        batch_op.drop_column("idempotency_key")
