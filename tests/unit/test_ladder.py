import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.errors import InvalidSchedule
from callbackd.domain.ladder import RetryLadder, Schedule

BERLIN = ZoneInfo("Europe/Berlin")
H = timedelta(hours=1)
ALWAYS = BusinessCalendar.always_open()
OFFICE = BusinessCalendar.from_spec("Europe/Berlin", {"mon-fri": ["09:00-13:00", "14:00-18:00"]})
CREATED = datetime(2024, 6, 3, 7, 30, tzinfo=UTC)  # Monday 09:30 in Berlin


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)  # type: ignore[misc]


def run(
    schedule: Schedule, created: datetime, key: str = "", late: timedelta = timedelta(0)
) -> list[datetime]:
    """Every attempt's start when each one fails and starts ``late`` after it was due."""
    starts: list[datetime] = []
    last = None
    while (due := schedule.due_at(len(starts), last, created, spread_key=key)) is not None:
        last = due + late
        starts.append(last)
    return starts


# --- RetryLadder


def test_default_ladder_waits_1h_3h_6h_6h_and_stops_after_five() -> None:
    ladder = RetryLadder()
    assert ladder.next_due(0, None, CREATED) == CREATED
    t = CREATED
    gaps = []
    for made in range(1, 5):
        nxt = ladder.next_due(made, t, CREATED)
        assert nxt is not None
        gaps.append(nxt - t)
        t = nxt
    assert gaps == [H, 3 * H, 6 * H, 6 * H]
    assert ladder.next_due(5, t, CREATED) is None
    assert ladder.next_due(9, t, CREATED) is None


def test_delays_count_from_the_previous_attempt_start() -> None:
    ladder = RetryLadder()
    late_start = CREATED + timedelta(hours=5)
    assert ladder.next_due(2, late_start, CREATED) == late_start + 3 * H


def test_custom_ladder_repeats_last_delay() -> None:
    ladder = RetryLadder(delays=(timedelta(minutes=10),), max_attempts=3)
    assert ladder.next_due(1, CREATED, CREATED) == CREATED + timedelta(minutes=10)
    assert ladder.next_due(2, CREATED, CREATED) == CREATED + timedelta(minutes=10)
    assert ladder.next_due(3, CREATED, CREATED) is None
    assert ladder.delay_after(7) == timedelta(minutes=10)


def test_ladder_adds_real_hours_across_dst() -> None:
    # 01:30 CET + 1h is 03:30 CEST, not the non-existent 02:30.
    due = RetryLadder().next_due(1, berlin(2024, 3, 31, 1, 30), CREATED)
    assert due == datetime(2024, 3, 31, 1, 30, tzinfo=UTC)
    assert due is not None and due.tzinfo is UTC


def test_ladder_accepts_a_list_of_delays() -> None:
    ladder = RetryLadder(delays=[H, 2 * H], max_attempts=2)  # type: ignore[arg-type]
    assert ladder.delays == (H, 2 * H)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": 21},
        {"max_attempts": True},
        {"max_attempts": 2.5},
        {"delays": ()},
        {"delays": (H, timedelta(0))},
        {"delays": (-H,)},
        {"delays": (3600,)},
    ],
)
def test_ladder_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidSchedule):
        RetryLadder(**kwargs)  # type: ignore[arg-type]


def test_ladder_rejects_inconsistent_input() -> None:
    ladder = RetryLadder()
    with pytest.raises(ValueError):
        ladder.next_due(-1, None, CREATED)
    with pytest.raises(ValueError, match="last_attempt_at"):
        ladder.next_due(2, None, CREATED)
    with pytest.raises(ValueError, match="naive"):
        ladder.next_due(0, None, datetime(2024, 6, 3, 10, 0))
    with pytest.raises(ValueError, match="naive"):
        ladder.next_due(1, datetime(2024, 6, 3, 10, 0), CREATED)


# --- Schedule


def test_schedule_full_run_when_always_open() -> None:
    starts = run(Schedule(calendar=ALWAYS), CREATED)
    assert [s - CREATED for s in starts] == [timedelta(0), H, 4 * H, 10 * H, 16 * H]


def test_schedule_counts_from_actual_start_when_attempts_run_late() -> None:
    starts = run(Schedule(calendar=ALWAYS), CREATED, late=timedelta(minutes=10))
    late = timedelta(minutes=10)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == [H + late, 3 * H + late, 6 * H + late, 6 * H + late]


def test_due_inside_hours_is_not_spread() -> None:
    schedule = Schedule(calendar=OFFICE)
    assert schedule.due_at(0, None, CREATED, spread_key="req-42") == CREATED
    due = schedule.due_at(1, CREATED, CREATED, spread_key="req-42")
    assert due == CREATED + H
    assert due is not None and due.tzinfo is UTC


def test_night_backlog_is_spread_deterministically_after_opening() -> None:
    schedule = Schedule(calendar=OFFICE)
    night = berlin(2024, 6, 3, 22, 0)
    opening = berlin(2024, 6, 4, 9, 0).astimezone(UTC)
    assert schedule.due_at(0, None, night, spread_key="req-42") == opening + timedelta(seconds=245)
    assert schedule.due_at(0, None, night, spread_key="req-43") == opening + timedelta(seconds=39)
    assert schedule.due_at(0, None, night, spread_key="") == opening
    dues = {schedule.due_at(0, None, night, spread_key=f"req-{i}") for i in range(200)}
    assert len(dues) > 100
    for due in dues:
        assert due is not None
        assert opening <= due < opening + timedelta(minutes=5)
        assert OFFICE.is_open(due)


