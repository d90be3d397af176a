"""events, owners of models, datasets and jobs, admin keys, trial stage

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 20:45:00.000000

- `events`: one row per change of a job or of one of its trials (trial queued, started,
  progress, finished, failed, cancelled; job started, finished); its id is the SSE id of
  `GET /v1/jobs/{id}/events`, so a client resumes with `Last-Event-ID`.
- `owner_key_id` on `artifacts`, `models` and `jobs`: the API key that created the row; with
  keys required, every route shows a key only its own rows (trials and checkpoints through
  their job).
- `api_keys.admin`: a key that sees every tenant's rows.
- `trials.stage`: what a running trial is doing (load, apply, finetune, save, measure).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OWNED = ("artifacts", "models", "jobs")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["trial_id"], ["trials.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_events_job_id"), "events", ["job_id"], unique=False)
    for table in OWNED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("owner_key_id", sa.Integer(), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_{table}_owner_key_id"), ["owner_key_id"])
            batch_op.create_foreign_key(
                f"fk_{table}_owner_key_id", "api_keys", ["owner_key_id"], ["id"]
            )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stage", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.drop_column("stage")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("admin")
    for table in reversed(OWNED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(f"fk_{table}_owner_key_id", type_="foreignkey")
            batch_op.drop_index(batch_op.f(f"ix_{table}_owner_key_id"))
            batch_op.drop_column("owner_key_id")
    op.drop_index(op.f("ix_events_job_id"), table_name="events")
    op.drop_table("events")
