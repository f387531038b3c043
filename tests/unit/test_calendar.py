from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.errors import InvalidSchedule

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")

OFFICE = BusinessCalendar.from_spec(
    "Europe/Berlin",
    {"mon-fri": ["09:00-13:00", "14:00-18:00"], "sat": "10:00-14:00"},
    ["2024-12-25", date(2024, 12, 26)],
)


def berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[misc]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# 2024-06-03 is a Monday.


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (berlin(2024, 6, 3, 8, 59, 59, 999999), False),
        (berlin(2024, 6, 3, 9, 0), True),
        (berlin(2024, 6, 3, 12, 59, 59), True),
        (berlin(2024, 6, 3, 13, 0), False),
        (berlin(2024, 6, 3, 13, 59, 59), False),
        (berlin(2024, 6, 3, 14, 0), True),
        (berlin(2024, 6, 3, 17, 59, 59), True),
        (berlin(2024, 6, 3, 18, 0), False),
        (berlin(2024, 6, 8, 10, 0), True),  # Saturday
        (berlin(2024, 6, 8, 14, 0), False),
        (berlin(2024, 6, 9, 11, 0), False),  # Sunday
        (berlin(2024, 12, 25, 10, 0), False),  # holiday on a Wednesday
        (berlin(2024, 12, 26, 10, 0), False),
        (berlin(2024, 12, 27, 10, 0), True),
        (utc(2024, 6, 3, 7, 0), True),  # 09:00 CEST
        (utc(2024, 6, 3, 6, 59, 59), False),
        (utc(2024, 1, 8, 8, 0), True),  # 09:00 CET
        (utc(2024, 1, 8, 7, 59), False),
    ],
)
def test_is_open_edges(at: datetime, expected: bool) -> None:
    assert OFFICE.is_open(at) is expected


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (berlin(2024, 6, 3, 9, 0), berlin(2024, 6, 3, 9, 0)),
        (berlin(2024, 6, 3, 10, 17), berlin(2024, 6, 3, 10, 17)),
        (berlin(2024, 6, 3, 3, 0), berlin(2024, 6, 3, 9, 0)),
        (berlin(2024, 6, 3, 13, 0), berlin(2024, 6, 3, 14, 0)),  # lunch
        (berlin(2024, 6, 3, 18, 0), berlin(2024, 6, 4, 9, 0)),
        (berlin(2024, 6, 7, 18, 30), berlin(2024, 6, 8, 10, 0)),  # Friday evening -> Saturday
        (berlin(2024, 6, 8, 14, 0), berlin(2024, 6, 10, 9, 0)),  # Saturday close -> Monday
        (berlin(2024, 12, 24, 19, 0), berlin(2024, 12, 27, 9, 0)),  # over two holidays
        (utc(2024, 6, 2, 23, 30), berlin(2024, 6, 3, 9, 0)),  # Monday 01:30 local
    ],
)
def test_next_open(at: datetime, expected: datetime) -> None:
    result = OFFICE.next_open(at)
    assert result == expected
    assert result.tzinfo is BERLIN
    assert OFFICE.is_open(result)


def test_opening_of_and_interval_at() -> None:
    assert OFFICE.opening_of(berlin(2024, 6, 3, 10, 30)) == berlin(2024, 6, 3, 9, 0)
    assert OFFICE.opening_of(berlin(2024, 6, 3, 15, 0)) == berlin(2024, 6, 3, 14, 0)
    assert OFFICE.opening_of(berlin(2024, 6, 3, 13, 30)) is None
    assert OFFICE.interval_at(berlin(2024, 6, 3, 15, 0)) == (
        berlin(2024, 6, 3, 14, 0),
        berlin(2024, 6, 3, 18, 0),
    )
    assert OFFICE.interval_at(berlin(2024, 6, 9, 15, 0)) is None


@pytest.mark.parametrize("method", ["is_open", "next_open", "opening_of", "interval_at"])
def test_naive_datetimes_are_rejected(method: str) -> None:
    with pytest.raises(ValueError, match="naive"):
        getattr(OFFICE, method)(datetime(2024, 6, 3, 10, 0))


