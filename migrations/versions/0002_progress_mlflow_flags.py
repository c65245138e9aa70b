"""run progress, MLflow sync state, per-problem results, GPU stats, studio flags

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 15:48:54.163740
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "studioflag",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_studioflag")),
    )
    with op.batch_alter_table("evaluation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("per_problem", sa.JSON(), nullable=True))
    # server defaults fill the rows that already exist; the models give the same defaults in Python
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("total_steps", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("last_step", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("mlflow_run_id", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("mlflow_synced_seq", sa.Integer(), nullable=False, server_default="-1"))
        batch_op.add_column(sa.Column("mlflow_done", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("worker", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpu_stats", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("worker", schema=None) as batch_op:
        batch_op.drop_column("gpu_stats")
    with op.batch_alter_table("run", schema=None) as batch_op:
        for name in ("mlflow_done", "mlflow_synced_seq", "mlflow_run_id", "last_step", "total_steps", "name"):
            batch_op.drop_column(name)
    with op.batch_alter_table("evaluation", schema=None) as batch_op:
        batch_op.drop_column("per_problem")
    op.drop_table("studioflag")
