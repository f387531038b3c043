"""Property tests: the schedule's promises hold for arbitrary calendars, zones and instants."""

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from callbackd.domain.calendar import BusinessCalendar, ClientWindow
from callbackd.domain.errors import InvalidNumber
from callbackd.domain.ladder import RetryLadder, Schedule
from callbackd.domain.phone import E164, parse_caller_id

ZONES = [
    ZoneInfo(name)
    for name in (
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Asia/Kolkata",
        "Australia/Lord_Howe",  # 30-minute DST shift
        "America/Santiago",  # DST changes at midnight
        "Pacific/Chatham",  # +12:45 / +13:45
        "America/St_Johns",  # -03:30
    )
]
E164_RE = re.compile(r"\+[1-9]\d{6,14}")
PROPERTY = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 12, 31), timezones=st.sampled_from([*ZONES, UTC])
)


def _minute(m: int) -> time:
    return time(0, 0) if m == 1440 else time(m // 60, m % 60)


@st.composite
def day_intervals(draw: st.DrawFn) -> tuple[tuple[time, time], ...]:
    # Distinct sorted minute marks paired up: increasing, non-overlapping, never touching.
    marks = sorted(draw(st.lists(st.integers(0, 1440), unique=True, max_size=6)))
    return tuple((_minute(a), _minute(b)) for a, b in zip(marks[::2], marks[1::2], strict=False))


@st.composite
def calendars(draw: st.DrawFn, near: date | None = None) -> BusinessCalendar:
    weekly = {day: draw(day_intervals()) for day in range(7)}
    assume(any(weekly.values()))
    base = near or date(2024, 1, 1)
    holidays = {base + timedelta(days=k) for k in draw(st.sets(st.integers(-2, 20), max_size=8))}
    return BusinessCalendar(tz=draw(st.sampled_from(ZONES)), weekly=weekly, holidays=frozenset(holidays))


@st.composite
def calendar_and_instant(draw: st.DrawFn) -> tuple[BusinessCalendar, datetime]:
    at = draw(instants)
    return draw(calendars(near=at.date())), at


@PROPERTY
@given(calendar_and_instant())
def test_next_open_is_the_first_open_instant_not_before(case: tuple[BusinessCalendar, datetime]) -> None:
    cal, at = case
    opened = cal.next_open(at)
    opened_utc, at_utc = opened.astimezone(UTC), at.astimezone(UTC)
    assert opened_utc >= at_utc
    assert cal.is_open(opened)
    if cal.is_open(at):
        assert opened_utc == at_utc
    else:
        # Nothing in between may be open.
        for probe in (at_utc + (opened_utc - at_utc) / 2, opened_utc - timedelta(microseconds=1)):
            assert not cal.is_open(probe)
        assert cal.opening_of(opened) is not None
        assert cal.opening_of(opened).astimezone(UTC) == opened_utc  # type: ignore[union-attr]


@PROPERTY
@given(calendar_and_instant())
def test_interval_at_contains_the_instant(case: tuple[BusinessCalendar, datetime]) -> None:
    cal, at = case
    interval = cal.interval_at(at)
    assert (interval is not None) == cal.is_open(at)
    if interval is not None:
        start, end = (x.astimezone(UTC) for x in interval)
        assert start <= at.astimezone(UTC) < end
        assert cal.is_open(start)
        assert not cal.is_open(end) or cal.interval_at(end) != interval


delays = st.lists(st.integers(1, 48 * 60).map(lambda m: timedelta(minutes=m)), min_size=1, max_size=4)
ladders = st.builds(
    RetryLadder,
    delays=delays.map(tuple),
    max_attempts=st.integers(1, 10),
)
CLIENT_ZONES = [
    "Asia/Vladivostok",
    "Pacific/Honolulu",
    "America/New_York",
    "Europe/Moscow",
    "Pacific/Auckland",
]


@PROPERTY
@given(
    case=calendar_and_instant(),
    ladder=ladders,
    max_age=st.integers(1, 30 * 24).map(lambda h: timedelta(hours=h)),
    spread=st.integers(0, 3600).map(lambda s: timedelta(seconds=s)),
    late=st.lists(st.integers(0, 6 * 3600), min_size=20, max_size=20),
    key=st.text(max_size=20),
    preferred_in=st.none() | st.integers(-48, 96).map(lambda h: timedelta(hours=h)),
    zones=st.lists(st.sampled_from(CLIENT_ZONES), max_size=2),
)
def test_due_at_stays_in_hours_and_within_limits(
    case: tuple[BusinessCalendar, datetime],
    ladder: RetryLadder,
    max_age: timedelta,
    spread: timedelta,
    late: list[int],
    key: str,
    preferred_in: timedelta | None,
    zones: list[str],
) -> None:
    cal, created = case
    schedule = Schedule(
        calendar=cal,
        ladder=ladder,
        max_age=max_age,
        opening_spread=spread,
        client_window=ClientWindow.from_spec(),
    )
    client = schedule.hours_for(zones)
    created_utc = created.astimezone(UTC)
    preferred = None if preferred_in is None else created_utc + preferred_in
    made = 0
    last: datetime | None = None
    while True:
        due = schedule.due_at(made, last, created, preferred_at=preferred, spread_key=key, client_zones=zones)
        if due is None:
            break
        assert due.tzinfo is UTC
        assert cal.is_open(due) and client.is_open(due)
        assert created_utc <= due <= created_utc + max_age
        if last is not None:
            assert due >= last + ladder.delay_after(made)
        assert (
            schedule.due_at(made, last, created, preferred_at=preferred, spread_key=key, client_zones=zones)
            == due
        )
        last = due + timedelta(seconds=late[made])
        made += 1
        assert made <= ladder.max_attempts
    assert made <= ladder.max_attempts


@PROPERTY
@given(
    raw=st.one_of(
        st.text(max_size=40),
        st.text(alphabet="0123456789 +().-", max_size=34),
        st.from_regex(r"\A(\+|00|8|1|7)?[0-9 ]{6,16}\Z"),
    ),
    region=st.sampled_from(["RU", "US", "DE", "GB", "IN", "FR", "BR", "CN"]),
)
def test_parse_yields_e164_or_invalid_number(raw: str, region: str) -> None:
    for parse in (E164.parse, parse_caller_id):
        try:
            number = parse(raw, region)
        except InvalidNumber:
            continue
        if number is not None:
            assert isinstance(number, E164)
            assert E164_RE.fullmatch(number)
