"""The console's one-pass figures against the report builder, on real SQLite and PostgreSQL.

A generated dataset over four days in Moscow time (calls with microsecond timestamps, queues,
agents, requests with attempts, some joined by a later call, some reached later by the
client's own call): :func:`build_figures` must give, for each day and period, what
:func:`build_report` gives for the same grouping and :func:`reach_by_try` for the same period.
"""

from __future__ import annotations

import io
import json
import random
from array import array
from dataclasses import fields
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import structlog
from sqlalchemy import delete, func, select, update

from callbackd.adapters import db
from callbackd.adapters import models as m
from callbackd.adapters.reports import (
    CsvOptions,
    ReportSettings,
    build_report,
    figures,
    period_report,
    touches,
    write_report,
)
from callbackd.adapters.reports.figures import FiguresCache, build_figures
from callbackd.adapters.reports.queries import reach_by_try
from callbackd.domain.metrics import Accumulator, Figures, Grouping, Thresholds
from callbackd.domain.partials import merge_into
from callbackd.domain.periods import midnight

MSK = ZoneInfo("Europe/Moscow")
FIRST = date(2026, 3, 2)
DAYS = 4
THRESHOLDS = Thresholds()
FLOAT_SUMS = {"asa", "ata", "aht"}  # means of float sums: equal up to the order of addition
SETTINGS = ReportSettings(tz=MSK, thresholds=THRESHOLDS, csv=CsvOptions())


def us(rnd: random.Random, low: int, high: int) -> timedelta:
    """Between *low* and *high* seconds, with microseconds."""
    return timedelta(seconds=rnd.randrange(low, high), microseconds=rnd.randrange(10**6))


def generate(seed: int = 7) -> list[m.Base]:
    rnd = random.Random(seed)
    numbers = [f"+1202555{i:04d}" for i in range(60)]
    agents = [f"PJSIP/op{i}" for i in range(5)]
    t0 = midnight(FIRST, MSK).astimezone(UTC) - timedelta(hours=2)  # a few calls the day before
    rows: list[m.Base] = []
    open_of: dict[str, int] = {}  # one open request per number
    starts = sorted(t0 + us(rnd, 0, (DAYS + 1) * 86400) for _ in range(600))
    for i, start in enumerate(starts):
        number = rnd.choice(numbers) if rnd.random() > 0.05 else None
        queue = rnd.choice(["support", "sales", None])
        lid = f"{1772323200 + i}.{i}"
        if rnd.random() < 0.6:
            wait = us(rnd, 0, 60)
            answered = start + wait
            rows.append(
                m.Call(
                    linkedid=lid, number=number, queue=queue, started_at=start, answered_at=answered,
                    ended_at=answered + us(rnd, 10, 600), hold_time=rnd.choice([None, wait.seconds]),
                    agent=rnd.choice(agents), outcome="answered", node="n1",
                )
            )  # fmt: skip
            continue
        length = us(rnd, 0, 120)
        ended = start + length
        reason = rnd.choice(["queue_abandon", "queue_timeout"]) if queue else "no_answer"
        rows.append(
            m.Call(
                linkedid=lid, number=number, queue=queue, started_at=start, ended_at=ended,
                hold_time=rnd.choice([None, length.seconds]), outcome="missed", miss_reason=reason, node="n1",
            )
        )  # fmt: skip
        if number is None or rnd.random() < 0.2:
            continue
        if number in open_of:  # the call joins the number's open request
            rows.append(m.Contact(source="ami", source_ref=lid, number=number, reason=reason, at=ended,
                                  disposition="merged", request_id=open_of[number]))  # fmt: skip
            continue
        rid = sum(isinstance(r, m.Request) for r in rows) + 1
        status = rnd.choice(["reached", "recovered", "expired", "failed", "cancelled", "open", "dialling"])
        if status in ("open", "dialling"):
            open_of[number] = rid
        tries = rnd.randrange(0, 4) if status != "reached" else rnd.randrange(1, 4)
        rows.append(
            m.Request(
                id=rid, number=number, name="", reason=reason, sources=["ami"], contact_count=1,
                status=status, created_at=ended, updated_at=ended, attempts_made=tries, operator_tries=0,
                note="",
            )
        )  # fmt: skip
        rows.append(m.Contact(source="ami", source_ref=lid, number=number, reason=reason, at=ended,
                              disposition="schedule", request_id=rid))  # fmt: skip
        at = ended
        for t in range(tries):
            at += us(rnd, 60, 20000)
            outcome = "answered" if status == "reached" and t == tries - 1 else "client_no_answer"
            rows.append(
                m.Attempt(
                    id=f"a{rid}-{t}", request_id=rid, try_no=t + 1, operator=rnd.choice(agents),
                    channel_id=f"cbd-{rid}-{t}", number=number, status="done", outcome=outcome, counted=True,
                    started_at=at, ended_at=at + timedelta(seconds=30), node="n1",
                )
            )  # fmt: skip
    return rows


