"""The reports' and exports' queries, streamed from the database.

Rows come through server-side cursors in batches (``yield_per``) and are folded
into :mod:`callbackd.domain.metrics` accumulators or handed to a renderer batch by
batch, so memory stays flat on millions of rows on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import String, and_, case, exists, false, func, null, or_, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import aliased

from callbackd.adapters import models as m
from callbackd.domain.analytics import RecoveryBuilder, RecoveryReport, RecoveryRow, TryRow
from callbackd.domain.detection import CALLBACK_CHANNEL_PREFIX
from callbackd.domain.metrics import (
    REACHED_STATUSES,
    AttemptRow,
    CallRow,
    Grouping,
    Report,
    ReportBuilder,
    RequestRow,
    Thresholds,
)

BATCH = 5000
EXPORTS = {"calls": m.Call, "requests": m.Request, "attempts": m.Attempt}
_EXPORT_TIME = {
    "calls": m.Call.started_at,
    "requests": m.Request.created_at,
    "attempts": m.Attempt.started_at,
}


class _GcPause:
    """Pause the cyclic garbage collector while a streaming pass runs, then restore it.

    A pass makes millions of short-lived tuples and no reference cycles, and every few
    thousand of them the collector rescans everything alive: 30 % of a million-call report.
    Reference counting still frees each batch. Nested and concurrent passes (scheduled jobs
    in the daemon) share one pause, ended by the last of them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._was_enabled = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._was_enabled:
                    gc.enable()


gc_paused = _GcPause()


# -- queries -----------------------------------------------------------------------------


def _request_status():
    """Status of the callback request the call's contact created or joined (two index lookups)."""
    return (
        select(m.Request.status)
        .join_from(m.Contact, m.Request, m.Request.id == m.Contact.request_id)
        .where(
            m.Contact.pbx == m.Call.pbx, m.Contact.source == "ami", m.Contact.source_ref == m.Call.linkedid
        )
        .correlate(m.Call)
        .scalar_subquery()
    )


def _reached_later():
    """SQL twin of :func:`callbackd.domain.metrics.mark_reached_later`.

    Worked out only for missed calls whose own request does not already settle it: the
    two EXISTS are most of the report's SQL time, and this skips them for most lost calls.
    """
    later = aliased(m.Call)
    by_call = exists().where(
        later.number == m.Call.number, later.outcome == "answered", later.answered_at > m.Call.started_at
    )
    by_callback = exists().where(
        m.Attempt.number == m.Call.number,
        m.Attempt.outcome == "answered",
        m.Attempt.started_at > m.Call.started_at,
    )
    open_question = and_(
        m.Call.outcome == "missed",
        m.Call.number.is_not(None),
        func.coalesce(_request_status(), "").not_in(sorted(REACHED_STATUSES)),
    )
    # SQLite answers 0/1, PostgreSQL a boolean: bool() reads both.
    return case((open_question, or_(by_call, by_callback)), else_=false())


def utc_text(column, dialect: str):
    """The timestamp as UTC text, ``YYYY-MM-DD HH:MM:SS.ffffff``, on both databases.

    SQLite stores exactly that. Decoding it with one ``fromisoformat`` call, or reformatting
    it for CSV, costs a fraction of the per-value type processing, which dominated a
    million-row report.
    """
    if dialect == "sqlite":
        return type_coerce(column, String)
    return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:MI:SS.US")


def _not_callback_leg():
    """A callback leg is never an offered call (rows stored before the detector skipped them)."""
    return m.Call.linkedid.not_like(f"{CALLBACK_CHANNEL_PREFIX}%")


def calls_query(start: datetime, end: datetime, dialect: str):
    return (
        select(
            utc_text(m.Call.started_at, dialect),
            m.Call.queue,
            utc_text(m.Call.answered_at, dialect),
            m.Call.hold_time,
            utc_text(m.Call.ended_at, dialect),
            m.Call.outcome,
            m.Call.miss_reason,
            m.Call.agent,
            m.Call.number,
            _reached_later(),
            case((m.Call.outcome == "missed", _request_status()), else_=null()),
        )
        .where(m.Call.started_at >= start, m.Call.started_at < end, _not_callback_leg())
        .execution_options(yield_per=BATCH)
    )


