"""The what-if simulator: against Erlang-A where the two meet, and against hand-worked callback cases."""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

import pytest

from callbackd.domain import erlang
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.ladder import RetryLadder, Schedule
from callbackd.domain.simulation import (
    Band,
    Behaviour,
    Scenario,
    SimCall,
    SimLead,
    StoredAttempt,
    StoredCall,
    fit,
    fit_clients,
    fit_reach,
    predict,
    simulate,
    to_sim_calls,
)

MON = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
ALWAYS = Schedule(calendar=BusinessCalendar.always_open())


# -- the closed forms themselves ----------------------------------------------------------


def test_erlang_b_matches_the_published_table():
    # Erlang B tables: 30 trunks carry 24.80 Erlangs at 5 % blocking, 20.34 at 1 %.
    assert erlang.erlang_b(30, 24.80) == pytest.approx(0.05, abs=5e-4)
    assert erlang.erlang_b(30, 20.34) == pytest.approx(0.01, abs=1e-4)


@pytest.mark.parametrize("lam,mu,theta,c", [(1.0, 0.25, 0.5, 4), (1.2, 0.25, 0.2, 4), (10, 1, 0.5, 10)])
def test_the_chain_and_mandelbaum_zeltyn_agree(lam, mu, theta, c):
    chain, closed = erlang.birth_death(lam, mu, theta, c), erlang.closed_form(lam, mu, theta, c)
    for name in ("p_wait", "p_abandon", "mean_wait", "occupancy"):
        assert getattr(closed, name) == pytest.approx(getattr(chain, name), rel=1e-9), name


def test_patience_as_long_as_talk_makes_the_system_poisson():
    """theta = mu: every caller leaves at rate mu, served or not, so the number present is
    Poisson(lam / mu) (M/M/inf) and P(W > 0) is its tail from c."""
    lam, mu, c = 3.0, 1.0, 4
    tail = 1 - sum(math.exp(-lam) * lam**k / math.factorial(k) for k in range(c))
    assert erlang.closed_form(lam, mu, mu, c).p_wait == pytest.approx(tail, rel=1e-12)


# -- the simulator against Erlang-A ----------------------------------------------------------

REPLICATIONS = 6
ARRIVALS = 10_000


def _mmcm(lam, mu, theta, c, seed):
    rng = random.Random(seed)
    t, calls = 0.0, []
    for _ in range(ARRIVALS):
        t += rng.expovariate(lam)
        calls.append(SimCall(t, None, True, patience=rng.expovariate(theta), talk=rng.expovariate(mu)))
    scenario = Scenario(c, ALWAYS, MON, period=t, dialer=False, short_abandon=0)
    r = simulate(calls, [], Behaviour(theta, (1.0,), (1.0,), (1.0,), 1.0), scenario, seed)
    return {
        "p_abandon": r.abandoned / r.offered,
        "p_wait": r.delayed / r.offered,
        "mean_wait": r.queue_wait / r.offered,
        "occupancy": r.occupancy(c),
    }


@pytest.mark.parametrize(
    "lam,mu,theta,c",
    [(1.0, 0.25, 0.5, 4), (1.2, 0.25, 0.2, 4)],  # load 4 on 4 operators; 4.8 on 4 (overloaded)
    ids=["at-capacity", "overloaded"],
)
def test_an_mmc_queue_with_abandonment_matches_erlang_a(lam, mu, theta, c):
    """Independent replications of 10,000 Poisson arrivals each: the spread between replications
    gives the standard error of each figure, and the exact value must lie within 4 of them (a
    false alarm about once in 10,000 runs for normal means; the empty start biases a run by a few
    talk times' worth of calls, under 0.1 % of 10,000)."""
    exact = erlang.birth_death(lam, mu, theta, c)
    runs = [_mmcm(lam, mu, theta, c, seed) for seed in range(REPLICATIONS)]
    for name in ("p_abandon", "p_wait", "mean_wait", "occupancy"):
        values = [r[name] for r in runs]
        se = statistics.stdev(values) / math.sqrt(REPLICATIONS)
        assert abs(statistics.fmean(values) - getattr(exact, name)) < 4 * se + 1e-9, (name, values, exact)
        assert se < 0.03 * getattr(exact, name)  # and the check is a sharp one: 3 % of the value


# -- callbacks, worked by hand ---------------------------------------------------------------


