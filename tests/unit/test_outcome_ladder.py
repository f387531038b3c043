"""The outcome-aware ladder: short waits after busy and congestion, the rung after the rest."""

from datetime import UTC, datetime, timedelta

import pytest

from callbackd.config import ConfigError, ScheduleConfig, build_schedule
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.errors import InvalidSchedule
from callbackd.domain.ladder import RetryLadder, Schedule, Wait
from callbackd.domain.outcomes import COUNTED, Outcome, client_leg_outcome, verdict
from callbackd.domain.states import RequestEvent

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
M = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("outcome", "wait", "why"),
    [
        (Outcome.CLIENT_BUSY, 10 * M, Wait.OUTCOME_DELAY),
        (Outcome.CLIENT_CONGESTION, 2 * M, Wait.OUTCOME_DELAY),
        (Outcome.CLIENT_NO_ANSWER, 60 * M, Wait.LADDER),
        (Outcome.VOICEMAIL, 60 * M, Wait.LADDER),
        (Outcome.CLIENT_UNAVAILABLE, 60 * M, Wait.LADDER),
        (None, 60 * M, Wait.LADDER),
    ],
)
def test_default_wait_after_each_outcome(outcome: Outcome | None, wait: timedelta, why: Wait) -> None:
    schedule = Schedule(calendar=BusinessCalendar.always_open())
    plan = schedule.plan(1, T0, T0, outcome=outcome.value if outcome else None)
    assert (plan.due, plan.wait) == (T0 + wait, why)


def test_busy_delay_still_respects_hours_and_the_cap() -> None:
    office = BusinessCalendar.from_spec("UTC", {"mon-fri": "09:00-10:05"})
    schedule = Schedule(calendar=office, opening_spread=timedelta(0))
    # 10:00 + 10 min is past closing: the next opening, not 10:10.
    plan = schedule.plan(1, T0, T0, outcome="client_busy")
    assert (plan.due, plan.wait) == (datetime(2026, 3, 3, 9, 0, tzinfo=UTC), Wait.BUSINESS_HOURS)
    assert schedule.plan(5, T0, T0, outcome="client_busy").close_reason == "max_attempts"


def test_max_attempts_up_to_ten() -> None:
    assert RetryLadder(max_attempts=10).max_attempts == 10
    with pytest.raises(InvalidSchedule, match="between 1 and 10"):
        RetryLadder(max_attempts=11)
    with pytest.raises(InvalidSchedule, match="positive"):
        RetryLadder(outcome_delays={"client_busy": timedelta(0)})


def test_config_outcome_delays_max_attempts_and_queue_overrides() -> None:
    s = ScheduleConfig.model_validate(
        {
            "max_attempts": 10,
            "outcome_delays": {"busy": "5m", "congestion": "ladder", "voicemail": "2h"},
            "queues": {"sales": {"max_attempts": 8, "delays": ["15m"]}},
        }
    )
    schedule = build_schedule(s)
    assert schedule.ladder.max_attempts == 10
    assert dict(schedule.ladder.outcome_delays) == {"client_busy": 5 * M, "voicemail": 120 * M}
    sales = schedule.ladder_for("sales")
    assert (sales.max_attempts, sales.delays, dict(sales.outcome_delays)) == (
        8,
        (15 * M,),
        {"client_busy": 5 * M, "voicemail": 120 * M},
    )
    assert schedule.ladder_for("support") is schedule.ladder
    assert schedule.plan(1, T0, T0, outcome="client_no_answer", queue="sales").due == T0 + 15 * M


@pytest.mark.parametrize(
    "bad",
    [{"max_attempts": 11}, {"outcome_delays": {"engaged": "5m"}}, {"outcome_delays": {"busy": "soon"}}],
)
def test_bad_ladder_config_is_refused(bad: dict) -> None:
    from pydantic import ValidationError

    with pytest.raises((ValidationError, ConfigError)):
        ScheduleConfig.model_validate(bad)


def test_answering_machine_is_voicemail_and_counts() -> None:
    # AMD hung up on a machine: Dial reports ANSWER, the bridge context's Stage says machine.
    assert client_leg_outcome("machine", "ANSWER", "16") is Outcome.VOICEMAIL
    assert client_leg_outcome("client", "ANSWER", "16") is Outcome.ANSWERED
    assert Outcome.VOICEMAIL in COUNTED
    v = verdict(Outcome.VOICEMAIL, 2, 5)
    assert (v.event, v.counted) == (RequestEvent.RETRY_LATER, True)
    assert verdict(Outcome.VOICEMAIL, 5, 5).close_reason == "max_attempts"
