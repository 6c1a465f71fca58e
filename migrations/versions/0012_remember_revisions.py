"""Remember-set revisions: the reference remember set is versioned with the model.

Every existing model gets revision 1 (its objects as stored, listed at first use) and every existing version
points at it. People erased before this migration are still in revision 1: their erasure was applied to that
job's remember set only (see README, "Erasure after erasure").

Revision ID: 0012
Revises: 0016
Create Date: 2025-01-12
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "remember_revisions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model_id", sa.String(32), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("parent", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("job_ids", sa.JSON(), nullable=False),
        sa.Column("objects", sa.JSON(), nullable=True),
        sa.Column("images", sa.Integer(), nullable=True),
        sa.Column("removed", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("purged_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("model_id", "revision", name="uq_remember_revisions_revision"),
    )
    op.create_index("ix_remember_revisions_model_id", "remember_revisions", ["model_id"])
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("remember_revision", sa.Integer(), nullable=True))
    op.execute(
        "INSERT INTO remember_revisions (model_id, revision, parent, run_id, job_ids, objects, images, removed, "
        "created_at) SELECT id, 1, NULL, NULL, '[]', NULL, NULL, '[]', created_at FROM models"
    )
    op.execute("UPDATE model_versions SET remember_revision = 1")


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("remember_revision")
    op.drop_table("remember_revisions")