def requests_query(start: datetime, end: datetime, dialect: str, *, with_queue: bool):
    """Requests created in the period, each followed by its attempts (one row per attempt)."""
    queue = null()
    if with_queue:
        queue = (
            select(m.Call.queue)
            .join_from(
                m.Contact,
                m.Call,
                and_(m.Call.pbx == m.Contact.pbx, m.Call.linkedid == m.Contact.source_ref),
            )
            .where(m.Contact.request_id == m.Request.id, m.Contact.source == "ami")
            .order_by(m.Contact.at, m.Contact.id)
            .limit(1)
            .correlate(m.Request)
            .scalar_subquery()
        )
    return (
        select(
            m.Request.id,
            m.Request.number,
            utc_text(m.Request.created_at, dialect),
            m.Request.status,
            m.Request.sources[0].as_string(),  # the first source; decoding the JSON costs 3 µs a row
            m.Request.attempts_made,
            queue,
            utc_text(m.Attempt.started_at, dialect),
            m.Attempt.operator,
            m.Attempt.outcome,
        )
        .outerjoin(m.Attempt, m.Attempt.request_id == m.Request.id)
        .where(m.Request.created_at >= start, m.Request.created_at < end)
        .order_by(m.Request.id, m.Attempt.started_at)
        .execution_options(yield_per=BATCH)
    )


async def _rows(conn: AsyncConnection, stmt) -> AsyncIterator[list[Any]]:
    result = await conn.stream(stmt)
    async for part in result.partitions():
        yield part


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text + "+00:00")


async def call_batches(
    conn: AsyncConnection, start: datetime, end: datetime, query: Callable[..., Any] | None = None
) -> AsyncIterator[list[CallRow]]:
    """Calls started in the period, a batch at a time (an async step per row would cost more).

    ``query(start, end, dialect)`` selects the :class:`CallRow` columns (default :func:`calls_query`).
    """
    iso = datetime.fromisoformat  # inlined: this runs three times per call
    async for part in _rows(conn, (query or calls_query)(start, end, conn.dialect.name)):
        yield [
            CallRow(
                iso(r[0] + "+00:00"),
                r[1],
                r[2] and iso(r[2] + "+00:00"),
                r[3],
                r[4] and iso(r[4] + "+00:00"),
                r[5],
                r[6],
                r[7],
                r[8],
                bool(r[9]),
                r[10],
            )
            for r in part
        ]


async def request_batches(
    conn: AsyncConnection, start: datetime, end: datetime, *, with_queue: bool = False
) -> AsyncIterator[list[tuple[RequestRow, list[AttemptRow]]]]:
    """Requests created in the period with their attempts; a request never spans two batches."""
    req: RequestRow | None = None
    attempts: list[AttemptRow] = []
    stmt = requests_query(start, end, conn.dialect.name, with_queue=with_queue)
    async for part in _rows(conn, stmt):
        done: list[tuple[RequestRow, list[AttemptRow]]] = []
        for r in part:
            if req is None or r[0] != req.id:
                if req is not None:
                    done.append((req, attempts))
                req = RequestRow(r[0], r[1], _utc(r[2]), r[3], r[4] or "", r[5], r[6])
                attempts = []
            if r[7] is not None:
                attempts.append(AttemptRow(req.id, req.number, _utc(r[7]), r[8], r[9]))
        yield done
    if req is not None:
        yield [(req, attempts)]


async def build_report(
    engine: AsyncEngine,
    start: datetime,
    end: datetime,
    *,
    by: Grouping | None,
    tz: tzinfo,
    thresholds: Thresholds,
) -> Report:
    builder = ReportBuilder(start, end, by, tz, thresholds)
    with gc_paused():
        return await _fill(builder, engine, start, end, by)


async def _fill(
    builder: ReportBuilder, engine: AsyncEngine, start: datetime, end: datetime, by: Grouping | None
) -> Report:
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":  # both passes see one snapshot
            await conn.execution_options(isolation_level="REPEATABLE READ")
        async for calls in call_batches(conn, start, end):
            builder.add_calls(calls)
        async for batch in request_batches(conn, start, end, with_queue=by is Grouping.QUEUE):
            for req, attempts in batch:
                builder.add_request(req, attempts)
    return builder.build()