@pytest.fixture
async def engine(db_url):
    e = db.make_engine(db_url)
    await db.upgrade(e)
    rows = generate()
    async with db.sessionmaker(e)() as session, session.begin():
        for kind in (m.Call, m.Request, m.Contact, m.Attempt):
            session.add_all([r for r in rows if isinstance(r, kind)])
            await session.flush()
    yield e
    await e.dispose()


def same_figures(got: Figures, want: Figures) -> None:
    for f in fields(Figures):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if f.name in FLOAT_SUMS and a is not None and b is not None:
            assert a == pytest.approx(b, rel=1e-12, abs=0), f.name
        else:
            assert a == b, f.name


def same_report(got, want) -> None:
    assert [k for k, _ in got.rows] == [k for k, _ in want.rows]
    for (_, g), (_, w) in zip(got.rows, want.rows, strict=True):
        same_figures(g, w)
    same_figures(got.total, want.total)
    assert (got.start, got.end, got.by) == (want.start, want.end, want.by)


def local(d: date, hours: float) -> datetime:
    return midnight(d, MSK).astimezone(UTC) + timedelta(hours=hours)


THIRD = FIRST + timedelta(days=2)


@pytest.mark.parametrize(
    ("first", "last", "by", "now"),
    [
        (FIRST, FIRST, Grouping.HOUR, None),  # a day that is over: one slice
        (THIRD, THIRD, Grouping.HOUR, local(THIRD, 15.75)),  # today at 15:45: 15 hours and the rest
        (FIRST, FIRST + timedelta(days=DAYS - 1), Grouping.DAY, None),  # a period, merged day by day
        (FIRST, FIRST + timedelta(days=DAYS - 1), Grouping.DAY, local(THIRD, 7.5)),  # days, hours, a day
    ],
    ids=["day", "today", "period", "period-under-way"],
)
async def test_one_pass_figures_match_one_report_per_grouping(engine, first, last, by, now):
    start, end = midnight(first, MSK), midnight(last + timedelta(days=1), MSK)
    got = await build_figures(engine, first, last, by=by, tz=MSK, thresholds=THRESHOLDS, now=now)
    for rep, g in zip(got[:3], (by, Grouping.QUEUE, Grouping.OPERATOR), strict=True):
        want = await build_report(engine, start, end, by=g, tz=MSK, thresholds=THRESHOLDS)
        same_report(rep, want)
        assert want.total.offered > 50 and want.total.requests > 10  # the dataset is not trivial
        assert want.total.net_lost < want.total.abandoned  # some lost callers were reached later
    assert got[3] == await reach_by_try(engine, start, end)
    assert sum(got[3].values()) > 0


