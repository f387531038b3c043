"""The console's figures: one pass for every grouping it shows, slices that are over kept a while.

:func:`build_figures` gives the same reports as :func:`.queries.build_report` run once
per grouping, plus :func:`.queries.reach_by_try`, but reads each call and request once
and folds it into the time, queue and operator groups together. The period is read in
slices: whole days (in the report's time zone), and today by the hour. A
:class:`FiguresCache` keeps the groups of slices that are over for ``ttl`` seconds, so a
page shown again reads only the current hour. The current hour is always read afresh;
a change to a slice already over (a callback that reaches a caller lost this morning or
yesterday, a request closed, a late call row) shows within ``ttl``.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, tzinfo

from sqlalchemy import and_, case, exists, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from callbackd.adapters import models as m
from callbackd.adapters.reports.queries import (
    BATCH,
    _not_callback_leg,
    call_batches,
    gc_paused,
    request_batches,
    utc_text,
)
from callbackd.domain.metrics import REACHED_STATUSES, CallRow, Grouping, Report, Thresholds
from callbackd.domain.partials import CellBuilder, Slice, merge_reach, merge_report
from callbackd.domain.periods import midnight

CONSOLE_GROUPINGS = (Grouping.QUEUE, Grouping.OPERATOR)
HOUR = timedelta(hours=1)


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
    engine: AsyncEngine,
    spans: list[tuple[datetime, datetime]],
    by: Grouping,
    tz: tzinfo,
    thresholds: Thresholds,
) -> list[Slice]:
    """Consecutive spans read in one pass, each row folded into its span's cells.

    Span edges are local midnights or UTC hours, so on quarter hours of UTC time like the
    time keys: the span of a row is worked out once per quarter hour.
    """
    builders = [CellBuilder(by, tz, thresholds) for _ in spans]
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
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":  # every pass sees one snapshot
            await conn.execution_options(isolation_level="REPEATABLE READ")
        async for calls in call_batches(conn, start, end, figures_calls_query):
            if len(spans) == 1:
                builders[0].add_calls(calls)
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
                builders[span_of(req.created_at)].add_request(req, attempts)
        for try_no, at in (await conn.execute(reach_query(start, end, conn.dialect.name))).all():
            counts = reach[span_of(datetime.fromisoformat(at + "+00:00"))]
            counts[int(try_no)] = counts.get(int(try_no), 0) + 1
    return [Slice(s, e, b.groups(), r) for (s, e), b, r in zip(spans, builders, reach, strict=True)]


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
    now = now or datetime.now(UTC)
    groupings = (by, *CONSOLE_GROUPINGS)
    spans = list(_spans(first, last, tz, now))
    slices: list[Slice | None] = []
    keys = [(start, end, groupings, str(tz), thresholds, str(engine.url)) for start, end in spans]
    with gc_paused():
        for key in keys:
            slices.append(cache.get(key) if cache is not None else None)
        i = 0
        while i < len(spans):  # each run of spans not in the cache in one pass
            if slices[i] is not None:
                i += 1
                continue
            j = i
            while j < len(spans) and slices[j] is None:
                j += 1
            for k, part in enumerate(await _slices(engine, spans[i:j], by, tz, thresholds), start=i):
                slices[k] = part
                if cache is not None and part.end <= now:
                    cache.put(keys[k], part)
            i = j
        start, end = midnight(first, tz), midnight(last + timedelta(days=1), tz)
        done = [p for p in slices if p is not None]
        reports = [merge_report(done, start, end, g, tz, thresholds) for g in groupings]
    return (*reports, merge_reach(done))  # type: ignore[return-value]


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
