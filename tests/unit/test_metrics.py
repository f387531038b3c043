"""Every report figure against a small dataset whose numbers were worked out by hand.

The dataset: ten calls over two days (plus one the day before, outside the period),
four callback requests and six attempts. Short abandon 5 s, service level 20 s, UTC.

    call  day    queue    number  outcome                     wait  talk  agent
    c0    02-28  support  F       answered (outside period)      5    60  op1
    c1    03-01  support  A       answered                      10   120  op1
    c2    03-01  support  B       answered                      30   300  op2
    c3    03-01  support  C       queue_abandon (short)          3
    c4    03-01  support  D       queue_abandon                 40               r1, reached by callback a2
    c5    03-01  support  E       queue_timeout (no hold_time)  60               r2, called in again: c9
    c6    03-01  -        F       no_answer (no hold_time)      25               r3 expired, not reached: lost
    c7    03-02  sales    G       answered                       5    60  op1
    c8    03-02  -        H       answered (ring group)         15    90  op3
    c9    03-02  support  E       answered                      20   180  op2
    c10   03-02  sales    -       queue_abandon                 12               no number: lost

    request  for  created        source  status     attempts (offset from created: operator outcome)
    r1       c4   03-01 10:00:40  ami    reached    a1 +300 op1 client_no_answer, a2 +3600 op2 answered
    r2       c5   03-01 11:01:00  ami    recovered  a3 +120 op1 operator_no_answer, a4 +900 op3 client_busy
    r3       c6   03-01 12:00:25  ami    expired    a5 +600 op2 client_no_answer, a6 +7200 op1 client_busy
    r4       -    03-02 12:00:00  http   open       none
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from callbackd.domain import metrics
from callbackd.domain.metrics import (
    AttemptRow,
    CallRow,
    Figures,
    Grouping,
    RequestRow,
    Thresholds,
    compute,
    mark_reached_later,
    median,
    p90,
)
from callbackd.domain.periods import named_period, parse_bound, period_label

A, B, C, D, E, F, G, H = (f"+1202555000{i}" for i in range(1, 9))
START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 3, 3, tzinfo=UTC)


def at(day: int, h: int, m: int = 0, s: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, h, m, s, tzinfo=UTC)


def answered(start, queue, number, hold, ring, talk, agent):
    """hold: queue hold time (None outside a queue); ring: seconds from start to answer."""
    ans = start + timedelta(seconds=ring)
    return CallRow(start, queue, ans, hold, ans + timedelta(seconds=talk), "answered", None, agent, number)


def missed(start, queue, number, reason, hold, length, request_status=None):
    """request_status: the status of the callback request the call's contact created or joined."""
    end = start + timedelta(seconds=length)
    return CallRow(start, queue, None, hold, end, "missed", reason, None, number, False, request_status)


CALLS = [
    answered(at(28, 15, month=2), "support", F, 5, 7, 60, "op1"),  # c0, outside the period
    answered(at(1, 9), "support", A, 10, 12, 120, "op1"),  # c1
    answered(at(1, 9, 10), "support", B, 30, 32, 300, "op2"),  # c2
    missed(at(1, 9, 20), "support", C, "queue_abandon", 3, 5),  # c3
    missed(at(1, 10), "support", D, "queue_abandon", 40, 42, "reached"),  # c4 -> r1
    missed(at(1, 11), "support", E, "queue_timeout", None, 60, "recovered"),  # c5 -> r2
    missed(at(1, 12), None, F, "no_answer", None, 25, "expired"),  # c6 -> r3
    answered(at(2, 9), "sales", G, 5, 5, 60, "op1"),  # c7
    answered(at(2, 9, 30), None, H, None, 15, 90, "op3"),  # c8
    answered(at(2, 10), "support", E, 20, 22, 180, "op2"),  # c9
    missed(at(2, 11), "sales", None, "queue_abandon", 12, 13),  # c10
]

R1 = RequestRow(1, D, at(1, 10, 0, 40), "reached", "ami", 2, "support")
R2 = RequestRow(2, E, at(1, 11, 1), "recovered", "ami", 1, "support")
R3 = RequestRow(3, F, at(1, 12, 0, 25), "expired", "ami", 2, None)
R4 = RequestRow(4, "+12025550099", at(2, 12), "open", "http", 0, None)
REQUESTS = [R1, R2, R3, R4]


