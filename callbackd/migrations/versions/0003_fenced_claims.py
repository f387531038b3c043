"""fenced claims, attempt leases, request age restart

Revision ID: 0003
Revises: 0007
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as t:
        t.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))
        t.add_column(sa.Column("age_from", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("attempts") as t:
        t.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))
        t.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        t.add_column(sa.Column("pbx", sa.String(length=128), nullable=False, server_default=""))
        t.create_index("ix_attempts_number_status", ["number", "status"])


def downgrade() -> None:
    with op.batch_alter_table("attempts") as t:
        t.drop_index("ix_attempts_number_status")
        t.drop_column("pbx")
        t.drop_column("lease_until")
        t.drop_column("claim_token")
    with op.batch_alter_table("requests") as t:
        t.drop_column("age_from")
        t.drop_column("claim_token")