def behaviour(*reach, busy=60.0, miss=30.0):
    return Behaviour(abandon_rate=1 / 60, talk=(120.0,), reach=reach, callback_busy=(busy,), miss_busy=miss)


def hourly(**kw):
    return Schedule(
        calendar=BusinessCalendar.always_open(), ladder=RetryLadder(**kw), opening_spread=timedelta(0)
    )


def lost_call(at, number="+12025550143", wait=40.0):
    """A ring group nobody answered: its fate is fixed whatever the operators do."""
    return SimCall(at, number, False, length=wait)


def test_an_abandon_reached_on_the_first_try_is_not_lost():
    sc = Scenario(1, ALWAYS, MON, period=3600)
    r = simulate([lost_call(100)], [], behaviour(1.0), sc, seed=1)
    assert (r.offered, r.abandoned, r.net_lost, r.requests, r.attempts, r.reached_by_callback) == (
        1,
        1,
        0,
        1,
        1,
        1,
    )
    assert r.first_attempt == (0.0,)  # the operator was free at the abandon
    assert r.busy_in_period == 60.0 and r.occupancy(1) == pytest.approx(60 / 3600)
    off = simulate(
        [lost_call(100)], [], behaviour(1.0), Scenario(1, ALWAYS, MON, period=3600, dialer=False), seed=1
    )
    assert (off.net_lost, off.attempts, off.requests) == (1, 0, 1)


def test_the_ladder_spaces_the_tries_and_gives_up():
    sc = Scenario(1, hourly(delays=(timedelta(hours=1),), max_attempts=3), MON, period=86400)
    never = simulate([lost_call(0)], [], behaviour(0.0), sc, seed=1)
    assert (never.attempts, never.net_lost, never.reached_by_callback) == (3, 1, 0)
    second = simulate([lost_call(0)], [], behaviour(0.0, 1.0), sc, seed=1)
    assert (second.attempts, second.net_lost, second.reached_by_callback) == (2, 0, 1)
    assert second.busy_in_period == 30 + 60  # an unanswered try, then the answered one
    # Read half an hour after the miss, as a report run then would: the second try has not happened.
    early = simulate([lost_call(0)], [], behaviour(0.0, 1.0), replace(sc, horizon=1800), seed=1)
    assert (early.attempts, early.net_lost, early.reached_by_callback) == (1, 1, 0)


def test_live_callers_come_before_callbacks_and_a_short_abandon_is_not_called_back():
    # One operator. A abandons at 40 s; B (arrived at 10 s) is answered at once... the operator is
    # busy with C from 0 to 120 s, so B waits, and the free operator at 120 s takes B before A's callback.
    calls = [
        SimCall(0, "+1C", True, patience=None, waited=0, talk=120),
        SimCall(10, "+1B", True, patience=None, waited=110, talk=50),
        SimCall(0, "+1A", True, patience=40),
        SimCall(5, "+1S", True, patience=3),  # short: not counted, not called back
    ]
    b = Behaviour(abandon_rate=1e-9, talk=(1.0,), reach=(1.0,), callback_busy=(60.0,), miss_busy=30.0)
    r = simulate(calls, [], b, Scenario(1, ALWAYS, MON, period=3600), seed=3)
    assert (r.offered, r.short, r.abandoned, r.requests) == (4, 1, 1, 1)
    assert r.first_attempt == (130.0,)  # A lost at 40 s; operator free of C at 120, of B at 170; 170 - 40
    assert r.net_lost == 0 and r.busy_in_period == 120 + 50 + 60


def test_the_operators_ring_is_paid_on_every_answer():
    b = Behaviour(
        abandon_rate=1e-9, talk=(1.0,), reach=(1.0,), callback_busy=(1.0,), miss_busy=1.0, answer_delay=2.0
    )
    sc = Scenario(1, ALWAYS, MON, period=3600, dialer=False, short_abandon=0)
    r = simulate([SimCall(0, "+1A", True, patience=1.5, talk=10)], [], b, sc, seed=1)
    assert (r.abandoned, r.queue_wait, r.busy_in_period) == (
        1,
        1.5,
        1.5,
    )  # hung up while the operator's phone rang
    r = simulate([SimCall(0, "+1A", True, patience=5, talk=10)], [], b, sc, seed=1)
    assert (r.abandoned, r.queue_wait, r.busy_in_period) == (0, 2.0, 12.0)