def test_the_cells_merge_every_slot_of_an_accumulator():
    """merge_into (written out for speed) gives what Accumulator.merge gives, slot by slot."""
    source = Accumulator()
    for n, name in enumerate(Accumulator.__slots__, start=1):
        value = getattr(source, name)
        setattr(source, name, array("i", [n]) if isinstance(value, array) else n)
    fast, reference = Accumulator(), Accumulator()
    merge_into(fast, source)
    reference.merge(source)
    assert {n: getattr(fast, n) for n in Accumulator.__slots__} == {
        n: getattr(reference, n) for n in Accumulator.__slots__
    }
    assert all(getattr(fast, n) for n in Accumulator.__slots__)  # no slot left at zero


async def test_slices_that_are_over_are_kept_for_the_ttl_the_current_hour_never(engine):
    """Yesterday and this morning's hours come from the cache until the ttl runs out; the
    current hour is read every time."""
    clock = [0.0]
    cache = FiguresCache(ttl=60, clock=lambda: clock[0])
    day, today = FIRST, FIRST + timedelta(days=1)
    now = local(today, 12.5)

    async def offered(d: date) -> int:
        reps = await build_figures(engine, d, d, by=Grouping.HOUR, tz=MSK, thresholds=THRESHOLDS,
                                   cache=cache, now=now)  # fmt: skip
        return reps[0].total.offered

    before = await offered(day), await offered(today)
    async with db.sessionmaker(engine)() as session, session.begin():
        for lid, at in (
            ("late-1", local(day, 10)),
            ("morning-1", local(today, 10)),
            ("new-1", local(today, 12.2)),
        ):
            session.add(m.Call(linkedid=lid, number=None, queue=None, started_at=at, answered_at=at,
                               ended_at=at + timedelta(seconds=5), outcome="answered", agent="op",
                               node="n1"))  # fmt: skip
    clock[0] = 59.0
    assert (await offered(day), await offered(today)) == (before[0], before[1] + 1)  # new-1 only
    clock[0] = 60.0
    assert (await offered(day), await offered(today)) == (before[0] + 1, before[1] + 2)


def test_the_cache_stays_bounded():
    clock = [0.0]
    cache = FiguresCache(ttl=60, size=3, clock=lambda: clock[0])
    for i in range(5):
        clock[0] = float(i)
        cache.put((i,), object())  # type: ignore[arg-type]
    assert [cache.get((i,)) is not None for i in range(5)] == [False, False, True, True, True]


# -- stored slices --------------------------------------------------------------------------

LAST = FIRST + timedelta(days=DAYS - 1)


@pytest.fixture
def read_from_rows(monkeypatch):
    """The local days (start dates in Moscow) whose rows each build_figures call reads, in order."""
    calls: list[set[date]] = []
    real = figures._slices

    async def spy(conn, spans, *a, **kw):
        calls[-1].update(s.astimezone(MSK).date() for s, _ in spans)
        return await real(conn, spans, *a, **kw)

    monkeypatch.setattr(figures, "_slices", spy)

    async def build(engine, first=FIRST, last=LAST, by=Grouping.DAY, now=None, cache=None):
        calls.append(set())
        got = await build_figures(engine, first, last, by=by, tz=MSK, thresholds=THRESHOLDS, now=now,
                                  cache=cache)  # fmt: skip
        return got, calls[-1]

    return build


async def same_as_rows(engine, got, first=FIRST, last=LAST, by=Grouping.DAY) -> None:
    start, end = midnight(first, MSK), midnight(last + timedelta(days=1), MSK)
    for rep, g in zip(got[:3], (by, Grouping.QUEUE, Grouping.OPERATOR), strict=True):
        same_report(rep, await build_report(engine, start, end, by=g, tz=MSK, thresholds=THRESHOLDS))
    assert got[3] == await reach_by_try(engine, start, end)