def test_from_spec_shapes() -> None:
    cal = BusinessCalendar.from_spec(
        "UTC",
        {"Mon, Wed": "09:00-12:00", "tue": [], "thu": "closed", "fri": "20:00-24:00", "sat": "22:00-00:00"},
    )
    assert set(cal.weekly) == {0, 2, 4, 5}
    assert cal.weekly[4] == ((time(20, 0), time(0, 0)),)
    assert cal.weekly[5] == ((time(22, 0), time(0, 0)),)
    assert cal.is_open(utc(2024, 6, 7, 23, 59, 59))  # Friday
    assert not cal.is_open(utc(2024, 6, 8, 0, 0))  # Saturday 00:00
    assert cal.holidays == frozenset()


def test_touching_intervals_merge() -> None:
    cal = BusinessCalendar.from_spec("UTC", {"mon": ["13:00-18:00", "09:00-13:00"]})
    assert cal.weekly[0] == ((time(9, 0), time(18, 0)),)
    assert cal.opening_of(utc(2024, 6, 3, 15, 0)) == utc(2024, 6, 3, 9, 0)


def test_midnight_spanning_hours_are_contiguous() -> None:
    cal = BusinessCalendar.from_spec("UTC", {"mon": "22:00-24:00", "tue": "00:00-02:00"})
    assert cal.is_open(utc(2024, 6, 3, 23, 59))
    assert cal.is_open(utc(2024, 6, 4, 0, 0))
    assert cal.is_open(utc(2024, 6, 4, 1, 59))
    assert not cal.is_open(utc(2024, 6, 4, 2, 0))