def test_business_hours_and_the_client_window_hold_the_first_try():
    hours = BusinessCalendar.from_spec("UTC", {"mon-fri": "09:00-18:00"})
    window = BusinessCalendar.from_spec("UTC", {"mon-sun": "10:00-20:00"})
    sched = Schedule(calendar=hours, opening_spread=timedelta(0))
    night = lost_call(3600)  # 01:00 Monday, after hours
    r = simulate([night], [], behaviour(1.0), Scenario(1, sched, MON, period=86400), seed=1)
    assert r.first_attempt == (9 * 3600 - 3640.0,)  # at the 09:00 opening
    r = simulate(
        [night], [], behaviour(1.0), Scenario(1, sched, MON, period=86400, client_window=window), seed=1
    )
    assert r.first_attempt == (10 * 3600 - 3640.0,)  # not before the client's 10:00
    assert r.open_seconds == 9 * 3600 and r.callbacks_per_hour == pytest.approx(1 / 9)


def test_an_answered_later_call_recovers_the_request_and_a_lead_is_called_back():
    calls = [lost_call(0, "+1A"), SimCall(200, "+1A", False, answered=True, talk=60)]
    sc = Scenario(1, hourly(delays=(timedelta(hours=1),), max_attempts=2), MON, period=86400)
    r = simulate(calls, [SimLead(500, "+1L")], behaviour(0.0, 1.0), sc, seed=1)
    # A: try 1 at 40 s unanswered, then called in at 200 s: recovered, no second try for A.
    # The lead: try 1 at 500 s unanswered, try 2 at 4100 s answered.
    assert (r.recovered_by_call, r.reached_by_callback, r.attempts, r.net_lost) == (1, 1, 3, 0)


def test_runs_are_seeded_and_the_band_spans_them():
    rng = random.Random(5)
    calls = [lost_call(rng.uniform(0, 3600), f"+1{i}") for i in range(50)]
    sc = Scenario(1, hourly(max_attempts=1), MON, period=3600)
    assert simulate(calls, [], behaviour(0.5), sc, seed=9) == simulate(calls, [], behaviour(0.5), sc, seed=9)
    p = predict(calls, [], behaviour(0.5), sc, runs=20, seed=1)
    assert p.net_lost_rate.low < p.net_lost_rate.mean < p.net_lost_rate.high
    assert 0.35 < p.net_lost_rate.mean < 0.65  # each lost caller reached with probability 1/2
    assert Band.of([]) == Band(None, None, None) and Band.of([2.0]) == Band(2.0, 2.0, 2.0)


# -- fitting ---------------------------------------------------------------------------------


def at(s):
    return MON + timedelta(seconds=s)


def test_reach_is_fitted_per_try_and_thin_ranks_are_pooled():
    tries = []
    # 10 requests: 6 answered on try 1; of the 4 left, 2 on try 2; 2 get a third try, 1 answered.
    for rid in range(10):
        outcomes = (
            ["answered"]
            if rid < 6
            else ["client_busy", "answered"]
            if rid < 8
            else ["client_busy"] * 2 + (["answered"] if rid == 8 else ["client_no_answer"])
        )
        tries += [
            StoredAttempt(rid, at(k * 3600), at(k * 3600 + 30), o, True) for k, o in enumerate(outcomes)
        ]
    tries.append(StoredAttempt(0, at(-10), at(-5), "operator_no_answer", False))  # not counted: ignored
    assert fit_reach(tries) == pytest.approx((0.6, 0.5, 0.5))  # try 3: 1 of 2, pooled (< 3 tries): still 1/2
    assert fit_reach([]) == (0.5,)


def test_patience_is_the_censored_exponential_estimate():
    calls = [
        StoredCall(at(0), "+1A", "q", at(10), at(70), 10, "answered"),
        StoredCall(at(0), "+1B", "q", None, at(30), 30, "missed"),
        StoredCall(at(0), "+1C", "q", None, at(20), 20, "missed"),
        StoredCall(at(0), "+1D", None, at(5), at(100), None, "answered"),  # not queued: not in the estimate
    ]
    b = fit(calls, [])
    assert b.abandon_rate == pytest.approx(2 / 60)  # 2 hung up over 10 + 30 + 20 s waited
    assert b.answer_delay == 10  # the quickest answer a queued caller got
    assert sorted(b.talk) == [60, 95]
    sims = to_sim_calls(calls, MON)
    assert (sims[0].patience, sims[0].waited, sims[0].talk) == (None, 10, 60)
    assert (sims[1].patience, sims[1].queued) == (30, True)
    assert (sims[3].queued, sims[3].answered, sims[3].length) == (False, True, 5)


