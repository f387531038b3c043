"""Reports and CSV exports straight from the database, streamed.

Rows come through server-side cursors in batches (``yield_per``) and are folded
into :mod:`callbackd.domain.metrics` accumulators or written straight out, so
memory stays flat on millions of rows on SQLite and PostgreSQL alike.

CSV is RFC 4180 (CRLF, quotes doubled, fields with the delimiter, a quote or a
line break quoted) and opens as intended in Excel and LibreOffice: timestamps
are ISO 8601 with the report time zone's offset, an optional UTF-8 BOM and ';'
with decimal commas serve Excel in locales such as Russian, and text cells that
a spreadsheet would run as a formula are prefixed with ``'``.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import json
import os
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from sqlalchemy import String, and_, case, exists, false, func, null, or_, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import aliased

from callbackd.adapters import models as m
from callbackd.domain.analytics import (
    FIELD_REACH_SHARES,
    TRY_BUCKETS,
    Recovery,
    RecoveryBuilder,
    RecoveryReport,
    RecoveryRow,
    TryRow,
)
from callbackd.domain.detection import CALLBACK_CHANNEL_PREFIX
from callbackd.domain.metrics import (
    FIGURE_NAMES,
    NONE_KEY,
    REACHED_STATUSES,
    AttemptRow,
    CallRow,
    Figures,
    Grouping,
    Report,
    ReportBuilder,
    RequestRow,
    Thresholds,
)

BATCH = 5000
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
EXPORTS = {"calls": m.Call, "requests": m.Request, "attempts": m.Attempt}
_EXPORT_TIME = {
    "calls": m.Call.started_at,
    "requests": m.Request.created_at,
    "attempts": m.Attempt.started_at,
}
RATIOS = frozenset({"car", "net_lost_rate", "lcr", "service_level"})
DURATIONS = frozenset(
    {"asa", "ata", "aht", "first_attempt_median", "first_attempt_p90", "reach_median", "reach_p90"}
)


# -- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvOptions:
    bom: bool = False
    delimiter: str = ","
    neutralise: bool = True
    decimal: str = "."

    @classmethod
    def excel_ru(cls) -> CsvOptions:
        """Excel in a Russian (or most European) locale: BOM, ';' lists and decimal commas."""
        return cls(bom=True, delimiter=";", decimal=",")


@dataclass(frozen=True)
class ReportSettings:
    tz: ZoneInfo
    thresholds: Thresholds
    csv: CsvOptions

    @classmethod
    def from_config(cls, cfg: Any) -> ReportSettings:
        r = cfg.reports
        return cls(
            tz=ZoneInfo(r.timezone or cfg.schedule.timezone),
            thresholds=Thresholds(
                short_abandon=r.short_abandon if r.short_abandon is not None else cfg.detection.short_abandon,
                service_level=r.service_level,
            ),
            csv=CsvOptions(bom=r.csv_bom, delimiter=r.csv_delimiter, decimal=r.csv_decimal),
        )


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


async def call_batches(conn: AsyncConnection, start: datetime, end: datetime) -> AsyncIterator[list[CallRow]]:
    """Calls started in the period, a batch at a time (an async step per row would cost more)."""
    iso = datetime.fromisoformat  # inlined: this runs three times per call
    async for part in _rows(conn, calls_query(start, end, conn.dialect.name)):
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


# -- CSV ----------------------------------------------------------------------------------


def neutralise(text: str) -> str:
    """Stop a spreadsheet from running the cell as a formula (OWASP: prefix with ')."""
    return "'" + text if text.startswith(FORMULA_START) else text


class CsvWriter:
    """csv.writer with the cell rules above; values may be str, int, float, bool, datetime or lists."""

    def __init__(self, out: TextIO, options: CsvOptions, tz: tzinfo) -> None:
        if options.delimiter == options.decimal:
            raise ValueError("the CSV delimiter and the decimal separator must differ")
        self.options = options
        self.tz = tz
        if options.bom:
            out.write("\ufeff")
        self._writer = csv.writer(
            out, delimiter=options.delimiter, quotechar='"', lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL
        )

    def text(self, value: Any) -> str:
        s = value if isinstance(value, str) else str(value)
        return neutralise(s) if self.options.neutralise else s

    def cell(self, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            return self.number(value)
        if isinstance(value, datetime):
            return self.timestamp(value)
        if isinstance(value, list | tuple):
            return self.text(",".join(str(v) for v in value))
        return self.text(value)

    def number(self, value: float) -> str:
        s = repr(value)
        return s.replace(".", self.options.decimal) if self.options.decimal != "." else s

    def timestamp(self, value: datetime) -> str:
        return value.astimezone(self.tz).isoformat(timespec="seconds")

    def column_formatter(self, column) -> Callable[[tuple[Any, ...]], Iterable[Any]] | None:
        """How the export writes one batch of *column* (timestamps come as UTC text); None: as it is."""
        if isinstance(column.type, m.UTCDateTime):
            times = LocalTimes(self.tz)
            return lambda values: map(times, values)
        py = _python_type(column)
        if py is str:
            return _neutralise_column if self.options.neutralise else None
        if py is int:
            return None  # csv writes None as an empty field
        cell = self.cell
        return lambda values: map(cell, values)

    def row(self, values: list[Any]) -> None:
        self._writer.writerow([self.cell(v) for v in values])

    def raw(self, values: list[Any]) -> None:
        self._writer.writerow(values)

    def raw_rows(self, rows: Iterable[Iterable[Any]]) -> None:
        self._writer.writerows(rows)


def _neutralise_or_none(value: str | None) -> str | None:
    return "'" + value if value and value.startswith(FORMULA_START) else value


_FORMULA_ANYWHERE = re.compile(r"(?:^|\n)[=+\-@\t\r]")


def _neutralise_column(values: tuple[str | None, ...]) -> Iterable[str | None]:
    """One C-speed search over the whole batch; cells are looked at one by one only on a hit.

    A hit may be a false alarm (a line inside a cell starting with '='): the per-cell check
    then decides, so the result is the same, only slower.
    """
    if _FORMULA_ANYWHERE.search("\n".join(filter(None, values))) is None:
        return values
    return map(_neutralise_or_none, values)


class LocalTimes:
    """UTC text -> ISO 8601 in *tz* with its offset, e.g. ``2026-03-02T00:30:09+03:00``.

    The local minute and the offset are worked out once per UTC minute and cached: zone
    offsets change only on whole minutes, so the seconds carry over as they are.
    """

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self.cache: dict[str, tuple[str, str]] = {}

    def __call__(self, text: str | None) -> str:
        if text is None:
            return ""
        minute = text[:16]
        hit = self.cache.get(minute)
        if hit is None:
            if len(self.cache) > 100_000:
                self.cache.clear()
            local = datetime.fromisoformat(minute + "+00:00").astimezone(self.tz).isoformat()
            hit = self.cache[minute] = (local[:16], local[19:])
        return hit[0] + text[16:19] + hit[1]


def _python_type(column) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


# -- rendering a report ----------------------------------------------------------------


def _column(name: str) -> str:
    if name in RATIOS:
        return f"{name}_pct"
    if name in DURATIONS:
        return f"{name}_s"
    return name


def _value(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in RATIOS:
        return round(value * 100, 2)
    if name in DURATIONS:
        return round(value, 1)
    if name == "attempts_per_reached":
        return round(value, 2)
    return value


def _figures_dict(fig: Figures) -> dict[str, Any]:
    return {_column(n): _value(n, getattr(fig, n)) for n in FIGURE_NAMES}


def _key_name(report: Report) -> str:
    return report.by.value if report.by is not None else "period"


def _key(key: str) -> str | None:
    """Rows with no queue, operator or source: an empty cell (null in JSON), not a '-' to neutralise."""
    return None if key == NONE_KEY else key


def report_dict(report: Report) -> dict[str, Any]:
    key = _key_name(report)
    return {
        "from": report.start.isoformat(),
        "to": report.end.isoformat(),
        "timezone": report.timezone,
        "by": report.by.value if report.by else None,
        "short_abandon_s": report.thresholds.short_abandon.total_seconds(),
        "service_level_s": report.thresholds.service_level.total_seconds(),
        "rows": [{key: _key(k), **_figures_dict(f)} for k, f in report.rows],
        "total": _figures_dict(report.total),
    }


def write_report_csv(report: Report, out: TextIO, options: CsvOptions, tz: tzinfo) -> None:
    w = CsvWriter(out, options, tz)
    w.row([_key_name(report), *(_column(n) for n in FIGURE_NAMES)])
    for key, fig in [*report.rows, ("TOTAL", report.total)]:
        w.row([_key(key), *(_value(n, getattr(fig, n)) for n in FIGURE_NAMES)])


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _dur(v: float | None) -> str:
    if v is None:
        return "-"
    s = round(v)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


_CALL_COLUMNS: tuple[tuple[str, str | tuple[str, str], Callable[[Any], str]], ...] = (
    ("Offered", "offered", str),
    ("Handled", "handled", str),
    ("Aband", "abandoned", str),
    ("Short", "short_abandoned", str),
    ("CAR", "car", _pct),
    ("NetLost", "net_lost_rate", _pct),
    ("LCR", "lcr", _pct),
    ("SL", "service_level", _pct),
    ("ASA", "asa", _dur),
    ("ATA", "ata", _dur),
    ("AHT", "aht", _dur),
)
_CALLBACK_COLUMNS: tuple[tuple[str, str | tuple[str, str], Callable[[Any], str]], ...] = (
    ("Requests", "requests", str),
    ("Tried", "attempted", str),
    ("Reached", "reached", str),
    ("Recov", "recovered", str),
    ("Expired", "expired", str),
    ("Failed", "failed", str),
    ("Cancel", "cancelled", str),
    ("Open", "open", str),
    ("First try", ("first_attempt_median", "first_attempt_p90"), _dur),
    ("Reached in", ("reach_median", "reach_p90"), _dur),
    ("Tries", "attempts_per_reached", _num),
)
CALLBACK_LEGEND = "First try, Reached in: median/p90 from the request; Tries: attempts per reached client"


def _cell(fig: Figures, name: str | tuple[str, ...], fmt: Callable[[Any], str]) -> str:
    if isinstance(name, tuple):  # median/p90 side by side
        values = [getattr(fig, n) for n in name]
        return "-" if all(v is None for v in values) else "/".join(fmt(v) for v in values)
    return fmt(getattr(fig, name))


def _table(title: str, key: str, columns, rows: list[tuple[str, Figures]]) -> list[str]:
    cells = [[k, *(_cell(f, name, fmt) for _, name, fmt in columns)] for k, f in rows]
    header = [key, *(h for h, _, _ in columns)]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        )

    rule = "-" * len(line(header))
    out = [title, line(header), rule, *(line(r) for r in cells)]
    if len(cells) > 1:  # a rule above the total row
        out.insert(-1, rule)
    return out


def render_table(report: Report) -> str:
    t = report.thresholds
    start = report.start.astimezone(report.tz).isoformat(timespec="minutes")
    end = report.end.astimezone(report.tz).isoformat(timespec="minutes")
    by = f", by {report.by.value}" if report.by else ""
    rows = [*report.rows, ("TOTAL", report.total)]
    key = _key_name(report)
    head = (
        f"callbackd report {start} to {end} ({report.timezone}){by}\n"
        f"short abandon < {t.short_abandon.total_seconds():g}s (left out of CAR, NetLost, LCR, SL); "
        f"service level: answered within {t.service_level.total_seconds():g}s"
    )
    calls = _table("Calls", key, _CALL_COLUMNS, rows)
    callbacks = _table("Callbacks (requests created in the period, status now)", key, _CALLBACK_COLUMNS, rows)
    return "\n".join([head, "", *calls, "", *callbacks, CALLBACK_LEGEND]) + "\n"


def write_report(report: Report, out: TextIO, fmt: str, options: CsvOptions, tz: tzinfo) -> None:
    if fmt == "csv":
        write_report_csv(report, out, options, tz)
    elif fmt == "json":
        json.dump(report_dict(report), out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        out.write(render_table(report))


# -- exports -------------------------------------------------------------------------------


async def export(
    engine: AsyncEngine,
    what: str,
    start: datetime,
    end: datetime,
    out: TextIO,
    options: CsvOptions,
    tz: tzinfo,
) -> int:
    """Every column of *what* ("calls", "requests", "attempts") for rows in the period; returns the count."""
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
    w = CsvWriter(out, options, tz)
    w.raw([c.name for c in table.c])
    plan = [(i, f) for i, f in enumerate(w.column_formatter(c) for c in table.c) if f is not None]
    with gc_paused():
        return await _write_rows(engine, stmt, w, plan)


async def _write_rows(
    engine: AsyncEngine,
    stmt,
    w: CsvWriter,
    plan: list[tuple[int, Callable[[tuple[Any, ...]], Iterable[Any]]]],
) -> int:
    count = 0
    async with engine.connect() as conn:
        async for part in _rows(conn, stmt):
            if not part:
                continue
            # Column by column: a map per column, or nothing at all, instead of a call per cell.
            columns: list[Iterable[Any]] = list(zip(*part, strict=True))
            for i, f in plan:
                columns[i] = f(columns[i])
            w.raw_rows(zip(*columns, strict=True))
            count += len(part)
    return count


@contextlib.contextmanager
def atomic_text(path: Path, mode: int = 0o640) -> Iterator[TextIO]:
    """Write to a temporary file beside *path*, then rename: readers see the old file or the whole new one.

    The mode keeps exports, which hold clients' numbers, from being world-readable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


def _share(v: float | None) -> str:
    return "-" if v is None else f"{round(v * 100, 1):g}"


def _recovery_dict(fig: Recovery) -> dict[str, Any]:
    out = {
        "requests": fig.requests,
        "reached_by_callback": fig.reached_by_callback,
        "recovered_by_client": fig.recovered_by_client,
        "recovered_by_operator": fig.recovered_by_operator,
        "not_recovered": fig.not_recovered,
        "open": fig.open,
        "reach_by_try": list(fig.reach_by_try),
        "reach_share_by_try_pct": [None if v is None else round(v * 100, 2) for v in fig.reach_share_by_try],
        "first_attempt_median_s": fig.first_attempt_median,
        "first_attempt_p90_s": fig.first_attempt_p90,
        "callback_wait_median_s": fig.callback_wait_median,
        "callback_wait_p90_s": fig.callback_wait_p90,
        "callback_wait_mean_s": None if fig.callback_wait_mean is None else round(fig.callback_wait_mean, 1),
        "offered": fig.offered,
        "abandoned": fig.abandoned,
        "net_lost": fig.net_lost,
        "car_pct": None if fig.car is None else round(fig.car * 100, 2),
        "net_lost_rate_pct": None if fig.net_lost_rate is None else round(fig.net_lost_rate * 100, 2),
        "net_to_car": None if fig.net_to_car is None else round(fig.net_to_car, 3),
    }
    return out


def recovery_dict(rec: RecoveryReport) -> dict[str, Any]:
    return {
        "field_reach_share_by_try_pct": [round(v * 100, 1) for v in FIELD_REACH_SHARES],
        "rows": [{"by": by, "key": _key(k), **_recovery_dict(f)} for by, k, f in rec.rows],
        "total": _recovery_dict(rec.total),
    }


def write_recovery_csv(rec: RecoveryReport, out: TextIO, options: CsvOptions, tz: tzinfo) -> None:
    w = CsvWriter(out, options, tz)
    names = list(_recovery_dict(rec.total))
    flat = [n for n in names if not n.endswith("by_try") and not n.endswith("by_try_pct")]
    tries = [f"reached_try{i + 1}" for i in range(TRY_BUCKETS)]
    shares = [f"reached_try{i + 1}_pct" for i in range(TRY_BUCKETS)]
    w.row(["by", "key", *flat, *tries, *shares])
    for by, key, fig in [*rec.rows, ("total", "TOTAL", rec.total)]:
        d = _recovery_dict(fig)
        w.row([by, _key(key), *(d[n] for n in flat), *d["reach_by_try"], *d["reach_share_by_try_pct"]])


_RECOVERY_COLUMNS: tuple[tuple[str, Callable[[Recovery], str]], ...] = (
    ("Req", lambda f: str(f.requests)),
    ("CB", lambda f: str(f.reached_by_callback)),
    ("Own", lambda f: str(f.recovered_by_client)),
    ("Op", lambda f: str(f.recovered_by_operator)),
    ("Lost", lambda f: str(f.not_recovered)),
    ("Open", lambda f: str(f.open)),
    ("Try1..5+ %", lambda f: "/".join(_share(v) for v in f.reach_share_by_try)),
    ("First try", lambda f: _pair(f.first_attempt_median, f.first_attempt_p90)),
    ("CB wait", lambda f: _pair(f.callback_wait_median, f.callback_wait_p90)),
    ("CAR", lambda f: _pct(f.car)),
    ("Net", lambda f: _pct(f.net_lost_rate)),
    ("Net/CAR", lambda f: _num(f.net_to_car)),
)


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None and b is None else f"{_dur(a)}/{_dur(b)}"


RECOVERY_LEGEND = (
    "CB: reached by a callback; Own: the client called in again and was answered; Op: an operator\n"
    "dialled by hand; Lost: expired, failed or cancelled; Try %: share of those reached by callback\n"
    "per try; First try, CB wait (miss to the answered callback): median/p90; Net: net lost rate;\n"
    "Net/CAR: net lost rate / CAR"
)


def render_recovery(rec: RecoveryReport) -> str:
    header = ["group", *(h for h, _ in _RECOVERY_COLUMNS)]
    rows = [[f"{by} {k}", *(fmt(f) for _, fmt in _RECOVERY_COLUMNS)] for by, k, f in rec.rows]
    total = ["TOTAL", *(fmt(rec.total) for _, fmt in _RECOVERY_COLUMNS)]
    field_row = ["field data", *("" for _ in _RECOVERY_COLUMNS)]
    field_row[7] = "/".join(f"{v * 100:g}" for v in FIELD_REACH_SHARES)
    every = [header, *rows, total, field_row]
    widths = [max(len(r[i]) for r in every) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    return (
        "\n".join(
            [
                "Recovery (requests created in the period, status now; calls started in it)",
                line(header),
                rule,
                *(line(r) for r in rows),
                rule,
                line(total),
                line(field_row),
                RECOVERY_LEGEND,
            ]
        )
        + "\n"
    )


def write_recovery(rec: RecoveryReport, out: TextIO, fmt: str, options: CsvOptions, tz: tzinfo) -> None:
    if fmt == "csv":
        write_recovery_csv(rec, out, options, tz)
    elif fmt == "json":
        json.dump(recovery_dict(rec), out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        out.write(render_recovery(rec))
