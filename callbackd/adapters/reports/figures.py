"""The console's figures: one pass for every grouping it shows, slices that are over kept a while.

:func:`build_figures` gives the same reports as :func:`.queries.build_report` run once
per grouping, plus :func:`.queries.reach_by_try`, but reads each call and request once
and folds it into the time, queue and operator groups together. The period is read in
slices: whole days (in the report's time zone), and today by the hour. A
:class:`FiguresCache` keeps the groups of slices that are over for ``ttl`` seconds, so a
page shown again reads only the current hour. The current hour is always read afresh;
a change to a slice already over (a callback that reaches a caller lost this morning or
yesterday, a request closed, a late call row) shows within ``ttl``.

Slices that are over are also stored in the database (``figures_partials``), so a restart
or an emptied cache does not read a finished day's rows again. A stored slice is used only
while the writes that may change its hours (counted by triggers in ``figures_touched``, see
migration 0008) add up to what they were when it was built, in the same snapshot as its rows:
a late write to an old day makes exactly that day be read again. The table is a cache: emptied,
or holding a slice this version cannot read (which it says once in the log), it is rebuilt.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as wall_time

import structlog
from sqlalchemy import and_, case, delete, exists, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import aliased

from callbackd.adapters import models as m
from callbackd.adapters.reports.queries import (
    BATCH,
    _not_callback_leg,
    build_report,
    call_batches,
    gc_paused,
    request_batches,
    utc_text,
)
from callbackd.adapters.reports.touches import fold_touches_in
from callbackd.domain.metrics import REACHED_STATUSES, CallRow, Grouping, Report, Thresholds
from callbackd.domain.partials import (
    CellBuilder,
    Slice,
    decode_slice,
    encode_slice,
    merge_reach,
    merge_report,
)
from callbackd.domain.periods import midnight

CONSOLE_GROUPINGS = (Grouping.QUEUE, Grouping.OPERATOR)
HOUR = timedelta(hours=1)
log = structlog.get_logger("callbackd.figures")


def over(end: datetime, now: datetime) -> bool:
    """A slice ending at *end* is kept (in memory for the ttl, in the database while its hours
    are untouched) once it is over; the one under way is always read."""
    return end <= now


def figures_calls_query(start: datetime, end: datetime, dialect: str):
    """:func:`.queries.calls_query` with the call's request joined once instead of looked up twice.

    A contact is unique per (pbx, source, source_ref), so the outer joins never repeat a call.
    """
    contact, req = aliased(m.Contact), aliased(m.Request)
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
        func.coalesce(req.status, "").not_in(sorted(REACHED_STATUSES)),
    )
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
            case((open_question, or_(by_call, by_callback)), else_=false()),
            req.status,
        )
        .select_from(m.Call)
        .outerjoin(
            contact,
            and_(
                m.Call.outcome == "missed",
                contact.pbx == m.Call.pbx,
                contact.source == "ami",
                contact.source_ref == m.Call.linkedid,
            ),
        )
        .outerjoin(req, req.id == contact.request_id)
        .where(m.Call.started_at >= start, m.Call.started_at < end, _not_callback_leg())
        .execution_options(yield_per=BATCH)
    )


def reach_query(start: datetime, end: datetime, dialect: str):
    """Answered callbacks started in the period with their try (what :func:`reach_by_try` counts)."""
    return select(m.Attempt.try_no, utc_text(m.Attempt.started_at, dialect)).where(
        m.Attempt.outcome == "answered", m.Attempt.started_at >= start, m.Attempt.started_at < end
    )


async def _slices(
    conn: AsyncConnection,
    spans: list[tuple[datetime, datetime]],
    by: Grouping,
    tz: tzinfo,
    thresholds: Thresholds,
) -> list[Slice]:
    """Consecutive spans read in one pass, each row folded into its span's cells.

    Span edges are local midnights or UTC hours, so on quarter hours of UTC time like the
    time keys: the span of a row is worked out once per quarter hour. When every span is a
    whole local day, the rows go into one set of cells, shared out by the day their time key
    names once the pass is over: the span of every row is not looked up.
    """
    builders = [CellBuilder(by, tz, thresholds) for _ in spans]
    days = _day_index(spans, tz) if len(spans) > 1 else None
    one = builders[0] if len(spans) == 1 else CellBuilder(by, tz, thresholds) if days else None
    reach: list[dict[int, int]] = [{} for _ in spans]
    edges = [start.timestamp() for start, _ in spans]
    memo: dict[float, int] = {}

    def span_of(at: datetime) -> int:
        bucket = at.timestamp() // 900
        i = memo.get(bucket)
        if i is None:
            i = memo[bucket] = bisect_right(edges, bucket * 900) - 1
        return i

    start, end = spans[0][0], spans[-1][1]
    async for calls in call_batches(conn, start, end, figures_calls_query):
        if one is not None:
            one.add_calls(calls)
            continue
        parts: dict[int, list[CallRow]] = {}
        for c in calls:
            i = span_of(c.started_at)
            part = parts.get(i)
            if part is None:
                part = parts[i] = []
            part.append(c)
        for i, part in parts.items():
            builders[i].add_calls(part)
    async for batch in request_batches(conn, start, end, with_queue=True):
        for req, attempts in batch:
            (one or builders[span_of(req.created_at)]).add_request(req, attempts)
    answered = await conn.stream(reach_query(start, end, conn.dialect.name))  # a million at 10M calls
    async for part in answered.partitions(BATCH):
        for try_no, at in part:
            counts = reach[span_of(datetime.fromisoformat(at + "+00:00"))]
            counts[int(try_no)] = counts.get(int(try_no), 0) + 1
    if days is not None and one is not None:
        for key, acc in one.cells.items():  # a day key, or an hour key starting with its day
            builders[days[key[0][:10]]].cells[key] = acc
    return [Slice(s, e, b.groups(), r) for (s, e), b, r in zip(spans, builders, reach, strict=True)]


def _day_index(spans: list[tuple[datetime, datetime]], tz: tzinfo) -> dict[str, int] | None:
    """Each span's local day (ISO date) to its index, if every span runs from a local midnight
    to the next and those midnights exist as such (else None): then the day of a row's time key
    is the day of its span."""
    index: dict[str, int] = {}
    for i, (start, end) in enumerate(spans):
        day = start.astimezone(tz).date()
        for edge, d in ((start, day), (end, day + timedelta(days=1))):
            back = edge.astimezone(UTC).astimezone(tz)
            if edge != midnight(d, tz) or (back.date(), back.time()) != (d, wall_time(0)):
                return None
        index[day.isoformat()] = i
    return index


class FiguresCache:
    """Groups of slices that are over, kept ``ttl`` seconds and at most ``size`` of them.

    Expired slices are dropped at every store, so the memory held is what was shown in the
    last ``ttl``: about 0.1 MB a day at 33,000 calls a day, so a year's page holds some
    40 MB for a minute. Shared by the console's requests, which run in worker threads: one
    lock guards the dict.
    """

    def __init__(
        self, ttl: float = 60.0, size: int = 400, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl, self.size, self.clock = ttl, size, clock
        self._lock = threading.Lock()
        self._days: dict[tuple, tuple[float, Slice]] = {}

    def get(self, key: tuple) -> Slice | None:
        with self._lock:
            hit = self._days.get(key)
            if hit is None:
                return None
            if self.clock() - hit[0] >= self.ttl:
                del self._days[key]
                return None
            return hit[1]

    def put(self, key: tuple, part: Slice) -> None:
        with self._lock:
            now = self.clock()
            for k in [k for k, (at, _) in self._days.items() if now - at >= self.ttl]:
                del self._days[k]
            self._days.pop(key, None)  # stored again: it moves to the end, the newest
            while len(self._days) >= self.size:  # the oldest entry first (insertion order)
                del self._days[next(iter(self._days))]
            self._days[key] = (now, part)

    def clear(self) -> None:
        with self._lock:
            self._days.clear()


async def build_figures(
    engine: AsyncEngine,
    first: date,
    last: date,
    *,
    by: Grouping,
    tz: tzinfo,
    thresholds: Thresholds,
    cache: FiguresCache | None = None,
    now: datetime | None = None,
) -> tuple[Report, Report, Report, dict[int, int]]:
    """Reports by *by*, by queue and by operator, and answered callbacks by try, over whole days.

    The period runs from *first*'s midnight to the midnight after *last*, in *tz*.
    """
    groupings = (by, *CONSOLE_GROUPINGS)
    start, end = midnight(first, tz), midnight(last + timedelta(days=1), tz)
    with gc_paused():
        done = await day_slices(
            engine, first, last, by=by, tz=tz, thresholds=thresholds, cache=cache, now=now
        )
        reports = [merge_report(done, start, end, g, tz, thresholds) for g in groupings]
    return (*reports, merge_reach(done))  # type: ignore[return-value]


async def day_slices(
    engine: AsyncEngine,
    first: date,
    last: date,
    *,
    by: Grouping,
    tz: tzinfo,
    thresholds: Thresholds,
    cache: FiguresCache | None = None,
    now: datetime | None = None,
) -> list[Slice]:
    """The slices of the days *first* to *last* (see :func:`_spans`), each grouped by *by* (day or
    hour), queue and operator: from *cache*, else stored ones still valid, else read from rows in
    one pass per run of missing days (and those that are over stored for next time)."""
    now = now or datetime.now(UTC)
    groupings = (by, *CONSOLE_GROUPINGS)
    spans = list(_spans(first, last, tz, now))
    slices: list[Slice | None] = []
    keys = [(start, end, groupings, str(tz), thresholds, str(engine.url)) for start, end in spans]
    for key in keys:
        slices.append(cache.get(key) if cache is not None else None)
    built: list[tuple[Slice, int]] = []  # slices over, read from rows, to store with their touches
    if any(p is None for p in slices):
        async with engine.connect() as conn:
            if engine.dialect.name == "postgresql":  # every pass sees one snapshot
                await conn.execution_options(isolation_level="REPEATABLE READ")
            wanted = [i for i, p in enumerate(slices) if p is None and over(spans[i][1], now)]
            touched = await _touched(conn, [spans[i] for i in wanted])
            for i, part in zip(wanted, await _stored(conn, [spans[i] for i in wanted], by, tz, thresholds,
                                                     touched), strict=True):  # fmt: skip
                if part is not None:
                    slices[i] = part
                    if cache is not None:
                        cache.put(keys[i], part)
            i = 0
            while i < len(spans):  # each run of spans still missing in one pass
                if slices[i] is not None:
                    i += 1
                    continue
                j = i
                while j < len(spans) and slices[j] is None:
                    j += 1
                for k, part in enumerate(await _slices(conn, spans[i:j], by, tz, thresholds), start=i):
                    slices[k] = part
                    if over(part.end, now):
                        if cache is not None:
                            cache.put(keys[k], part)
                        built.append((part, touched.get((part.start, part.end), 0)))
                i = j
        if built:
            await _store(engine, built, by, tz, thresholds)
    return [p for p in slices if p is not None]


def whole_days(start: datetime, end: datetime, tz: tzinfo) -> tuple[date, date] | None:
    """The first and last local day of a period from a local midnight to a later one, else None."""
    first, after = start.astimezone(tz).date(), end.astimezone(tz).date()
    if after <= first or midnight(first, tz) != start or midnight(after, tz) != end:
        return None
    return first, after - timedelta(days=1)


FROM_DAYS = frozenset({None, Grouping.DAY, Grouping.QUEUE, Grouping.OPERATOR})


async def period_report(
    engine: AsyncEngine,
    start: datetime,
    end: datetime,
    *,
    by: Grouping | None,
    tz: tzinfo,
    thresholds: Thresholds,
    now: datetime | None = None,
) -> Report:
    """:func:`.queries.build_report`, merged from the day slices the console keeps when it can.

    A period of whole local days, in total or by day, queue or operator, is the merge of its
    days' groups: every figure is made of counts, sums and lists of durations, so medians and p90
    are exact too (see :mod:`callbackd.domain.partials`; only the float sums behind ASA, ATA and
    AHT may differ in the last bit, far below the tenth of a second shown). Days stored in
    ``figures_partials`` and untouched since are not read again; the others are read in one pass
    and stored for next time. Other periods and groupings (by hour, by source) are read row by row.
    """
    days = whole_days(start, end, tz) if by in FROM_DAYS else None
    if days is None:
        return await build_report(engine, start, end, by=by, tz=tz, thresholds=thresholds)
    with gc_paused():
        done = await day_slices(engine, *days, by=Grouping.DAY, tz=tz, thresholds=thresholds, now=now)
        return merge_report(done, start, end, by, tz, thresholds)


# -- stored slices ----------------------------------------------------------------------------


def _hours(start: datetime, end: datetime) -> range:
    """The UTC hours (epoch seconds // 3600) a span overlaps: those whose touches can change it."""
    return range(math.floor(start.timestamp() / 3600), math.ceil(end.timestamp() / 3600))


def _key(end: datetime, by: Grouping, tz: tzinfo, thresholds: Thresholds) -> str:
    """What a stored slice depends on besides its start: its end, grouping, zone and thresholds.

    Not its format: a slice of another format is found, said so, and replaced."""
    what = repr((end.astimezone(UTC).isoformat(), str(by), str(tz), thresholds))
    return hashlib.sha256(what.encode()).hexdigest()


async def _touched(conn: AsyncConnection, spans: list[tuple[datetime, datetime]]) -> dict[tuple, int]:
    """The touches of each span's hours, in the snapshot the spans are read in (one query)."""
    if not spans:
        return {}
    lo = min(_hours(s, e).start for s, e in spans)
    hi = max(_hours(s, e).stop for s, e in spans)
    t = m.FiguresTouched
    stmt = select(t.hour, func.sum(t.n)).where(t.hour >= lo, t.hour < hi).group_by(t.hour)
    per_hour = {int(h): int(n) for h, n in (await conn.execute(stmt)).all()}
    return {(s, e): sum(per_hour.get(h, 0) for h in _hours(s, e)) for s, e in spans}


async def _stored(
    conn: AsyncConnection,
    spans: list[tuple[datetime, datetime]],
    by: Grouping,
    tz: tzinfo,
    thresholds: Thresholds,
    touched: dict[tuple, int],
) -> list[Slice | None]:
    """The stored slice of each span whose hours are untouched since it was built, else None."""
    if not spans:
        return []
    p = m.FiguresPartial
    want = {(s, _key(e, by, tz, thresholds)): (s, e) for s, e in spans}
    rows = await conn.stream(  # one at a time: a month of days is tens of MB at 10M calls
        select(p.start_at, p.key, p.touched, p.data).where(
            p.start_at.in_([s for s, _ in spans]), p.key.in_(sorted({k for _, k in want}))
        )
    )
    found: dict[tuple, Slice] = {}
    async for start, key, n, data in rows:
        span = want.get((start, key))
        if span is None or n != touched[span]:
            continue
        try:
            found[span] = decode_slice(bytes(data), *span)
        except ValueError as e:
            log.warning("figures.stored_slice_unreadable", start=span[0].isoformat(), error=str(e))
    return [found.get(span) for span in spans]


async def _store(engine: AsyncEngine, built: list[tuple[Slice, int]], by: Grouping, tz: tzinfo,
                 thresholds: Thresholds) -> None:  # fmt: skip
    """Keep slices that are over with the touches they were built under; fold the touches.

    A cache: a failure here (a read-only database, a lock held too long) costs the next view a
    read of the rows, never this page. Storing a day drops the stored hours inside it (the
    hours of a day shown while under way), which the day's slice now covers.
    """
    p = m.FiguresPartial
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    try:
        async with engine.begin() as conn:
            for part, n in built:
                if part.end - part.start > HOUR:
                    await conn.execute(
                        delete(p).where(
                            p.start_at >= part.start,
                            p.end_at <= part.end,
                            or_(p.start_at != part.start, p.end_at != part.end),
                        )
                    )
                row = {"start_at": part.start, "key": _key(part.end, by, tz, thresholds), "end_at": part.end,
                       "touched": n, "data": encode_slice(part)}  # fmt: skip
                stmt = dialect_insert(p).values(**row)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["start_at", "key"],
                        set_={"end_at": stmt.excluded.end_at, "touched": stmt.excluded.touched,
                              "data": stmt.excluded.data},
                    )
                )  # fmt: skip
            await fold_touches_in(conn)
    except Exception as e:  # a cache that cannot be written is a cache miss later
        log.warning("figures.store_failed", error=f"{e.__class__.__name__}: {e}")


def _spans(first: date, last: date, tz: tzinfo, now: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The period in slices: whole days once over; the day under way by the hour, from the hours
    that are over up to one slice from the current hour to midnight (later days whole)."""
    day = first
    while day <= last:
        start, end = midnight(day, tz), midnight(day + timedelta(days=1), tz)
        if end <= now or start >= now:
            yield start, end
        else:
            at = start.astimezone(UTC)  # steps of an hour: UTC has no wall-clock jumps
            while at + HOUR <= now:
                yield at, at + HOUR
                at += HOUR
            yield at, end
        day += timedelta(days=1)