def test_hours_of_the_client_window_parse():
    w = BusinessCalendar.from_spec("UTC", {"mon-sun": ["10:00-20:00"]})
    assert w.weekly[0] == ((time(10), time(20)),)


# -- the rota: operators on a break --------------------------------------------------------


def test_one_of_two_operators_away_all_period_is_one_operator():
    """A break over the whole period leaves exactly the one-operator run (same seed, same draws)."""
    rng = random.Random(7)
    t, calls = 0.0, []
    for _ in range(400):
        t += rng.expovariate(1 / 20)
        calls.append(SimCall(t, f"+1{rng.randrange(50)}", True, patience=rng.expovariate(1 / 30), talk=25))
    b = Behaviour(1 / 30, (25.0,), (0.6, 0.3), (40.0,), 20.0)
    sched = Schedule(
        calendar=BusinessCalendar.always_open(), ladder=RetryLadder(delays=(timedelta(minutes=30),))
    )
    one = Scenario(1, sched, MON, period=t)
    two_one_away = replace(one, operators=2, breaks=((-1.0, t + 86400 * 30),))
    assert simulate(calls, [], b, two_one_away, seed=3) == simulate(calls, [], b, one, seed=3)
    with pytest.raises(ValueError, match="end after it starts"):
        simulate(calls, [], b, replace(one, breaks=((10.0, 10.0),)), seed=3)


def test_an_operator_finishes_the_call_before_the_break_and_is_away_until_it_ends():
    b = Behaviour(1e-9, (1.0,), (1.0,), (1.0,), 1.0)
    sc = Scenario(1, ALWAYS, MON, period=3600, dialer=False, short_abandon=0, breaks=((50.0, 150.0),))
    first = SimCall(0, "+1A", True, patience=1000, talk=100)
    # B comes at 110: the operator ended A's call at 100 and went away until 150.
    r = simulate([first, SimCall(110, "+1B", True, patience=30, talk=10)], [], b, sc, seed=1)
    assert (r.abandoned, r.queue_wait) == (1, 30.0)  # gave up at 140, during the break
    r = simulate([first, SimCall(110, "+1B", True, patience=60, talk=10)], [], b, sc, seed=1)
    assert (r.abandoned, r.queue_wait, r.busy_in_period) == (0, 40.0, 110.0)  # answered at 150
    # Occupancy over the time on duty: 3600 s less the break, whose first 50 s went on A's call.
    assert r.occupancy(1) == pytest.approx(110 / 3550)
    # A break over before A's call ends was never taken: on duty all hour.
    short = simulate([first], [], b, replace(sc, breaks=((20.0, 40.0),)), seed=1)
    assert short.occupancy(1) == pytest.approx(100 / 3600)
    no_break = simulate(
        [first, SimCall(110, "+1B", True, patience=30, talk=10)], [], b, replace(sc, breaks=()), seed=1
    )
    assert (no_break.abandoned, no_break.queue_wait) == (0, 0.0)


def test_daily_break_spans_land_on_every_day_of_the_period_in_the_schedule_zone():
    from zoneinfo import ZoneInfo

    from callbackd.domain.simulation import daily_breaks

    moscow = ZoneInfo("Europe/Moscow")  # UTC+3
    spans = [(time(12, 0), time(12, 30)), (time(23, 30), time(0, 30))]
    got = daily_breaks(spans, moscow, MON, period=2 * 86400)  # Mon 00:00 UTC = 03:00 Moscow
    # Sunday's 23:30-00:30 Moscow (20:30-21:30 UTC Sunday) is over before the period: left out.
    h = 3600
    assert got == (
        (9 * h, 9.5 * h),  # Monday 12:00 Moscow = 09:00 UTC
        (20.5 * h, 21.5 * h),  # Monday 23:30 Moscow, past midnight
        (33 * h, 33.5 * h),
        (44.5 * h, 45.5 * h),  # Tuesday's; Wednesday 12:00 Moscow is after the period
    )