@pytest.mark.parametrize(
    ("tz", "hours", "holidays", "message"),
    [
        ("UTC", {"xyz": "09:00-18:00"}, (), "unknown day"),
        ("UTC", {"mon-funday": "09:00-18:00"}, (), "unknown day"),
        ("UTC", {"fri-mon": "09:00-18:00"}, (), "backwards"),
        ("UTC", {"mon": "18:00-09:00"}, (), "ends before it starts"),
        ("UTC", {"mon": "09:00-09:00"}, (), "ends before it starts"),
        ("UTC", {"mon": ["09:00-13:00", "12:00-18:00"]}, (), "overlap"),
        ("UTC", {"mon-fri": "09:00-18:00", "mon": "17:00-19:00"}, (), "overlap"),
        ("UTC", {"mon": ["20:00-24:00", "21:00-22:00"]}, (), "overlap"),
        ("UTC", {"mon": "9-18"}, (), "bad time"),
        ("UTC", {"mon": "25:00-26:00"}, (), "bad time"),
        ("UTC", {"mon": "09:60-10:00"}, (), "bad time"),
        ("UTC", {"mon": "24:00-24:00"}, (), "bad time"),
        ("UTC", {"mon": "0900"}, (), "bad interval"),
        ("UTC", {"mon": None}, (), "hours must be"),
        ("UTC", {"mon": [9]}, (), "bad interval"),
        ("UTC", {"mon": "09:00-18:00"}, ("2024-13-01",), "bad holiday"),
        ("UTC", {"mon": "09:00-18:00"}, (datetime(2024, 1, 1),), "not a datetime"),
        ("Mars/Olympus_Mons", {}, (), "unknown time zone"),
        ("", {}, (), "unknown time zone"),
        ("../../etc/passwd", {}, (), "unknown time zone"),
    ],
)
def test_from_spec_rejects(tz: str, hours: dict, holidays: tuple, message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        BusinessCalendar.from_spec(tz, hours, holidays)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(InvalidSchedule, match="weekday"):
        BusinessCalendar(tz=BERLIN, weekly={7: ((time(9), time(10)),)})
    with pytest.raises(InvalidSchedule, match="overlap"):
        BusinessCalendar(tz=BERLIN, weekly={0: ((time(9), time(12)), (time(11), time(13)))})


def test_always_open() -> None:
    cal = BusinessCalendar.always_open("Europe/Berlin")
    for at in (
        utc(2024, 3, 31, 1, 0),
        utc(2024, 10, 27, 0, 59),
        utc(2024, 12, 31, 23, 0),
        berlin(2024, 6, 9, 0, 0),
    ):
        assert cal.is_open(at)
        # Compare in UTC: Python never reports an ambiguous local time equal to another zone's.
        assert cal.next_open(at).astimezone(UTC) == at
    assert BusinessCalendar.always_open().is_open(utc(2030, 1, 1))


def test_never_open_raises() -> None:
    cal = BusinessCalendar.from_spec("UTC", {})
    with pytest.raises(InvalidSchedule, match="never open"):
        cal.next_open(utc(2024, 6, 3))


# --- DST: Europe/Berlin, 2024-03-31 02:00 -> 03:00 and 2024-10-27 03:00 -> 02:00 (both Sundays).

NIGHT = BusinessCalendar.from_spec("Europe/Berlin", {"sun": "02:30-03:30"})


def test_berlin_spring_forward_gap_opens_after_the_gap() -> None:
    # 02:30 does not exist; the first real instant after it is 03:00 CEST (01:00 UTC).
    assert not NIGHT.is_open(utc(2024, 3, 31, 0, 59, 59))
    assert NIGHT.is_open(utc(2024, 3, 31, 1, 0))
    assert NIGHT.next_open(utc(2024, 3, 30, 12, 0)) == berlin(2024, 3, 31, 3, 0)
    assert NIGHT.opening_of(utc(2024, 3, 31, 1, 15)) == utc(2024, 3, 31, 1, 0)
    assert NIGHT.is_open(utc(2024, 3, 31, 1, 29))
    assert not NIGHT.is_open(utc(2024, 3, 31, 1, 30))  # 03:30 CEST


def test_berlin_fall_back_uses_first_occurrence() -> None:
    # 02:30 happens twice; the interval starts at the first (00:30 UTC) and ends at 03:30 CET.
    assert not NIGHT.is_open(utc(2024, 10, 27, 0, 29))
    assert NIGHT.next_open(utc(2024, 10, 26, 12, 0)).astimezone(UTC) == utc(2024, 10, 27, 0, 30)
    assert NIGHT.is_open(utc(2024, 10, 27, 0, 30))
    assert NIGHT.is_open(berlin(2024, 10, 27, 2, 15, fold=1))  # the repeated hour is still open
    assert NIGHT.is_open(utc(2024, 10, 27, 2, 29))
    assert not NIGHT.is_open(utc(2024, 10, 27, 2, 30))


def test_berlin_interval_ending_in_the_repeated_hour_ends_at_first_occurrence() -> None:
    cal = BusinessCalendar.from_spec("Europe/Berlin", {"sun": "01:00-02:30"})
    assert cal.is_open(berlin(2024, 10, 27, 2, 15, fold=0))
    assert not cal.is_open(berlin(2024, 10, 27, 2, 15, fold=1))


def test_interval_lost_in_the_gap_never_opens_that_day() -> None:
    cal = BusinessCalendar.from_spec("Europe/Berlin", {"sun": "02:10-02:50"})
    assert cal.next_open(utc(2024, 3, 30, 12, 0)) == berlin(2024, 4, 7, 2, 10)
    assert cal.next_open(utc(2024, 3, 23, 12, 0)) == berlin(2024, 3, 24, 2, 10)


def test_wall_times_hold_across_berlin_dst() -> None:
    before = OFFICE.next_open(berlin(2024, 3, 29, 20, 0))  # Good Friday evening, CET
    after = OFFICE.next_open(berlin(2024, 4, 1, 8, 0))  # Monday, CEST
    assert before.astimezone(UTC) == utc(2024, 3, 30, 9, 0)  # Saturday 10:00 CET
    assert after.astimezone(UTC) == utc(2024, 4, 1, 7, 0)  # Monday 09:00 CEST


# --- DST: America/New_York, 2024-03-10 02:00 -> 03:00 and 2024-11-03 02:00 -> 01:00.

NY_NIGHT = BusinessCalendar.from_spec("America/New_York", {"sun": "01:30-02:30"})


def test_new_york_spring_forward() -> None:
    # Opens 01:30 EST (06:30 UTC); 02:30 does not exist so it closes at 03:00 EDT (07:00 UTC).
    assert NY_NIGHT.next_open(utc(2024, 3, 9, 12, 0)) == utc(2024, 3, 10, 6, 30)
    assert NY_NIGHT.interval_at(utc(2024, 3, 10, 6, 45)) == (
        datetime(2024, 3, 10, 1, 30, tzinfo=NEW_YORK),
        datetime(2024, 3, 10, 3, 0, tzinfo=NEW_YORK),
    )
    assert not NY_NIGHT.is_open(utc(2024, 3, 10, 7, 0))


def test_new_york_fall_back() -> None:
    # Opens at the first 01:30 (EDT, 05:30 UTC), closes 02:30 EST (07:30 UTC): two real hours.
    assert NY_NIGHT.next_open(utc(2024, 11, 2, 12, 0)).astimezone(UTC) == utc(2024, 11, 3, 5, 30)
    assert NY_NIGHT.is_open(datetime(2024, 11, 3, 1, 10, tzinfo=NEW_YORK, fold=1))
    assert NY_NIGHT.is_open(utc(2024, 11, 3, 7, 29))
    assert not NY_NIGHT.is_open(utc(2024, 11, 3, 7, 30))
    start, end = NY_NIGHT.interval_at(utc(2024, 11, 3, 6, 0)) or (None, None)
    assert start is not None and end is not None
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=2)