def attempt(req: RequestRow, offset: int, operator: str, outcome: str) -> AttemptRow:
    return AttemptRow(req.id, req.number, req.created_at + timedelta(seconds=offset), operator, outcome)


ATTEMPTS = [
    attempt(R1, 300, "op1", "client_no_answer"),  # a1
    attempt(R1, 3600, "op2", "answered"),  # a2
    attempt(R2, 120, "op1", "operator_no_answer"),  # a3
    attempt(R2, 900, "op3", "client_busy"),  # a4
    attempt(R3, 600, "op2", "client_no_answer"),  # a5
    attempt(R3, 7200, "op1", "client_busy"),  # a6
]


def report(by=None, **kw):
    return compute(CALLS, REQUESTS, ATTEMPTS, start=START, end=END, by=by, **kw)


def check(fig: Figures, **expected):
    """Compare every field: those not named must be zero (counts) or None (ratios, durations)."""
    for name in metrics.FIGURE_NAMES:
        want = expected.pop(name, 0 if isinstance(getattr(Figures(), name), int) else None)
        got = getattr(fig, name)
        if want is None:
            assert got is None, name
        else:
            assert got == pytest.approx(want), name
    assert not expected, f"unknown figures {expected}"


# The callback figures of all four requests, shared by several groupings.
CALLBACKS_ALL = dict(
    requests=4,
    attempted=3,  # r4 has no attempt
    reached=1,
    recovered=1,
    expired=1,
    open=1,
    first_attempt_median=300,  # r1 300, r2 120, r3 600 -> sorted 120, 300, 600
    first_attempt_p90=600,  # rank ceil(0.9 * 3) = 3
    reach_median=3600,  # r1: a2 at +3600
    reach_p90=3600,
    attempts_per_reached=2.0,  # r1 made 2 counted attempts
)


def test_total_over_the_period():
    check(
        report().total,
        offered=10,  # c1..c10; c0 is before the period
        handled=5,  # c1 c2 c7 c8 c9
        short_abandoned=1,  # c3 waited 3 s < 5 s
        abandoned=4,  # c4 c5 c6 c10
        car=4 / 9,  # 4 / (10 - 1)
        net_lost=2,  # c6 (F only answered before it, c0), c10 (no number)
        net_lost_rate=2 / 9,
        lcr=3 / 7,  # lost in queue c4 c5 c10 / queued c1 c2 c4 c5 c7 c9 c10 (c3 short, c6 c8 no queue)
        service_level=4 / 9,  # c1 10 s, c7 5 s, c8 15 s, c9 20 s (<= 20); c2 30 s is late
        asa=16.0,  # (10 + 30 + 5 + 15 + 20) / 5
        ata=34.25,  # (40 + 60 + 25 + 12) / 4
        aht=150.0,  # (120 + 300 + 60 + 90 + 180) / 5
        **CALLBACKS_ALL,
    )


def test_by_day_also_lists_quiet_days_in_order():
    rows = dict(report(Grouping.DAY).rows)
    assert list(rows) == ["2026-03-01", "2026-03-02"]
    check(
        rows["2026-03-01"],
        offered=6,  # c1..c6
        handled=2,
        short_abandoned=1,
        abandoned=3,  # c4 c5 c6
        car=3 / 5,
        net_lost=1,  # c6
        net_lost_rate=1 / 5,
        lcr=2 / 4,  # c4 c5 / c1 c2 c4 c5
        service_level=1 / 5,  # c1
        asa=20.0,  # (10 + 30) / 2
        ata=125 / 3,  # (40 + 60 + 25) / 3
        aht=210.0,  # (120 + 300) / 2
        requests=3,
        attempted=3,
        reached=1,
        recovered=1,
        expired=1,
        first_attempt_median=300,
        first_attempt_p90=600,
        reach_median=3600,
        reach_p90=3600,
        attempts_per_reached=2.0,
    )
    check(
        rows["2026-03-02"],
        offered=4,  # c7..c10
        handled=3,
        abandoned=1,  # c10
        car=1 / 4,
        net_lost=1,
        net_lost_rate=1 / 4,
        lcr=1 / 3,  # c10 / c7 c9 c10
        service_level=3 / 4,  # c7 c8 c9
        asa=40 / 3,  # (5 + 15 + 20) / 3
        ata=12.0,
        aht=110.0,  # (60 + 90 + 180) / 3
        requests=1,  # r4, never attempted
        open=1,
    )
    days = compute(CALLS, [], [], start=START, end=at(5, 0), by=Grouping.DAY).rows
    assert [k for k, _ in days] == ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]
    check(days[2][1])  # a day with nothing is all zeros