@pytest.mark.parametrize(
    ("first", "last", "by", "now"),
    [
        (FIRST, FIRST, Grouping.HOUR, None),
        (THIRD, THIRD, Grouping.HOUR, local(THIRD, 15.75)),
        (FIRST, LAST, Grouping.DAY, None),
        (FIRST, LAST, Grouping.DAY, local(THIRD, 7.5)),
    ],
    ids=["day", "today", "period", "period-under-way"],
)
async def test_a_cold_start_takes_the_days_that_are_over_from_the_database(
    engine, read_from_rows, first, last, by, now
):
    """No cache in memory, as after a restart: only the day under way is read from rows, and the
    figures are those read from rows, to the last bit."""
    built, read = await read_from_rows(engine, first, last, by, now)
    assert read == {d for d in (first + timedelta(days=i) for i in range((last - first).days + 1))}
    again, read = await read_from_rows(engine, first, last, by, now)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    assert read == {
        d for d in days if now and midnight(d + timedelta(days=1), MSK) > now
    }  # under way, to come
    assert again == built
    await same_as_rows(engine, again, first, last, by)
    async with engine.begin() as conn:  # the table is a cache: emptied, it is built again
        await conn.execute(delete(m.FiguresPartial))
    emptied, read = await read_from_rows(engine, first, last, by, now)
    assert emptied == built and len(read) == (last - first).days + 1


async def test_the_hours_of_today_give_way_to_the_day_once_it_is_over(engine, read_from_rows):
    await read_from_rows(engine, THIRD, THIRD, Grouping.HOUR, local(THIRD, 15.75))
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(m.FiguresPartial))).scalar() == 15
    await read_from_rows(engine, THIRD, THIRD, Grouping.HOUR, None)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(m.FiguresPartial.start_at, m.FiguresPartial.end_at))).all()
    assert rows == [(midnight(THIRD, MSK), midnight(THIRD + timedelta(days=1), MSK))]


def call(lid: str, number: str | None, at: datetime, outcome: str = "missed") -> m.Call:
    answered = at + timedelta(seconds=3) if outcome == "answered" else None
    return m.Call(linkedid=lid, number=number, queue="support", started_at=at, answered_at=answered,
                  ended_at=at + timedelta(seconds=40), outcome=outcome,
                  agent="PJSIP/op1" if answered else None,
                  miss_reason="queue_abandon" if outcome == "missed" else None, node="n1")  # fmt: skip


async def add(engine, *rows: m.Base) -> None:
    async with db.sessionmaker(engine)() as session, session.begin():
        for row in rows:
            session.add(row)
            await session.flush()


