"""Database tables. Schema changes go through Alembic (callbackd/migrations)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both SQLite (which keeps no zone) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):  # type: ignore[override]
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


OPEN_SQL = "status IN ('open', 'dialling')"


class Base(DeclarativeBase):
    pass


class Call(Base):
    """Every offered inbound call, answered or not: the reports' denominators."""

    __tablename__ = "calls"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    linkedid: Mapped[str] = mapped_column(String(64))
    caller_num: Mapped[str] = mapped_column(String(64), default="")
    number: Mapped[str | None] = mapped_column(String(20), index=True)
    caller_name: Mapped[str] = mapped_column(String(80), default="")
    did: Mapped[str] = mapped_column(String(64), default="")
    queue: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    joined_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    hold_time: Mapped[int | None] = mapped_column(Integer)
    agent: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))  # answered | missed
    miss_reason: Mapped[str | None] = mapped_column(String(24))
    node: Mapped[str] = mapped_column(String(64), default="")
    # Asterisk's Linkedids (<epoch>.<counter>) repeat across servers: unique per PBX only.
    pbx: Mapped[str] = mapped_column(String(64), default="")

    __table_args__ = (UniqueConstraint("pbx", "linkedid", name="uq_calls_pbx_linkedid"),)


class Request(Base):
    """One client to call back. At most one open request per number."""

    __tablename__ = "requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(80), default="")
    reason: Mapped[str] = mapped_column(String(32))
    sources: Mapped[list[str]] = mapped_column(JSON, default=list)
    contact_count: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    preferred_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts_made: Mapped[int] = mapped_column(Integer, default=0)
    operator_tries: Mapped[int] = mapped_column(Integer, default=0)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    close_reason: Mapped[str | None] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text, default="")
    disposition: Mapped[str | None] = mapped_column(String(32))  # set by an operator in the console
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claim_expires: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # IANA zones the client may be in (several when the number cannot tell); empty: unknown.
    client_zones: Mapped[list[str] | None] = mapped_column(JSON, default=list)
    # Why due_at is not sooner (ladder, chosen_time, business_hours, client_hours).
    wait_reason: Mapped[str | None] = mapped_column(String(24))
    # preferred_at was chosen by the client (form, phone, CLI): merges keep it.
    time_chosen: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # The number the client last dialled (a DID) and the queue they waited in, when a call opened it.
    did: Mapped[str | None] = mapped_column(String(64))
    queue: Mapped[str | None] = mapped_column(String(64))
    # Changed by every claim; an attempt changes its request only while they match (fencing).
    claim_token: Mapped[str | None] = mapped_column(String(32))
    # Where max_age counts from when not created_at: an admin's retry of an expired request.
    age_from: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        # Partial: unique among open requests only. Its WHERE goes in per dialect (sqlite_where,
        # postgresql_where), added by with_index_predicates() where DDL is made or compared from
        # these models (migrations/env.py); the migrations create it so on both databases. Named
        # here, a dialect's keyword would make SQLAlchemy import that dialect's whole package in
        # every process: the PostgreSQL one is about 2 MB of a daemon's RSS on SQLite.
        Index("uq_requests_open_number", "number", unique=True),
        Index("ix_requests_status_due", "status", "due_at"),
    )


# The partial indexes' WHERE clauses, by index name (see Request.__table_args__).
INDEX_PREDICATES = {"uq_requests_open_number": OPEN_SQL}


def with_index_predicates() -> MetaData:
    """Base.metadata with the partial indexes' WHERE for both dialects, as the migrations create
    them: for whatever makes or compares DDL from the models (Alembic's env.py). Idempotent."""
    for table in Base.metadata.tables.values():
        for index in table.indexes:
            where = INDEX_PREDICATES.get(str(index.name))
            if where is not None:
                for dialect in ("sqlite", "postgresql"):
                    index.dialect_kwargs[f"{dialect}_where"] = text(where)
    return Base.metadata


class Contact(Base):
    """Each missed contact as it arrived, stored exactly once per (pbx, source, source_ref).

    ``pbx`` is empty for sources whose refs are not a PBX's (web leads, the CLI).
    """

    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(16))
    source_ref: Mapped[str] = mapped_column(String(128))
    raw_number: Mapped[str] = mapped_column(String(64), default="")
    number: Mapped[str | None] = mapped_column(String(20), index=True)
    name: Mapped[str] = mapped_column(String(80), default="")
    reason: Mapped[str] = mapped_column(String(32))
    waited: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    disposition: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String(120), default="")
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), index=True)
    pbx: Mapped[str] = mapped_column(String(64), default="")

    __table_args__ = (UniqueConstraint("pbx", "source", "source_ref", name="uq_contacts_pbx_source_ref"),)


class Attempt(Base):
    """One Originate. Written (dialling) before the Originate is sent."""

    __tablename__ = "attempts"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), index=True)
    try_no: Mapped[int] = mapped_column(Integer)
    operator: Mapped[str] = mapped_column(String(128))
    channel_id: Mapped[str] = mapped_column(String(64), unique=True)
    number: Mapped[str] = mapped_column(String(20), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    outcome: Mapped[str | None] = mapped_column(String(24))
    counted: Mapped[bool] = mapped_column(Boolean, default=False)
    originate_reason: Mapped[str | None] = mapped_column(String(24))
    dial_status: Mapped[str | None] = mapped_column(String(16))
    hangup_cause: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    operator_answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    client_answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    talk_seconds: Mapped[int | None] = mapped_column(Integer)
    node: Mapped[str] = mapped_column(String(64), default="")
    # The claim it was started under (see Request.claim_token).
    claim_token: Mapped[str | None] = mapped_column(String(32))
    # Renewed by the node following it; past it, any node on the same PBX reconciles it.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The PBX that placed it (its identity): only that PBX's channels say whether it lives.
    pbx: Mapped[str] = mapped_column(String(128), default="", server_default="")

    __table_args__ = (Index("ix_attempts_number_status", "number", "status"),)


class AuditEntry(Base):
    """Who changed a request by hand, when and how: the console, the API or the command line."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(128))  # "user:anna", "token:crm", "cli:root"
    action: Mapped[str] = mapped_column(String(32))  # cancel, retry_now, schedule, note, disposition, add
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), index=True)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class OutboxEvent(Base):
    """One webhook delivery to one endpoint, written in the transaction that made the event.

    ``status``: pending (``due_at`` says when to try next), delivered, or dead (gave up;
    ``callbackd webhooks retry`` makes it pending again).
    """

    __tablename__ = "webhook_outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[int | None] = mapped_column(Integer, index=True)
    payload: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), default="pending")
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    tries: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(String(300), default="")
    ref: Mapped[str] = mapped_column(String(128), default="")  # what the receiver named it (Bitrix24 CALL_ID)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_webhook_outbox_status_due", "status", "due_at"),
        Index("ix_webhook_outbox_line", "endpoint", "request_id", "status", "id"),  # head of each line
    )


class FiguresTouched(Base):
    """A write that may change the figures of a UTC hour (``hour``: epoch seconds // 3600), ``n`` times.

    Written by triggers (migration 0008), never by the code: see that migration for which hours."""

    __tablename__ = "figures_touched"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hour: Mapped[int] = mapped_column(BigInteger, index=True)
    n: Mapped[int] = mapped_column(BigInteger)


class FiguresPartial(Base):
    """A finished day's figures cells (a cache: losing them loses nothing), valid while the touches
    of its hours add up to ``touched``. ``key`` names what else the cells depend on."""

    __tablename__ = "figures_partials"
    start_at: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    end_at: Mapped[datetime] = mapped_column(UTCDateTime())
    touched: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)
