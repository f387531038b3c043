"""The start-up and reconnect back-off: pure arithmetic, no event loop."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbackd.domain.backoff import Backoff


def test_doubles_from_initial_until_the_cap():
    b = Backoff(initial=1, factor=2, cap=30)
    assert [b.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_no_failure_no_wait():
    assert Backoff().delay(0) == 0


def test_a_huge_failure_count_stays_at_the_cap():
    assert Backoff(initial=0.5, factor=3, cap=60).delay(10**6) == 60


def test_jitter_spreads_around_the_delay_and_never_passes_the_cap():
    b = Backoff(initial=4, factor=2, cap=10, jitter=0.5)
    assert b.delay(1, rand=0.0) == 2
    assert b.delay(1, rand=0.5) == 4
    assert b.delay(1, rand=0.999) == pytest.approx(5.996)
    assert b.delay(5, rand=0.999) == 10


@pytest.mark.parametrize(
    "kwargs", [{"initial": 0}, {"cap": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"jitter": 1}, {"jitter": -0.1}]
)
def test_nonsense_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


@given(
    failures=st.integers(1, 10_000),
    initial=st.floats(0.01, 100),
    cap=st.floats(0.01, 3600),
    jitter=st.floats(0, 1, exclude_max=True),
    rand=st.floats(0, 1),
)
def test_never_negative_never_above_the_cap_and_never_shrinks_without_jitter(
    failures, initial, cap, jitter, rand
):
    b = Backoff(initial=initial, factor=2, cap=cap, jitter=jitter)
    assert 0 < b.delay(failures, rand) <= cap
    plain = Backoff(initial=initial, factor=2, cap=cap)
    assert plain.delay(failures + 1) >= plain.delay(failures)
