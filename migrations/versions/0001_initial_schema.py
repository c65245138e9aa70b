"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-27 14:27:39.170728
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "comparisonset",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("base_recipe_sha256", sa.String(length=64), nullable=False),
        sa.Column("factor", sa.String(), nullable=False),
        sa.Column("diff", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparisonset")),
    )
    op.create_table(
        "savedrecipe",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("yaml_text", sa.Text(), nullable=False),
        sa.Column("canonical_json", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_savedrecipe")),
        sa.UniqueConstraint("name", name=op.f("uq_savedrecipe_name")),
    )
    with op.batch_alter_table("savedrecipe", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_savedrecipe_sha256"), ["sha256"], unique=False)

    op.create_table(
        "worker",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("slots", sa.JSON(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("current_run_ids", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker")),
    )
    op.create_table(
        "run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("comparison_set_id", sa.Integer(), nullable=True),
        sa.Column("recipe_json", sa.Text(), nullable=False),
        sa.Column("recipe_sha256", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("consecutive_crashes", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fencing_token", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error_tail", sa.Text(), nullable=True),
        sa.Column("run_dir", sa.String(), nullable=False),
        sa.Column("depends_on_run_id", sa.Integer(), nullable=True),
        sa.Column("gpus_requested", sa.Integer(), nullable=False),
        sa.Column("diff", sa.JSON(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'waiting', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_run_status"),
        ),
        sa.ForeignKeyConstraint(
            ["comparison_set_id"], ["comparisonset.id"], name=op.f("fk_run_comparison_set_id_comparisonset")
        ),
        sa.ForeignKeyConstraint(["depends_on_run_id"], ["run.id"], name=op.f("fk_run_depends_on_run_id_run")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run")),
    )
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.create_index("ix_run_claim", ["status", "priority", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_run_comparison_set_id"), ["comparison_set_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_run_depends_on_run_id"), ["depends_on_run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_run_recipe_sha256"), ["recipe_sha256"], unique=False)

    op.create_table(
        "evaluation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("benchmark", sa.String(), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("pass_at_k", sa.Float(), nullable=False),
        sa.Column("ci_low", sa.Float(), nullable=False),
        sa.Column("ci_high", sa.Float(), nullable=False),
        sa.Column("n_problems", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_evaluation_run_id_run")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation")),
    )
    with op.batch_alter_table("evaluation", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evaluation_run_id"), ["run_id"], unique=False)

    op.create_table(
        "metricblob",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_metricblob_run_id_run")),
        sa.PrimaryKeyConstraint("run_id", "seq", name=op.f("pk_metricblob")),
    )
    op.create_table(
        "metricpoint",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name=op.f("fk_metricpoint_run_id_run")),
        sa.PrimaryKeyConstraint("run_id", "seq", "name", name=op.f("pk_metricpoint")),
    )
    with op.batch_alter_table("metricpoint", schema=None) as batch_op:
        batch_op.create_index("ix_metricpoint_run_name_step", ["run_id", "name", "step"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("metricpoint", schema=None) as batch_op:
        batch_op.drop_index("ix_metricpoint_run_name_step")

    op.drop_table("metricpoint")
    op.drop_table("metricblob")
    with op.batch_alter_table("evaluation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluation_run_id"))

    op.drop_table("evaluation")
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_recipe_sha256"))
        batch_op.drop_index(batch_op.f("ix_run_depends_on_run_id"))
        batch_op.drop_index(batch_op.f("ix_run_comparison_set_id"))
        batch_op.drop_index("ix_run_claim")

    op.drop_table("run")
    op.drop_table("worker")
    with op.batch_alter_table("savedrecipe", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_savedrecipe_sha256"))

    op.drop_table("savedrecipe")
    op.drop_table("comparisonset")
