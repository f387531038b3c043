"""calls and contacts unique per PBX

Two Asterisk servers on one database can raise the same Linkedid (``<epoch>.<counter>``
when no systemname is set), so the dedup keys gain the PBX identity: calls become unique
on (pbx, linkedid), contacts on (pbx, source, source_ref). Existing rows are kept: a call
takes its daemon's node name (the default identity), an AMI contact the identity of its
call, and every other contact "" (web and CLI contacts are not scoped to a PBX).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# SQLite keeps 0001's unnamed UNIQUE(linkedid); batch mode reflects it under this name.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_calls_unique() -> str:
    return "calls_linkedid_key" if op.get_bind().dialect.name == "postgresql" else "uq_calls_linkedid"


def upgrade() -> None:
    for table in ("calls", "contacts"):
        with op.batch_alter_table(table, naming_convention=NAMING) as batch_op:
            batch_op.add_column(sa.Column("pbx", sa.String(length=64), nullable=False, server_default=""))

    op.execute("UPDATE calls SET pbx = node")
    # Still unique on linkedid alone here, so at most one call matches.
    op.execute(
        "UPDATE contacts SET pbx = COALESCE("
        "(SELECT calls.pbx FROM calls WHERE calls.linkedid = contacts.source_ref), '') "
        "WHERE source = 'ami'"
    )

    with op.batch_alter_table("calls", naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint(_old_calls_unique(), type_="unique")
        batch_op.create_unique_constraint("uq_calls_pbx_linkedid", ["pbx", "linkedid"])
        batch_op.alter_column("pbx", server_default=None, existing_type=sa.String(length=64))
    with op.batch_alter_table("contacts", naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint("uq_contacts_source_ref", type_="unique")
        batch_op.create_unique_constraint("uq_contacts_pbx_source_ref", ["pbx", "source", "source_ref"])
        batch_op.alter_column("pbx", server_default=None, existing_type=sa.String(length=64))


def downgrade() -> None:
    # Fails, as it must, when two PBXs' rows share a key the old schema allows once.
    with op.batch_alter_table("contacts", naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint("uq_contacts_pbx_source_ref", type_="unique")
        batch_op.create_unique_constraint("uq_contacts_source_ref", ["source", "source_ref"])
        batch_op.drop_column("pbx")
    with op.batch_alter_table("calls", naming_convention=NAMING) as batch_op:
        batch_op.drop_constraint("uq_calls_pbx_linkedid", type_="unique")
        batch_op.create_unique_constraint(_old_calls_unique(), ["linkedid"])
        batch_op.drop_column("pbx")
