"""Recovery analytics against a small period worked out by hand.

Short abandon 5 s. Times are offsets in seconds from 2026-03-02 09:00 UTC.

    call  start  queue    number  outcome              wait   request
    c1       0   support  A       answered               10
    c2     100   support  B       queue_abandon          40   r1: try 1 answered at +60 (callback)
    c3     200   support  C       queue_abandon          30   r2: try 1 unanswered +30, try 2 answered +3630
    c4     300   support  D       queue_abandon          20   r3: recovered, D called in again (c7)
    c5     400   sales    E       queue_abandon          15   r4: tries at +100 and +3700 unanswered, expired
    c6     500   sales    F       queue_abandon (short)   2   none
    c7    1000   sales    D       answered                5

    request  source  created  status     attempts (offset from created: try, outcome)
    r5       http    +2000    reached    +300: 1 answered
    r6       mqtt    +2100    recovered  none (an operator dialled the client by hand)
    r7       admin   +2200    open       none
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from callbackd.domain.analytics import (
    FIELD_REACH_SHARES,
    RecoveryRow,
    TryRow,
    compute_recovery,
    source_kind,
)
from callbackd.domain.metrics import CallRow, mark_reached_later

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
A, B, C, D, E, F, W1, W2, W3 = (f"+1202555010{i}" for i in range(1, 10))


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def answered(start, queue, number, hold):
    return CallRow(
        t(start), queue, t(start + hold), hold, t(start + hold + 60), "answered", None, "op1", number
    )


def lost(start, queue, number, hold, status=None):
    return CallRow(
        t(start), queue, None, hold, t(start + hold), "missed", "queue_abandon", None, number, False, status
    )


CALLS = mark_reached_later(
    [
        answered(0, "support", A, 10),
        lost(100, "support", B, 40, "reached"),
        lost(200, "support", C, 30, "reached"),
        lost(300, "support", D, 20, "recovered"),
        lost(400, "sales", E, 15, "expired"),
        lost(500, "sales", F, 2),
        answered(1000, "sales", D, 5),
    ],
    [],
)


def req(rid, created, status, source, queue, *tries, close=None):
    """tries: (offset from created, try_no, outcome)."""
    made = t(created)
    attempts = tuple(TryRow(made + timedelta(seconds=o), n, out) for o, n, out in tries)
    return RecoveryRow(rid, made, status, close, source, queue, attempts)


REQUESTS = [
    req(1, 140, "reached", "ami", "support", (60, 1, "answered"), close="reached"),
    req(2, 230, "reached", "ami", "support", (30, 1, "client_no_answer"), (3630, 2, "answered")),
    req(3, 320, "recovered", "ami", "support", close="client_called_in"),
    req(4, 415, "expired", "ami", "sales", (100, 1, "client_no_answer"), (3700, 2, "client_busy")),
    req(5, 2000, "reached", "http", None, (300, 1, "answered")),
    req(6, 2100, "recovered", "mqtt", None, close="operator_called"),
    req(7, 2200, "open", "admin", None),
]


def rows():
    rep = compute_recovery(CALLS, REQUESTS)
    return {(by, key): fig for by, key, fig in rep.rows}, rep.total


def test_the_field_figures_are_the_documented_ones():
    assert FIELD_REACH_SHARES == (0.805, 0.12, 0.045, 0.02, 0.01)
    assert [source_kind(s) for s in ("ami", "agi", "http", "mqtt", "admin")] == [
        "call",
        "call",
        "web",
        "web",
        "admin",
    ]


def test_totals():
    _, total = rows()
    assert total.requests == 7
    # r1 r2 r5 by callback, r3 by the client's own call, r6 by an operator; r4 lost; r7 open
    assert (total.reached_by_callback, total.recovered_by_client, total.recovered_by_operator) == (3, 1, 1)
    assert (total.not_recovered, total.open) == (1, 1)
    assert total.recovered_share == pytest.approx(5 / 7)
    assert total.reach_by_try == (2, 1, 0, 0, 0)  # r1 and r5 on try 1, r2 on try 2
    assert total.reach_share_by_try == pytest.approx((2 / 3, 1 / 3, 0, 0, 0))
    # first attempts: r1 60, r2 30, r4 100, r5 300 -> 30 60 100 300: median 80, p90 rank 4 = 300
    assert (total.first_attempt_median, total.first_attempt_p90) == (80, 300)
    # callback wait: r1 60, r2 3630, r5 300 -> median 300, p90 rank 3 = 3630, mean 1330
    assert (total.callback_wait_median, total.callback_wait_p90) == (300, 3630)
    assert total.callback_wait_mean == pytest.approx(1330)
    # calls: 7 offered, c6 short, c2..c5 abandoned: CAR 4/6; only c5 (E) stays lost: 1/6
    assert (total.offered, total.abandoned, total.net_lost) == (7, 4, 1)
    assert total.car == pytest.approx(4 / 6)
    assert total.net_lost_rate == pytest.approx(1 / 6)
    assert total.net_to_car == pytest.approx(0.25)


def test_per_queue():
    by, _ = rows()
    assert [k for b, k in by if b == "queue"] == ["sales", "support", "-"]
    support = by[("queue", "support")]
    assert (support.requests, support.reached_by_callback, support.recovered_by_client) == (3, 2, 1)
    assert support.reach_by_try == (1, 1, 0, 0, 0)
    assert (support.offered, support.abandoned, support.net_lost) == (4, 3, 0)
    assert (support.car, support.net_lost_rate, support.net_to_car) == (pytest.approx(3 / 4), 0.0, 0.0)
    sales = by[("queue", "sales")]
    assert (sales.requests, sales.not_recovered, sales.reached_by_callback) == (1, 1, 0)
    assert sales.reach_share_by_try == (None,) * 5  # nobody reached: no shares, not zeros
    assert sales.callback_wait_median is None and sales.first_attempt_median == 100
    assert (sales.offered, sales.abandoned, sales.net_lost) == (3, 1, 1)  # c6 is short
    assert (sales.car, sales.net_lost_rate, sales.net_to_car) == (0.5, 0.5, 1.0)
    leads = by[("queue", "-")]  # no calls behind them: no call figures at all
    assert (leads.requests, leads.offered, leads.car, leads.net_to_car) == (3, None, None, None)


def test_per_source():
    by, _ = rows()
    assert [k for b, k in by if b == "source"] == ["admin", "call", "web"]
    call = by[("source", "call")]
    assert (call.requests, call.reached_by_callback, call.recovered_by_client, call.not_recovered) == (
        4,
        2,
        1,
        1,
    )
    assert (call.offered, call.net_lost, call.net_to_car) == (7, 1, pytest.approx(0.25))
    web = by[("source", "web")]
    assert (web.requests, web.reached_by_callback, web.recovered_by_operator) == (2, 1, 1)
    assert web.reach_by_try == (1, 0, 0, 0, 0) and web.callback_wait_median == 300
    assert web.offered is None and web.net_lost_rate is None
    assert by[("source", "admin")].open == 1


def test_a_late_try_lands_in_the_last_bucket():
    late = req(
        9,
        0,
        "reached",
        "ami",
        "support",
        *((i * 10, i, "client_busy") for i in range(1, 7)),
        (70, 7, "answered"),
    )
    total = compute_recovery([], [late]).total
    assert total.reach_by_try == (0, 0, 0, 0, 1)
    assert total.callback_wait_median == 70