def test_by_queue():
    rows = dict(report(Grouping.QUEUE).rows)
    assert list(rows) == ["sales", "support", "-"]  # no queue last
    check(
        rows["support"],
        offered=6,  # c1 c2 c3 c4 c5 c9
        handled=3,
        short_abandoned=1,
        abandoned=2,
        car=2 / 5,
        net_lost=0,  # c4 by callback, c5 by c9
        net_lost_rate=0.0,
        lcr=2 / 5,  # c4 c5 / c1 c2 c4 c5 c9
        service_level=2 / 5,  # c1 c9
        asa=20.0,  # (10 + 30 + 20) / 3
        ata=50.0,  # (40 + 60) / 2
        aht=200.0,  # (120 + 300 + 180) / 3
        requests=2,  # r1 r2: their first call was in support
        attempted=2,
        reached=1,
        recovered=1,
        first_attempt_median=210,  # (120 + 300) / 2
        first_attempt_p90=300,  # rank ceil(0.9 * 2) = 2
        reach_median=3600,
        reach_p90=3600,
        attempts_per_reached=2.0,
    )
    check(
        rows["sales"],
        offered=2,
        handled=1,
        abandoned=1,
        car=0.5,
        net_lost=1,
        net_lost_rate=0.5,
        lcr=0.5,
        service_level=0.5,
        asa=5.0,
        ata=12.0,
        aht=60.0,
    )
    check(
        rows["-"],
        offered=2,  # c6 c8
        handled=1,
        abandoned=1,
        car=0.5,
        net_lost=1,
        net_lost_rate=0.5,
        service_level=0.5,  # c8 in 15 s; lcr stays None: neither call was queued
        asa=15.0,
        ata=25.0,
        aht=90.0,
        requests=2,  # r3 (from c6, no queue), r4 (web form)
        attempted=1,
        expired=1,
        open=1,
        first_attempt_median=600,
        first_attempt_p90=600,
    )


def test_by_operator_puts_requests_under_their_last_attempts_operator():
    rows = dict(report(Grouping.OPERATOR).rows)
    assert list(rows) == ["op1", "op2", "op3", "-"]
    check(
        rows["op1"],
        offered=2,  # c1 c7
        handled=2,
        car=0.0,
        net_lost_rate=0.0,
        lcr=0.0,  # both queued, neither lost
        service_level=1.0,
        asa=7.5,  # (10 + 5) / 2
        aht=90.0,  # (120 + 60) / 2
        requests=1,  # r3, last attempt a6
        attempted=1,
        expired=1,
        first_attempt_median=600,
        first_attempt_p90=600,
    )
    check(
        rows["op2"],
        offered=2,  # c2 c9
        handled=2,
        car=0.0,
        net_lost_rate=0.0,
        lcr=0.0,
        service_level=0.5,  # c9
        asa=25.0,  # (30 + 20) / 2
        aht=240.0,  # (300 + 180) / 2
        requests=1,  # r1, last attempt a2
        attempted=1,
        reached=1,
        first_attempt_median=300,
        first_attempt_p90=300,
        reach_median=3600,
        reach_p90=3600,
        attempts_per_reached=2.0,
    )
    check(
        rows["op3"],
        offered=1,  # c8
        handled=1,
        car=0.0,
        net_lost_rate=0.0,
        service_level=1.0,
        asa=15.0,
        aht=90.0,
        requests=1,  # r2, last attempt a4
        attempted=1,
        recovered=1,
        first_attempt_median=120,
        first_attempt_p90=120,
    )
    check(
        rows["-"],
        offered=5,  # the missed calls c3 c4 c5 c6 c10 have no agent
        short_abandoned=1,
        abandoned=4,
        car=1.0,  # 4 / (5 - 1)
        net_lost=2,
        net_lost_rate=0.5,
        lcr=1.0,  # c4 c5 c10 / c4 c5 c10
        service_level=0.0,
        ata=34.25,
        requests=1,  # r4, no attempt
        open=1,
    )