async def test_a_late_write_reads_again_exactly_the_days_it_changes(engine, read_from_rows):
    """A late call row, a callback reaching a caller lost days ago, a later call joining an old
    request: each makes the days whose figures it may change be read again, and no other."""
    d1, d2, d3 = FIRST, FIRST + timedelta(days=1), FIRST + timedelta(days=3)
    number = "+12025559999"  # a number of its own: no earlier answers
    req = m.Request(id=9001, number=number, name="", reason="queue_abandon", sources=["ami"], contact_count=1,
                    status="open", created_at=local(d1, 9.01), updated_at=local(d1, 9.01), attempts_made=0,
                    operator_tries=0, note="")  # fmt: skip
    await add(engine, call("x-1", number, local(d1, 9)), req,
              m.Contact(source="ami", source_ref="x-1", number=number, reason="queue_abandon",
                        at=local(d1, 9.01), disposition="schedule", request_id=9001))  # fmt: skip
    await read_from_rows(engine)
    assert (await read_from_rows(engine))[1] == set()

    last_instant = midnight(d2 + timedelta(days=1), MSK) - timedelta(microseconds=1)
    await add(engine, call("late-1", None, last_instant, "answered"))  # a late row, the 2nd day's last µs
    got, read = await read_from_rows(engine)
    assert read == {d2}
    await same_as_rows(engine, got)

    await add(engine, call("x-2", number, local(d2, 14)))  # the caller tries again, and joins the request
    await read_from_rows(engine)
    await add(engine, m.Contact(source="ami", source_ref="x-2", number=number, reason="queue_abandon",
                                at=local(d2, 14.01), disposition="merged", request_id=9001))  # fmt: skip
    got, read = await read_from_rows(engine)
    assert read == {d1, d2}  # the call's request status, and the request's first contact
    await same_as_rows(engine, got)

    # Days later a callback reaches the client: the request's day, the two missed calls now
    # reached later, the attempt's own day (answered callbacks by try).
    await add(engine, m.Attempt(id="x-a1", request_id=9001, try_no=1, operator="PJSIP/op2",
                                channel_id="x-c1", number=number, status="dialling", started_at=local(d3, 11),
                                node="n1"))  # fmt: skip
    got, read = await read_from_rows(engine)
    assert read == {d1, d3}
    async with engine.begin() as conn:
        await conn.execute(
            update(m.Attempt).where(m.Attempt.id == "x-a1").values(status="done", outcome="answered")
        )
        await conn.execute(
            update(m.Request).where(m.Request.id == 9001).values(status="reached", attempts_made=1)
        )
    got, read = await read_from_rows(engine)
    assert read == {d1, d2, d3}
    await same_as_rows(engine, got)

    async with engine.begin() as conn:  # what figures do not read: no day is read again
        await conn.execute(update(m.Request).where(m.Request.id == 9001).values(note="called", due_at=None))
        await conn.execute(update(m.Attempt).where(m.Attempt.id == "x-a1").values(lease_until=local(d3, 12)))
    assert (await read_from_rows(engine))[1] == set()

    async with engine.begin() as conn:  # an erasure deletes the first call: its day is read again
        await conn.execute(delete(m.Contact).where(m.Contact.source_ref == "x-1"))
        await conn.execute(delete(m.Call).where(m.Call.linkedid == "x-1"))
    got, read = await read_from_rows(engine)
    assert read == {d1}
    await same_as_rows(engine, got)


async def test_touches_are_folded_one_row_an_hour_as_days_are_stored(engine, read_from_rows):
    async with engine.connect() as conn:
        before = (await conn.execute(select(func.count()).select_from(m.FiguresTouched))).scalar()
        sums = (await conn.execute(select(func.sum(m.FiguresTouched.n)))).scalar()
    await read_from_rows(engine)
    async with engine.connect() as conn:
        hours = (await conn.execute(select(func.count(m.FiguresTouched.hour.distinct())))).scalar()
        after = (await conn.execute(select(func.count()).select_from(m.FiguresTouched))).scalar()
        assert (await conn.execute(select(func.sum(m.FiguresTouched.n)))).scalar() == sums
    assert before > after == hours
    await add(engine, call("fold-1", None, local(FIRST, 3)), call("fold-2", None, local(FIRST, 3.5)))
    await touches.fold_touches(engine)  # as the daemon does hourly
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(m.FiguresTouched))).scalar() == hours
        assert (await conn.execute(select(func.sum(m.FiguresTouched.n)))).scalar() == sums + 2


async def test_an_unreadable_stored_day_is_read_again_with_one_warning(engine, read_from_rows):
    built, _ = await read_from_rows(engine)
    d2, d3 = FIRST + timedelta(days=1), FIRST + timedelta(days=2)
    old = json.dumps({"v": 0, "groups": {}, "reach": []}).encode()
    async with engine.begin() as conn:
        for d, data in ((d2, b"\x00not json"), (d3, old)):
            await conn.execute(
                update(m.FiguresPartial)
                .where(m.FiguresPartial.start_at == midnight(d, MSK))
                .values(data=data)
            )
    with structlog.testing.capture_logs() as logs:
        got, read = await read_from_rows(engine)
    assert read == {d2, d3}
    assert got == built
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("figures.stored_slice_unreadable", "warning")
    ] * 2
    assert (await read_from_rows(engine))[1] == set()  # stored again, readable


# -- the report command from stored days ------------------------------------------------------


