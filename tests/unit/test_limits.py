"""The abuse limits: a sliding window checked against a brute-force model, bounded memory, config."""

import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbackd.app import abuse_limits
from callbackd.config import Config
from callbackd.domain.intake import Decision, Disposition, limit
from callbackd.domain.limits import GLOBAL_RATE, NUMBER_RATE, AbuseGuard, AbuseLimits, RateLimiter
from callbackd.domain.phone import E164

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
SHIPPED = Path(__file__).parents[2] / "config" / "callbackd.toml"


def test_allows_up_to_the_limit_then_frees_a_slot_as_the_oldest_leaves_the_window():
    rl = RateLimiter(3, HOUR)
    assert [rl.allow("a", T0 + timedelta(minutes=m)) for m in (0, 10, 20, 30)] == [True, True, True, False]
    assert rl.allow("b", T0 + timedelta(minutes=30))  # per key
    assert not rl.allow("a", T0 + timedelta(minutes=59, seconds=59))
    assert rl.allow("a", T0 + HOUR)  # the 10:00 event has left the window
    assert not rl.allow("a", T0 + HOUR)


def test_zero_means_no_limit_and_keeps_no_state():
    rl = RateLimiter(0, HOUR)
    assert all(rl.allow(n, T0) for n in range(1000))
    assert len(rl) == 0 and rl.remaining("x", T0) is None


def test_bad_parameters_are_refused():
    for args in ((-1, HOUR), (1, timedelta(0)), (1, -HOUR)):
        with pytest.raises(ValueError):
            RateLimiter(*args)


# Offsets in seconds from T0, non-decreasing as a daemon's clock mostly is.
EVENTS = st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 600)), max_size=80).map(
    lambda evs: [(k, T0 + timedelta(seconds=sum(d for _, d in evs[: i + 1]))) for i, (k, _) in enumerate(evs)]
)


@settings(max_examples=200, deadline=None)
@given(limit_=st.integers(0, 5), window_s=st.integers(1, 1800), events=EVENTS)
def test_matches_the_definition_of_a_sliding_window(limit_, window_s, events):
    """Allowed iff fewer than `limit` earlier allowed events of the key lie in (now - window, now]."""
    window = timedelta(seconds=window_s)
    rl = RateLimiter(limit_, window)
    allowed: list[tuple[str, datetime]] = []
    for key, now in events:
        in_window = sum(1 for k, t in allowed if k == key and now - window < t <= now)
        expected = limit_ == 0 or in_window < limit_
        assert rl.allow(key, now) is expected
        if expected:
            allowed.append((key, now))
    for key in "abcd":  # never more than `limit` in any window
        times = [t for k, t in allowed if k == key]
        for t in times:
            assert limit_ == 0 or sum(1 for u in times if t <= u < t + window) <= limit_


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10**6), max_size=300), st.integers(1, 20))
def test_memory_is_bounded_by_max_keys_and_limit(keys, max_keys):
    rl = RateLimiter(2, HOUR, max_keys=max_keys)
    for i, key in enumerate(keys):
        rl.allow(key, T0 + timedelta(seconds=i))
        assert len(rl) <= max_keys
        assert all(len(events) <= 2 for events in rl._events.values())


def test_expired_keys_are_pruned_and_the_least_recently_used_is_evicted_first():
    rl = RateLimiter(1, HOUR, max_keys=2)
    rl.allow("old", T0)
    rl.allow("mid", T0 + timedelta(minutes=1))
    rl.allow("new", T0 + timedelta(minutes=2))  # evicts "old"
    assert set(rl._events) == {"mid", "new"}
    rl.prune(T0 + 2 * HOUR)
    assert len(rl) == 0


def test_guard_counts_only_opened_requests_and_reports_which_limit():
    guard = AbuseGuard(AbuseLimits(new_requests_per_number=2, new_requests_global=3))
    assert guard.new_request_refusal("+12025550123", T0) is None
    # Asking records nothing: a contact that merges is never counted.
    assert guard.new_request_refusal("+12025550123", T0) is None
    guard.new_request_opened("+12025550123", T0)
    guard.new_request_opened("+12025550123", T0)
    assert guard.new_request_refusal("+12025550123", T0) == NUMBER_RATE
    assert guard.new_request_refusal("+13125550188", T0) is None
    guard.new_request_opened("+13125550188", T0)
    assert guard.new_request_refusal("+14155550100", T0) == GLOBAL_RATE
    assert guard.new_request_refusal("+14155550100", T0 + HOUR) is None


def test_attempt_cap():
    guard = AbuseGuard(AbuseLimits(attempts_per_hour=2))
    assert guard.attempts_left(T0) == 2
    guard.attempt_started(T0)
    guard.attempt_started(T0 + timedelta(minutes=5))
    assert guard.attempts_left(T0 + timedelta(minutes=30)) == 0
    assert guard.attempts_left(T0 + HOUR) == 1
    assert AbuseGuard(AbuseLimits(attempts_per_hour=0)).attempts_left(T0) is None


def test_limit_turns_only_a_scheduling_decision_into_a_refusal():
    number = E164("+12025550123")
    schedule = Decision(Disposition.SCHEDULE, number, "Ada")
    assert limit(schedule, None) is schedule
    limited = limit(schedule, NUMBER_RATE)
    assert (limited.disposition, limited.number, limited.detail) == (
        Disposition.RATE_LIMITED,
        number,
        NUMBER_RATE,
    )
    blocked = Decision(Disposition.BLOCKED, number, "", "prefix_blocked")
    assert limit(blocked, NUMBER_RATE) is blocked


def test_config_defaults_and_the_shipped_example():
    assert abuse_limits(Config()) == AbuseLimits()
    block = SHIPPED.read_text().split("# [limits]", 1)[1].split("\n\n", 1)[0]
    uncommented = re.sub(r"^# ([a-z_]+ = .*)$", r"\1", block, flags=re.M)
    cfg = Config.model_validate({"limits": tomllib.loads(uncommented)})
    assert abuse_limits(cfg) == AbuseLimits()
    custom = Config.model_validate(
        {"limits": {"new_requests_per_number": 0, "per_number_window": "30m", "attempts_per_hour": 10}}
    )
    assert custom.limits.per_number_window == timedelta(minutes=30)
    assert AbuseGuard(abuse_limits(custom)).new_request_refusal("+12025550123", T0) is None


@pytest.mark.parametrize(
    "bad", [{"per_number_window": "0s"}, {"new_requests_global": -1}, {"attempts_per_hour": "many"}]
)
def test_bad_limits_are_refused(bad):
    with pytest.raises(ValueError, match="limits"):
        Config.model_validate({"limits": bad})
