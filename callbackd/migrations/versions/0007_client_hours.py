"""client zones, wait reason, chosen time, DID and queue on requests

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


# Plain ADD/DROP COLUMN, not batch mode: on SQLite batch mode copies and drops the table, and
# contacts and attempts hold foreign keys to requests.
def _columns() -> list[sa.Column]:
    return [
        sa.Column("client_zones", sa.JSON(), nullable=True),
        sa.Column("wait_reason", sa.String(length=24), nullable=True),
        sa.Column("time_chosen", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("did", sa.String(length=64), nullable=True),
        sa.Column("queue", sa.String(length=64), nullable=True),
    ]


def upgrade() -> None:
    for column in _columns():
        op.add_column("requests", column)


def downgrade() -> None:
    for column in reversed(_columns()):
        op.drop_column("requests", column.name)
