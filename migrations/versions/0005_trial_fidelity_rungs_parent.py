"""trial fidelity, rung, parent and planned epochs

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:50:00.000000

- `trials.fidelity`: the fraction of the strategy's full fine-tuning this trial's weights have
  had (1.0: a full-fidelity result, the only kind the best trial and the front use).
- `trials.rung`: the successive-halving rung (0: a new proposal; k + 1: continued from the
  rung-k trial named by `parent_trial_id`).
- `trials.parent_trial_id`: the trial whose checkpoint this one starts from: the rung-lower
  trial it continues, or the finished trial it extends (a warm start).
- `trials.epochs`: the fine-tuning epochs this trial runs (what `budget.max_epochs` counts).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("fidelity", sa.Float(), nullable=False, server_default=sa.text("1.0"))
        )
        batch_op.add_column(
            sa.Column("rung", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.add_column(sa.Column("parent_trial_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("epochs", sa.Float(), nullable=True))
        batch_op.create_foreign_key(
            "fk_trials_parent_trial_id", "trials", ["parent_trial_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.drop_constraint("fk_trials_parent_trial_id", type_="foreignkey")
        batch_op.drop_column("epochs")
        batch_op.drop_column("parent_trial_id")
        batch_op.drop_column("rung")
        batch_op.drop_column("fidelity")