def test_lunch_break_defers_to_afternoon_with_spread() -> None:
    schedule = Schedule(calendar=OFFICE)
    last = berlin(2024, 6, 3, 12, 10)  # +1h lands in the lunch break
    due = schedule.due_at(1, last, last, spread_key="req-42")
    assert due == berlin(2024, 6, 3, 14, 0).astimezone(UTC) + timedelta(seconds=245)


def test_spread_is_clamped_to_a_short_interval() -> None:
    short = BusinessCalendar.from_spec("UTC", {"mon-fri": "09:00-09:02"})
    schedule = Schedule(calendar=short, opening_spread=timedelta(minutes=5))
    night = datetime(2024, 6, 3, 22, 0, tzinfo=UTC)
    opening = datetime(2024, 6, 4, 9, 0, tzinfo=UTC)
    assert schedule.due_at(0, None, night, spread_key="req-42") == opening + timedelta(seconds=65)
    for i in range(300):
        due = schedule.due_at(0, None, night, spread_key=f"k{i}")
        assert due is not None
        assert opening <= due < opening + timedelta(minutes=2)
        assert short.is_open(due)


def test_zero_spread_opens_exactly() -> None:
    schedule = Schedule(calendar=OFFICE, opening_spread=timedelta(0))
    night = berlin(2024, 6, 3, 22, 0)
    assert schedule.due_at(0, None, night, spread_key="req-42") == berlin(2024, 6, 4, 9, 0).astimezone(UTC)


def test_preferred_time_is_honoured_for_the_first_attempt_only() -> None:
    schedule = Schedule(calendar=OFFICE)
    preferred = berlin(2024, 6, 3, 15, 30)
    assert schedule.due_at(0, None, CREATED, preferred_at=preferred) == preferred.astimezone(UTC)
    # A preferred time in the past does not hold the call back.
    assert schedule.due_at(0, None, CREATED, preferred_at=CREATED - 5 * H) == CREATED
    # After the first attempt the ladder rules.
    assert schedule.due_at(1, CREATED, CREATED, preferred_at=preferred) == CREATED + H


def test_a_merge_keeps_the_earliest_need() -> None:
    schedule = Schedule(calendar=OFFICE, max_age=timedelta(days=7))
    six_days = CREATED + timedelta(days=6)
    # A missed call at 09:30 pulls a lead wanted six days ahead in to now.
    assert schedule.merged_due(six_days, CREATED) == CREATED
    # A contact that could wait longer never pushes an earlier due time out.
    assert schedule.merged_due(CREATED + H, CREATED, preferred_at=six_days) == CREATED + H
    # After hours the pull-in stops at the next opening, like a fresh contact's due time.
    evening = berlin(2024, 6, 3, 19, 0)
    assert schedule.merged_due(six_days, evening, spread_key="k") == schedule.due_at(
        0, None, evening, spread_key="k"
    )


def test_preferred_time_outside_hours_moves_to_opening() -> None:
    schedule = Schedule(calendar=OFFICE)
    preferred = berlin(2024, 6, 3, 20, 0)
    due = schedule.due_at(0, None, CREATED, preferred_at=preferred, spread_key="req-43")
    assert due == berlin(2024, 6, 4, 9, 0).astimezone(UTC) + timedelta(seconds=39)


def test_max_age_expires_requests() -> None:
    friday = berlin(2024, 6, 7, 17, 30)
    # 18:30 is closed; Monday 09:00 is past a one-day limit.
    short = Schedule(calendar=OFFICE, max_age=timedelta(days=1))
    assert short.due_at(1, friday, friday) is None
    default = Schedule(calendar=OFFICE)
    assert default.due_at(1, friday, friday) == berlin(2024, 6, 10, 9, 0).astimezone(UTC)
    # Expiry also ends a run that still has attempts left.
    starts = run(Schedule(calendar=ALWAYS, max_age=5 * H), CREATED)
    assert [s - CREATED for s in starts] == [timedelta(0), H, 4 * H]


def test_is_expired() -> None:
    schedule = Schedule(calendar=OFFICE)
    assert not schedule.is_expired(CREATED, CREATED)
    assert not schedule.is_expired(CREATED, CREATED + timedelta(days=3))
    assert schedule.is_expired(CREATED, CREATED + timedelta(days=3, microseconds=1))
    assert not schedule.is_expired(CREATED, berlin(2024, 6, 6, 9, 30))  # exactly 3 days
    with pytest.raises(ValueError, match="naive"):
        schedule.is_expired(CREATED, datetime(2024, 6, 3))


def test_no_due_after_attempts_are_used_up() -> None:
    schedule = Schedule(calendar=ALWAYS, ladder=RetryLadder(max_attempts=2))
    assert run(schedule, CREATED) == [CREATED, CREATED + H]
    assert schedule.due_at(2, CREATED + H, CREATED) is None


@pytest.mark.parametrize(
    "kwargs",
    [{"max_age": timedelta(0)}, {"max_age": -H}, {"opening_spread": timedelta(seconds=-1)}],
)
def test_schedule_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidSchedule):
        Schedule(calendar=OFFICE, **kwargs)  # type: ignore[arg-type]