@pytest.fixture
def days_read(monkeypatch):
    """The local days (in Moscow) whose rows period_report reads, since the fixture was made."""
    read: set[date] = set()
    real = figures._slices

    async def spy(conn, spans, *a, **kw):
        read.update(s.astimezone(MSK).date() for s, _ in spans)
        return await real(conn, spans, *a, **kw)

    monkeypatch.setattr(figures, "_slices", spy)
    return read


def rendered(report) -> list[str]:
    """The report as every text format shows it."""
    out = []
    for fmt in ("csv", "json", "table"):
        buf = io.StringIO()
        write_report(report, buf, fmt, SETTINGS, CsvOptions())
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("by", [None, Grouping.DAY, Grouping.QUEUE, Grouping.OPERATOR])
async def test_a_report_over_whole_days_is_merged_from_the_stored_days(engine, days_read, by):
    """`callbackd report` over whole local days gives, from stored days, exactly what reading
    every row gives: the same figures and the same files in every format."""
    start, end = midnight(FIRST, MSK), midnight(LAST + timedelta(days=1), MSK)
    want = await build_report(engine, start, end, by=by, tz=MSK, thresholds=THRESHOLDS)
    assert want.total.offered > 50 and want.total.reach_median is not None  # medians too
    cold = await period_report(engine, start, end, by=by, tz=MSK, thresholds=THRESHOLDS)
    assert days_read == {FIRST + timedelta(days=i) for i in range(DAYS)}
    days_read.clear()
    warm = await period_report(engine, start, end, by=by, tz=MSK, thresholds=THRESHOLDS)
    assert days_read == set()  # every day from figures_partials
    for got in (cold, warm):
        same_report(got, want)
        assert rendered(got) == rendered(want)

    d2 = FIRST + timedelta(days=1)
    await add(engine, call("late-report", "+12025559998", local(d2, 8)))  # a late row on the 2nd day
    again = await period_report(engine, start, end, by=by, tz=MSK, thresholds=THRESHOLDS)
    assert days_read == {d2}
    want = await build_report(engine, start, end, by=by, tz=MSK, thresholds=THRESHOLDS)
    assert rendered(again) == rendered(want)


@pytest.mark.parametrize(
    ("start", "end", "by"),
    [
        (local(FIRST, 6), midnight(LAST, MSK), Grouping.DAY),  # from 06:00: not whole days
        (midnight(FIRST, MSK), midnight(LAST, MSK), Grouping.HOUR),
        (midnight(FIRST, MSK), midnight(LAST, MSK), Grouping.SOURCE),
        (midnight(FIRST, UTC), midnight(LAST, UTC), Grouping.DAY),  # UTC midnights, Moscow days
    ],
    ids=["part-day", "by-hour", "by-source", "other-zone"],
)
async def test_other_reports_are_read_row_by_row(engine, days_read, start, end, by):
    got = await period_report(engine, start, end, by=by, tz=MSK, thresholds=THRESHOLDS)
    assert days_read == set()
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(m.FiguresPartial))).scalar() == 0
    assert rendered(got) == rendered(
        await build_report(engine, start, end, by=by, tz=MSK, thresholds=THRESHOLDS)
    )


@pytest.mark.parametrize(
    ("zone", "first", "shared"),
    [
        ("Europe/Moscow", FIRST, True),
        ("Europe/Berlin", date(2026, 3, 27), True),  # a 23-hour day: its midnights exist
        ("America/Santiago", date(2026, 9, 4), False),  # clocks jump at midnight: no 00:00 that day
    ],
)
def test_days_share_one_set_of_cells_only_where_every_midnight_exists(zone, first, shared):
    tz = ZoneInfo(zone)
    spans = list(figures._spans(first, first + timedelta(days=4), tz, datetime(2027, 1, 1, tzinfo=UTC)))
    index = figures._day_index(spans, tz)
    if shared:
        assert index == {(first + timedelta(days=i)).isoformat(): i for i in range(5)}
    else:
        assert index is None
    hours = list(figures._spans(THIRD, THIRD, MSK, local(THIRD, 15.75)))  # today by the hour
    assert figures._day_index(hours, MSK) is None
