"""Audit rows carry a keyed MAC (issue 11): `audit_log.mac`, HMAC-SHA256 of the row's hash under a key kept
outside the database (app/audit_anchor.py). Rows written before have none and verify as unanchored.

Revision ID: 0011
Revises: 0012
Create Date: 2025-02-11
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("mac", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("mac")
