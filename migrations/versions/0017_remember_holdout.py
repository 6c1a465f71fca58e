"""A model's optional held-out remember set (issue 17): `models.remember_holdout_prefix`.

Revision ID: 0017
Revises: 0001
Create Date: 2025-01-17
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("remember_holdout_prefix", sa.String(500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("remember_holdout_prefix")
