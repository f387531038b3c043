"""client zones, wait reason, chosen time, DID and queue on requests

Revision ID: 0007
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_zones", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("wait_reason", sa.String(length=24), nullable=True))
        batch_op.add_column(
            sa.Column("time_chosen", sa.Boolean(), nullable=False, server_default=sa.text("false"))
        )
        batch_op.add_column(sa.Column("did", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("queue", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_column("queue")
        batch_op.drop_column("did")
        batch_op.drop_column("time_chosen")
        batch_op.drop_column("wait_reason")
        batch_op.drop_column("client_zones")