def test_midnight_gap_santiago() -> None:
    # Chile springs forward at 24:00: 2024-09-08 00:00 does not exist, the day starts at 01:00.
    cal = BusinessCalendar.from_spec("America/Santiago", {"sat": "22:00-24:00", "sun": "00:00-02:00"})
    santiago = ZoneInfo("America/Santiago")
    assert cal.is_open(datetime(2024, 9, 7, 23, 59, tzinfo=santiago))
    assert cal.is_open(datetime(2024, 9, 8, 1, 0, tzinfo=santiago))
    assert cal.opening_of(datetime(2024, 9, 8, 1, 30, tzinfo=santiago)) == datetime(
        2024, 9, 8, 1, 0, tzinfo=santiago
    )


def test_kolkata_has_no_dst() -> None:
    cal = BusinessCalendar.from_spec("Asia/Kolkata", {"mon-fri": "09:30-18:30"})
    assert not cal.is_open(utc(2024, 6, 3, 3, 59, 59))
    assert cal.is_open(utc(2024, 6, 3, 4, 0))  # 09:30 IST
    assert not cal.is_open(utc(2024, 6, 3, 13, 0))  # 18:30 IST
    assert cal.next_open(utc(2024, 6, 3, 0, 0)) == datetime(2024, 6, 3, 9, 30, tzinfo=KOLKATA)
    assert cal.next_open(utc(2024, 6, 3, 0, 0)).utcoffset() == timedelta(hours=5, minutes=30)
    # Same UTC hour all year round.
    assert cal.next_open(utc(2024, 12, 2, 0, 0)).astimezone(UTC) == utc(2024, 12, 2, 4, 0)


def test_calendar_is_frozen_and_comparable() -> None:
    again = BusinessCalendar.from_spec(
        "Europe/Berlin",
        {"mon-fri": ["09:00-13:00", "14:00-18:00"], "sat": "10:00-14:00"},
        ["2024-12-25", "2024-12-26"],
    )
    assert again == OFFICE
    hash(OFFICE)
    with pytest.raises(AttributeError):
        OFFICE.tz = KOLKATA  # type: ignore[misc]
    with pytest.raises(TypeError):
        OFFICE.weekly[6] = ()  # type: ignore[index]