# -- exports -------------------------------------------------------------------------------


def export_columns(what: str) -> list[Any]:
    """The table's columns in order: what an export of *what* holds, one per spreadsheet column."""
    return list(EXPORTS[what].__table__.c)


async def export_batches(
    engine: AsyncEngine, what: str, start: datetime, end: datetime
) -> AsyncIterator[list[Any]]:
    """Every column of *what* ("calls", "requests", "attempts") for rows in the period, a batch at a time.

    Timestamps come as UTC text (see :func:`utc_text`); the renderer decides how to show them.
    """
    table = EXPORTS[what].__table__
    when = _EXPORT_TIME[what]
    dialect = engine.dialect.name
    columns = [
        utc_text(c, dialect).label(c.name) if isinstance(c.type, m.UTCDateTime) else c for c in table.c
    ]
    stmt = (
        select(*columns)
        .where(when >= start, when < end)
        .order_by(when, table.c.id)
        .execution_options(yield_per=BATCH)
    )
    async with engine.connect() as conn:
        async for part in _rows(conn, stmt):
            if part:
                yield part


# -- recovery analytics ----------------------------------------------------------------------


def recovery_query(start: datetime, end: datetime, dialect: str):
    """Requests created in the period with their close reason, first queue and attempts (one row each)."""
    queue = (
        select(m.Call.queue)
        .join_from(
            m.Contact, m.Call, and_(m.Call.pbx == m.Contact.pbx, m.Call.linkedid == m.Contact.source_ref)
        )
        .where(m.Contact.request_id == m.Request.id, m.Contact.source == "ami")
        .order_by(m.Contact.at, m.Contact.id)
        .limit(1)
        .correlate(m.Request)
        .scalar_subquery()
    )
    return (
        select(
            m.Request.id,
            utc_text(m.Request.created_at, dialect),
            m.Request.status,
            m.Request.close_reason,
            m.Request.sources[0].as_string(),
            queue,
            utc_text(m.Attempt.started_at, dialect),
            m.Attempt.try_no,
            m.Attempt.outcome,
        )
        .outerjoin(m.Attempt, m.Attempt.request_id == m.Request.id)
        .where(m.Request.created_at >= start, m.Request.created_at < end)
        .order_by(m.Request.id, m.Attempt.started_at)
        .execution_options(yield_per=BATCH)
    )


async def recovery_rows(conn: AsyncConnection, start: datetime, end: datetime) -> AsyncIterator[RecoveryRow]:
    head: tuple | None = None
    tries: list[TryRow] = []
    async for part in _rows(conn, recovery_query(start, end, conn.dialect.name)):
        for r in part:
            if head is None or r[0] != head[0]:
                if head is not None:
                    yield RecoveryRow(*head, tuple(tries))
                head = (r[0], _utc(r[1]), r[2], r[3], r[4] or "", r[5])
                tries = []
            if r[6] is not None:
                tries.append(TryRow(_utc(r[6]), r[7], r[8]))
    if head is not None:
        yield RecoveryRow(*head, tuple(tries))


async def build_recovery(
    engine: AsyncEngine, start: datetime, end: datetime, *, thresholds: Thresholds
) -> RecoveryReport:
    builder = RecoveryBuilder(thresholds)
    with gc_paused():
        async with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                await conn.execution_options(isolation_level="REPEATABLE READ")
            async for calls in call_batches(conn, start, end):
                builder.add_calls(calls)
            async for row in recovery_rows(conn, start, end):
                builder.add_request(row)
    return builder.build()


async def reach_by_try(engine: AsyncEngine, start: datetime, end: datetime) -> dict[int, int]:
    """Answered callbacks started in the period, by attempt number: on which try clients were reached."""
    stmt = (
        select(m.Attempt.try_no, func.count())
        .where(m.Attempt.outcome == "answered", m.Attempt.started_at >= start, m.Attempt.started_at < end)
        .group_by(m.Attempt.try_no)
    )
    async with engine.connect() as conn:
        return {int(k): int(n) for k, n in (await conn.execute(stmt)).all()}
