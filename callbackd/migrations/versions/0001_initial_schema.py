"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "calls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("linkedid", sa.String(length=64), nullable=False),
        sa.Column("caller_num", sa.String(length=64), nullable=False),
        sa.Column("number", sa.String(length=20), nullable=True),
        sa.Column("caller_name", sa.String(length=80), nullable=False),
        sa.Column("did", sa.String(length=64), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hold_time", sa.Integer(), nullable=True),
        sa.Column("agent", sa.String(length=128), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("miss_reason", sa.String(length=24), nullable=True),
        sa.Column("node", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("linkedid"),
    )
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_calls_number"), ["number"], unique=False)
        batch_op.create_index(batch_op.f("ix_calls_started_at"), ["started_at"], unique=False)

    op.create_table(
        "requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("contact_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("preferred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts_made", sa.Integer(), nullable=False),
        sa.Column("operator_tries", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("close_reason", sa.String(length=32), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claim_expires", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_requests_created_at"), ["created_at"], unique=False)
        batch_op.create_index("ix_requests_status_due", ["status", "due_at"], unique=False)
        batch_op.create_index(
            "uq_requests_open_number",
            ["number"],
            unique=True,
            sqlite_where=sa.text("status IN ('open', 'dialling')"),
            postgresql_where=sa.text("status IN ('open', 'dialling')"),
        )

    op.create_table(
        "attempts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("try_no", sa.Integer(), nullable=False),
        sa.Column("operator", sa.String(length=128), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=24), nullable=True),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("originate_reason", sa.String(length=24), nullable=True),
        sa.Column("dial_status", sa.String(length=16), nullable=True),
        sa.Column("hangup_cause", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("operator_answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("client_answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("talk_seconds", sa.Integer(), nullable=True),
        sa.Column("node", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("channel_id"),
    )
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_attempts_number"), ["number"], unique=False)
        batch_op.create_index(batch_op.f("ix_attempts_request_id"), ["request_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_attempts_started_at"), ["started_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_attempts_status"), ["status"], unique=False)

    op.create_table(
        "contacts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_ref", sa.String(length=128), nullable=False),
        sa.Column("raw_number", sa.String(length=64), nullable=False),
        sa.Column("number", sa.String(length=20), nullable=True),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("waited", sa.Integer(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disposition", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=120), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source", "source_ref", name="uq_contacts_source_ref"),
    )
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_contacts_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_contacts_number"), ["number"], unique=False)
        batch_op.create_index(batch_op.f("ix_contacts_request_id"), ["request_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contacts_request_id"))
        batch_op.drop_index(batch_op.f("ix_contacts_number"))
        batch_op.drop_index(batch_op.f("ix_contacts_at"))

    op.drop_table("contacts")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attempts_status"))
        batch_op.drop_index(batch_op.f("ix_attempts_started_at"))
        batch_op.drop_index(batch_op.f("ix_attempts_request_id"))
        batch_op.drop_index(batch_op.f("ix_attempts_number"))

    op.drop_table("attempts")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_requests_open_number",
            sqlite_where=sa.text("status IN ('open', 'dialling')"),
            postgresql_where=sa.text("status IN ('open', 'dialling')"),
        )
        batch_op.drop_index("ix_requests_status_due")
        batch_op.drop_index(batch_op.f("ix_requests_created_at"))

    op.drop_table("requests")
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calls_started_at"))
        batch_op.drop_index(batch_op.f("ix_calls_number"))

    op.drop_table("calls")