def test_by_source():
    rows = dict(report(Grouping.SOURCE).rows)
    assert list(rows) == ["ami", "http"]
    total = report().total
    ami_calls = {
        n: getattr(total, n)
        for n in ("offered", "handled", "abandoned", "short_abandoned", "car", "net_lost", "net_lost_rate")
    }
    ami_calls |= {n: getattr(total, n) for n in ("lcr", "service_level", "asa", "ata", "aht")}
    check(
        rows["ami"],
        **ami_calls,
        requests=3,
        attempted=3,
        reached=1,
        recovered=1,
        expired=1,
        first_attempt_median=300,
        first_attempt_p90=600,
        reach_median=3600,
        reach_p90=3600,
        attempts_per_reached=2.0,
    )
    check(rows["http"], requests=1, open=1)


def test_thresholds_are_configurable():
    # Short abandon 3 s: c3 (3 s) is no longer short, so it is abandoned and lost.
    fig = report(thresholds=Thresholds(short_abandon=timedelta(seconds=3))).total
    assert (fig.short_abandoned, fig.abandoned, fig.net_lost) == (0, 5, 3)
    assert fig.car == pytest.approx(5 / 10)
    assert fig.lcr == pytest.approx(4 / 8)  # c3 c4 c5 c10 / 7 + c3
    # Service level 10 s: only c1 (10 s) and c7 (5 s).
    fig = report(thresholds=Thresholds(service_level=timedelta(seconds=10))).total
    assert fig.service_level == pytest.approx(2 / 9)


def test_reached_later_needs_a_reach_after_the_lost_call():
    # Without the requests' statuses the number's own history decides.
    bare = [c._replace(request_status=None) for c in CALLS]
    marked = {(c.started_at, c.number): c.reached_later for c in mark_reached_later(bare, ATTEMPTS)}
    assert marked[(at(1, 10), D)] is True  # a2 answered after it
    assert marked[(at(1, 11), E)] is True  # c9 answered the next day
    assert marked[(at(1, 12), F)] is False  # c0 was answered the day before: does not count
    assert marked[(at(2, 11), None)] is False
    assert not any(c.reached_later for c in mark_reached_later(bare, []) if c.number == D)
    # A request that ended reached or recovered settles it: nothing more is looked up.
    marked = {(c.started_at, c.number): c.reached_later for c in mark_reached_later(CALLS, ATTEMPTS)}
    assert marked[(at(1, 10), D)] is False and marked[(at(1, 11), E)] is False
    bare_report = compute(bare, REQUESTS, ATTEMPTS, start=START, end=END)
    assert bare_report.total.net_lost == report().total.net_lost == 2  # same verdict either way


def test_a_request_recovered_without_a_stored_reach_still_counts():
    # An operator rang the client by hand: the request closed as recovered, and no answered call
    # or callback from the number is stored. The lost call is not lost; an expired one would be.
    calls = [
        missed(at(1, 10), "support", D, "queue_abandon", 40, 42, "recovered"),
        missed(at(1, 11), "support", E, "queue_abandon", 40, 42, "expired"),
        missed(at(1, 12), "support", F, "queue_abandon", 40, 42, "open"),
    ]
    fig = compute(calls, [], [], start=START, end=END).total
    assert (fig.abandoned, fig.net_lost) == (3, 2)
    assert fig.net_lost_rate == pytest.approx(2 / 3)


def test_callbacks_count_the_request_period_not_the_attempts():
    # Only 03-02: r4 alone, although r1..r3's attempts are no matter when they ran.
    fig = compute(CALLS, REQUESTS, ATTEMPTS, start=at(2, 0), end=END).total
    assert (fig.requests, fig.attempted, fig.open, fig.reached) == (1, 0, 1, 0)


def test_percentiles():
    assert median([]) is None and p90([]) is None
    assert median([7]) == 7 and p90([7]) == 7
    assert median([4, 1, 3, 2]) == 2.5
    assert p90(list(range(1, 11))) == 9  # rank ceil(9.0) = 9
    assert p90(list(range(1, 12))) == 10  # rank ceil(9.9) = 10
    assert p90([5] * 3 + [100]) == 100  # rank ceil(3.6) = 4