def test_an_unanswered_try_ends_as_the_stored_ones_did_and_the_ladder_waits_its_outcome_delay():
    """Busy lines wait the ladder's busy delay (10 min), not the rung (1 h); a no-answer, the rung."""
    sc = Scenario(1, hourly(delays=(timedelta(hours=1),), max_attempts=2), MON, period=86400)
    b = replace(behaviour(0.0, 1.0), miss_outcomes=("client_busy",))
    r = simulate([lost_call(0)], [], b, sc, seed=1)
    assert r.attempts == 2 and r.reached_by_callback == 1
    assert r.busy_in_period == 30 + 60  # one unanswered try, then one answered
    first = 40.0  # the call was lost at 40 s, tried at once
    later = simulate(
        [lost_call(0), lost_call(first + 600 + 1, "+1B")], [], b, replace(sc, operators=1), seed=1
    )
    # The second caller's first try comes after the first request's second one (at 640 s): the
    # operator is on it (60 s), so the second request waits until 700 s.
    assert later.first_attempt == (0.0, 700.0 - (first + 600 + 1 + 40))
    no_answer = replace(b, miss_outcomes=("client_no_answer",))
    r = simulate(
        [lost_call(0), lost_call(first + 600 + 1, "+1B")], [], no_answer, replace(sc, operators=1), seed=1
    )
    assert r.first_attempt == (0.0, 0.0)  # nobody's second try at 640 s: the rung is an hour


def test_fit_keeps_how_the_unanswered_counted_tries_ended():
    t0 = MON
    tries = [
        StoredAttempt(1, t0, t0 + timedelta(seconds=3), "client_busy", True),
        StoredAttempt(
            1, t0 + timedelta(minutes=10), t0 + timedelta(minutes=10, seconds=9), "client_no_answer", True
        ),
        StoredAttempt(
            1, t0 + timedelta(minutes=20), t0 + timedelta(minutes=20, seconds=30), "answered", True
        ),
        StoredAttempt(2, t0, t0 + timedelta(seconds=20), "operator_no_answer", False),  # not the client's
    ]
    assert fit([], tries).miss_outcomes == ("client_busy", "client_no_answer")


def test_the_answer_delay_is_free_operator_to_talking_and_waits_count_from_the_join():
    """A: joined at 1 s, op1 free, answered at 1.5 s (0.5 s of ring). B: joined at 2 s while op1
    talked to A until 20 s, answered at 21.2 s (the queue's pause and the ring after op1 came free:
    1.2 s). C: op2 came back from a callback at 30 s, answered C (joined at 29 s) at 30.8 s."""
    calls = [
        StoredCall(at(0), "+1A", "q", at(1.5), at(20), 0, "answered", joined_at=at(1), agent="PJSIP/op1"),
        StoredCall(at(1), "+1B", "q", at(21.2), at(40), 19, "answered", joined_at=at(2), agent="PJSIP/op1"),
        StoredCall(at(28), "+1C", "q", at(30.8), at(50), 1, "answered", joined_at=at(29), agent="PJSIP/op2"),
        StoredCall(at(30), "+1D", "q", None, at(37.9), 7, "missed", joined_at=at(30.5)),
    ]
    tries = [StoredAttempt(1, at(10), at(30), "answered", True, operator="PJSIP/op2")]
    b = fit(calls, tries)
    assert b.answer_delay == pytest.approx((0.5 + 1.2 + 0.8) / 3)
    sims = to_sim_calls(calls, MON)
    assert (sims[1].at, sims[1].waited) == (2, pytest.approx(19.2))  # from the join, not HoldTime's 19
    assert (sims[3].at, sims[3].patience) == (30.5, pytest.approx(7.4))


# -- each client's own stored tries --------------------------------------------------------


def test_fit_clients_keeps_each_requests_counted_tries_in_order_until_one_is_unfinished():
    t0 = MON
    tries = [
        StoredAttempt(7, t0 + timedelta(hours=1), None, "client_no_answer", True, number="+1A"),
        StoredAttempt(7, t0, None, "client_busy", True, number="+1A"),  # stored out of order
        StoredAttempt(7, t0 + timedelta(minutes=5), None, "operator_no_answer", False, number="+1A"),
        StoredAttempt(7, t0 + timedelta(hours=4), None, "answered", True, number="+1A"),
        StoredAttempt(3, t0, None, "answered", True, number="+1B"),
        StoredAttempt(9, t0 + timedelta(hours=5), None, "client_no_answer", True, number="+1A"),
        StoredAttempt(9, t0 + timedelta(hours=6), None, None, True, number="+1A"),  # still ringing
        StoredAttempt(9, t0 + timedelta(hours=7), None, "answered", True, number="+1A"),  # after it
        StoredAttempt(4, t0, None, "answered", True),  # no number known: not a client's
    ]
    assert fit_clients(tries) == {
        "+1A": (("client_busy", "client_no_answer", "answered"), ("client_no_answer",)),
        "+1B": (("answered",),),
    }
    assert fit([], tries).clients == fit_clients(tries)
    assert fit([], tries, per_client=False).clients == {}


