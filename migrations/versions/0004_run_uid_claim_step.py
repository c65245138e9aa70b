"""run.uid (the run's identity, stamped into its directory) and run.claim_step (progress of an attempt)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 19:20:00
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("uid", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("claim_step", sa.Integer(), nullable=False, server_default="0"))
    run = sa.table("run", sa.column("id", sa.Integer()), sa.column("uid", sa.String()))
    conn = op.get_bind()
    for (run_id,) in conn.execute(sa.select(run.c.id)).all():  # existing runs get an identity of their own
        conn.execute(sa.update(run).where(run.c.id == run_id).values(uid=uuid.uuid4().hex))
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.alter_column("uid", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_run_uid"), ["uid"])


def downgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_run_uid"), type_="unique")
        batch_op.drop_column("claim_step")
        batch_op.drop_column("uid")