def test_day_and_hour_keys_use_the_report_time_zone():
    msk = ZoneInfo("Europe/Moscow")  # UTC+3
    late = missed(at(1, 22, 30), "support", A, "queue_abandon", 30, 31)
    rows = compute([late], [], [], start=at(1, 21), end=at(2, 21), by=Grouping.DAY, tz=msk).rows
    assert [(k, f.offered) for k, f in rows] == [("2026-03-02", 1)]  # 01:30 in Moscow
    rows = compute([late], [], [], start=at(1, 21), end=at(2, 0), by=Grouping.HOUR, tz=msk).rows
    assert [(k, f.offered) for k, f in rows] == [
        ("2026-03-02T00:00+03:00", 0),
        ("2026-03-02T01:00+03:00", 1),
        ("2026-03-02T02:00+03:00", 0),
    ]


def test_hours_across_a_dst_change_stay_distinct_and_in_order():
    ny = ZoneInfo("America/New_York")  # back to EST at 02:00 EDT on 2026-11-01
    start = parse_bound("2026-11-01", ny)
    four_hours_later = start.astimezone(UTC) + timedelta(hours=4)  # ny wall clock would give 5
    keys = metrics.period_keys(start, four_hours_later, Grouping.HOUR, ny)
    assert keys == ["2026-11-01T00:00-04:00", "2026-11-01T01:00-04:00", "2026-11-01T01:00-05:00",
                    "2026-11-01T02:00-05:00"]  # fmt: skip
    assert metrics.period_keys(start, parse_bound("2026-11-02", ny), Grouping.DAY, ny) == ["2026-11-01"]


def test_periods_are_local_days():
    msk = ZoneInfo("Europe/Moscow")
    now = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)  # already 2 March in Moscow
    start, end = named_period("yesterday", now, msk)
    assert (start.isoformat(), end.isoformat()) == ("2026-03-01T00:00:00+03:00", "2026-03-02T00:00:00+03:00")
    assert period_label(start, end, msk) == "2026-03-01"
    assert named_period("today", now, msk) == (end, end + timedelta(days=1))
    start, end = named_period("last_7_days", now, msk)
    assert period_label(start, end, msk) == "2026-02-23_2026-03-01"
    start, end = named_period("last_week", now, msk)  # 2 March 2026 is a Monday
    assert period_label(start, end, msk) == "2026-02-23_2026-03-01"
    start, end = named_period("last_month", now, msk)
    assert period_label(start, end, msk) == "2026-02-01_2026-02-28"
    with pytest.raises(ValueError, match="unknown period"):
        named_period("fortnight", now, msk)
    assert parse_bound("2026-03-01T10:00", msk) == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
    assert parse_bound("2026-03-01T10:00Z", msk) == at(1, 10)


def test_the_metrics_core_imports_no_io_framework():
    import ast
    from pathlib import Path

    import callbackd.domain.periods

    for module in (metrics, callbackd.domain.periods):
        tree = ast.parse(Path(module.__file__).read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        roots = {name.split(".")[0] for name in names}
        assert not roots & {"asyncio", "sqlalchemy", "pydantic", "apscheduler"}, module.__name__


def test_median_and_p90_are_the_textbook_ones_from_one_sort():
    import random
    import statistics
    from array import array

    from callbackd.domain.metrics import Accumulator

    rnd = random.Random(3)
    for n in (1, 2, 3, 10, 11, 1000, 1001):
        values = array("i", [rnd.randrange(-5, 90_000) for _ in range(n)])
        want_median = float(statistics.median(values))
        want_p90 = float(sorted(values)[math.ceil(0.9 * n) - 1])
        assert (median(values), p90(values)) == (want_median, want_p90)
        acc = Accumulator()
        acc.first_attempt, acc.reach = values, array("i", sorted(values))
        fig = acc.figures()
        assert (fig.first_attempt_median, fig.first_attempt_p90) == (want_median, want_p90)
        assert (fig.reach_median, fig.reach_p90) == (want_median, want_p90)
    assert (median([]), p90([])) == (None, None)