def test_a_clients_stored_tries_go_as_they_went_and_only_later_tries_are_drawn():
    """reach 1.0 on every try, but the client's first two tries were unanswered in the data: the
    replay misses them both and draws only the third (answered). Reach 0.0, but the data has the
    client answering try 1: answered. Nothing stored for the number: drawn, as before."""
    sc = Scenario(1, hourly(delays=(timedelta(hours=1),), max_attempts=5), MON, period=86400)
    stored = {"+1A": (("client_no_answer", "client_no_answer"),), "+1B": (("answered",),)}
    always = replace(behaviour(1.0), clients=stored)
    a = simulate([lost_call(0, "+1A")], [], always, sc, seed=1)
    assert (a.attempts, a.reached_by_callback, a.net_lost) == (3, 1, 0)
    assert a.busy_in_period == 30 + 30 + 60
    never = replace(behaviour(0.0), clients=stored)
    b = simulate([lost_call(0, "+1B")], [], never, sc, seed=1)
    assert (b.attempts, b.reached_by_callback, b.net_lost) == (1, 1, 0)
    other = simulate([lost_call(0, "+1C")], [], never, sc, seed=1)
    assert (other.attempts, other.reached_by_callback, other.net_lost) == (5, 0, 1)
    # A ladder of two tries never gets to the draw: the client stays lost.
    two = replace(sc, schedule=hourly(delays=(timedelta(hours=1),), max_attempts=2))
    assert simulate([lost_call(0, "+1A")], [], always, two, seed=1).net_lost == 1


def test_a_numbers_second_request_replays_its_second_stored_request():
    sc = Scenario(1, hourly(delays=(timedelta(hours=1),), max_attempts=3), MON, period=86400)
    b = replace(behaviour(0.0), clients={"+1A": (("answered",), ("client_no_answer", "answered"))})
    r = simulate([lost_call(0, "+1A"), lost_call(3600, "+1A")], [], b, sc, seed=1)
    # The first request is reached on its first try; the call lost at 3600 s opens a second one,
    # reached on its second try, an hour after its first.
    assert (r.requests, r.attempts, r.reached_by_callback, r.net_lost) == (2, 3, 2, 0)


def test_a_stored_busy_try_waits_the_ladders_busy_delay_in_the_replay():
    sc = Scenario(1, hourly(delays=(timedelta(hours=1),), max_attempts=2), MON, period=700)
    b = replace(
        behaviour(0.0, 1.0), clients={"+1A": (("client_busy",),)}, miss_outcomes=("client_no_answer",)
    )
    # Busy: the second try 10 minutes after the first (at 40 s): inside the 700 s read.
    r = simulate([lost_call(0, "+1A")], [], b, replace(sc, horizon=700), seed=1)
    assert (r.attempts, r.reached_by_callback) == (2, 1)
    # The same client with a no-answer stored: the rung's hour, after the read.
    b = replace(b, clients={"+1A": (("client_no_answer",),)})
    r = simulate([lost_call(0, "+1A")], [], b, replace(sc, horizon=700), seed=1)
    assert (r.attempts, r.reached_by_callback) == (1, 0)


def test_requests_due_at_the_same_moment_are_tried_in_the_order_they_were_made():
    """The night's leads all fall due at the opening: one operator calls them back oldest first, so a
    run depends on its seed alone (a tie broken by object addresses changed from one process to the
    next)."""
    hours = BusinessCalendar.from_spec("UTC", {"mon-sun": "09:00-18:00"})
    sc = Scenario(1, Schedule(calendar=hours, opening_spread=timedelta(0)), MON, period=86400)
    leads = [SimLead(600.0 * k, f"+1L{k}") for k in range(12)]
    order = list(range(12))
    random.Random(5).shuffle(order)  # handed over in no particular order
    r = simulate([], [leads[k] for k in order], behaviour(1.0), sc, seed=1)
    opening = 9 * 3600.0
    assert r.first_attempt == tuple(opening + 60 * k - 600.0 * k for k in range(12))
