"""Business hours: when a callback may ring an operator.

Hours are local wall-clock times because that is how offices publish them; every
comparison is made on UTC instants so DST changes cannot shift or repeat a slot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from types import MappingProxyType
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from callbackd.domain.errors import InvalidSchedule, NoCommonHours

__all__ = [
    "DAY_NAMES",
    "BusinessCalendar",
    "CallingHours",
    "ClientWindow",
    "Interval",
    "OpenHours",
    "wall_time_in",
]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SEARCH_DAYS = 400
# An interval end of 00:00 means 24:00: intervals never cross midnight, so an end
# at 00:00 of the same day would be empty and is free to mean "end of day".
END_OF_DAY = time(0, 0)

Interval = tuple[time, time]

_TIME_RE = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
_ONE_DAY = timedelta(days=1)
# Dates whose open stretches a calendar keeps (a few years' worth; then it starts again).
_DAYS_KEPT = 2048


def _require_aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at!r}: pass a timezone-aware datetime")


def _wall_to_utc(day: date, wall: time, tz: tzinfo) -> datetime:
    """The instant a local wall time first happens on ``day``.

    Ambiguous (fall-back) times take the first occurrence; times inside a
    spring-forward gap take the first real instant after the gap.
    """
    naive = datetime.combine(day, wall)
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second or first.astimezone(tz).replace(tzinfo=None) == naive:
        return first
    # In a gap: the transition lies between the two readings. tzdata transitions fall
    # on whole seconds, so search whole seconds for the first instant past ``naive``.
    lo = math.floor(min(first, second).timestamp())
    hi = math.ceil(max(first, second).timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, UTC).astimezone(tz).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def wall_time_in(wall: datetime, tz: str) -> datetime:
    """A wall-clock time a person keyed in ("15:00 on the 2nd"), as the instant it names in ``tz``.

    A time in a spring-forward gap means the first instant after it; a repeated
    fall-back time its first occurrence, as for business hours.
    """
    if wall.tzinfo is not None:
        return wall.astimezone(UTC)
    return _wall_to_utc(wall.date(), wall.time(), _zone(tz))


def _check_intervals(day: int, intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    """Sort, validate and merge touching intervals so each open stretch is a single interval."""
    name = DAY_NAMES[day]
    checked: list[Interval] = []
    for item in intervals:
        try:
            start, end = item
        except (TypeError, ValueError):
            raise InvalidSchedule(f"{name}: interval {item!r} is not a (start, end) pair") from None
        if not isinstance(start, time) or not isinstance(end, time):
            raise InvalidSchedule(f"{name}: interval {item!r} must hold datetime.time values")
        if start.tzinfo is not None or end.tzinfo is not None:
            raise InvalidSchedule(f"{name}: business hours are local wall times, drop the tzinfo")
        if end != END_OF_DAY and end <= start:
            raise InvalidSchedule(
                f"{name}: interval {_fmt(start)}-{_fmt(end)} ends before it starts "
                "(intervals cannot cross midnight; split them)"
            )
        checked.append((start, end))
    checked.sort(key=lambda iv: iv[0])
    merged: list[Interval] = []
    for start, end in checked:
        if merged:
            prev_start, prev_end = merged[-1]
            if prev_end == END_OF_DAY or start < prev_end:
                raise InvalidSchedule(
                    f"{name}: intervals {_fmt(prev_start)}-{_fmt(prev_end)} and "
                    f"{_fmt(start)}-{_fmt(end)} overlap"
                )
            if start == prev_end:
                merged[-1] = (prev_start, end)
                continue
        merged.append((start, end))
    return tuple(merged)


def _fmt(t: time) -> str:
    return t.strftime("%H:%M") if t != END_OF_DAY else "24:00"


def _parse_weekly(hours: Mapping[str, str | list[str]]) -> dict[int, tuple[Interval, ...]]:
    weekly: dict[int, list[Interval]] = {}
    for key, value in hours.items():
        if not isinstance(key, str):
            raise InvalidSchedule(f"day key {key!r} must be a string like 'mon-fri'")
        if isinstance(value, str):
            values: list[object] = [value]
        elif isinstance(value, list | tuple):
            values = list(value)
        else:
            raise InvalidSchedule(f"{key}: hours must be 'HH:MM-HH:MM' or a list of them, got {value!r}")
        intervals = [_parse_interval(v) for v in values if not (isinstance(v, str) and v == "closed")]
        for day in _parse_days(key):
            weekly.setdefault(day, []).extend(intervals)
    return {day: tuple(ivs) for day, ivs in weekly.items()}


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidSchedule(f"unknown time zone {tz!r}") from None


def _parse_days(key: str) -> list[int]:
    days: list[int] = []
    for part in key.lower().replace(" ", "").split(","):
        first, sep, last = part.partition("-")
        if first not in DAY_NAMES or (sep and last not in DAY_NAMES):
            raise InvalidSchedule(f"unknown day {part!r} in {key!r}; use mon..sun or a range like mon-fri")
        lo = DAY_NAMES.index(first)
        hi = DAY_NAMES.index(last) if sep else lo
        if hi < lo:
            raise InvalidSchedule(f"day range {part!r} runs backwards; write it as two keys")
        days.extend(range(lo, hi + 1))
    return days


def _parse_time(text: str, *, is_end: bool) -> time:
    text = text.strip()
    if is_end and text == "24:00":
        return END_OF_DAY
    match = _TIME_RE.fullmatch(text)
    if match is None:
        raise InvalidSchedule(f"bad time {text!r}; use HH:MM (24:00 allowed as an end)")
    return time(int(match[1]), int(match[2]))


def _parse_interval(text: object) -> Interval:
    if not isinstance(text, str):
        raise InvalidSchedule(f"bad interval {text!r}; use 'HH:MM-HH:MM'")
    start, sep, end = text.partition("-")
    if not sep:
        raise InvalidSchedule(f"bad interval {text!r}; use 'HH:MM-HH:MM'")
    return _parse_time(start, is_end=False), _parse_time(end, is_end=True)


def _parse_holiday(value: str | date) -> date:
    if isinstance(value, datetime):
        raise InvalidSchedule(f"holiday {value!r} must be a date, not a datetime")
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise InvalidSchedule(f"bad holiday {value!r}; use YYYY-MM-DD") from None


@dataclass(frozen=True)
class BusinessCalendar:
    """Weekly open hours in one time zone, minus holidays.

    ``weekly`` maps a weekday (0 = Monday) to sorted, non-overlapping ``(start, end)``
    local wall times; an end of ``time(0, 0)`` means 24:00. Days missing from the map
    are closed. ``holidays`` are local dates closed all day.

    Returned datetimes are in ``tz``. Compare them after ``.astimezone(UTC)``: Python
    never reports a time in the repeated fall-back hour equal to another zone's time.
    """

    tz: ZoneInfo
    weekly: Mapping[int, tuple[Interval, ...]] = field(hash=False)
    holidays: frozenset[date] = frozenset()
    # _day_intervals by local date: every due time and merge walks the same few days again.
    _days: dict[date, tuple[tuple[datetime, datetime], ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.tz, tzinfo):
            raise InvalidSchedule(f"tz must be a ZoneInfo, got {self.tz!r}")
        weekly: dict[int, tuple[Interval, ...]] = {}
        for day, intervals in self.weekly.items():
            if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= 6:
                raise InvalidSchedule(f"weekday {day!r} must be 0 (Monday) .. 6 (Sunday)")
            checked = _check_intervals(day, intervals)
            if checked:
                weekly[day] = checked
        object.__setattr__(self, "weekly", MappingProxyType(weekly))
        object.__setattr__(self, "holidays", frozenset(_parse_holiday(d) for d in self.holidays))

    @classmethod
    def from_spec(
        cls,
        tz: str,
        hours: Mapping[str, str | list[str]],
        holidays: Iterable[str | date] = (),
    ) -> BusinessCalendar:
        """Build from config, e.g. ``{'mon-fri': ['09:00-13:00', '14:00-18:00'], 'sat': '10:00-14:00'}``.

        Keys are day names, ranges (``mon-fri``) or comma lists (``mon,wed``); a value of
        ``'closed'`` or ``[]`` leaves the day closed.
        """
        return cls(
            tz=_zone(tz),
            weekly=_parse_weekly(hours),
            holidays=frozenset(_parse_holiday(d) for d in holidays),
        )

    @classmethod
    def always_open(cls, tz: str = "UTC") -> BusinessCalendar:
        """A calendar that never defers anything, for round-the-clock desks and tests."""
        return cls.from_spec(tz, {"mon-sun": "00:00-24:00"})

    def _day_intervals(self, day: date) -> tuple[tuple[datetime, datetime], ...]:
        """Open stretches of a local date as UTC instants; empty ones (lost in a DST gap) dropped."""
        known = self._days.get(day)
        if known is not None:
            return known
        result = []
        if day not in self.holidays:
            for start, end in self.weekly.get(day.weekday(), ()):
                start_at = _wall_to_utc(day, start, self.tz)
                if end == END_OF_DAY:
                    end_at = _wall_to_utc(day + _ONE_DAY, END_OF_DAY, self.tz)
                else:
                    end_at = _wall_to_utc(day, end, self.tz)
                if start_at < end_at:
                    result.append((start_at, end_at))
        if len(self._days) >= _DAYS_KEPT:
            self._days.clear()
        found = self._days[day] = tuple(result)
        return found

    def interval_at(self, at: datetime) -> tuple[datetime, datetime] | None:
        """The open stretch ``[start, end)`` containing ``at`` (in ``tz``), or None when closed."""
        _require_aware(at)
        at_utc = at.astimezone(UTC)
        local_day = at_utc.astimezone(self.tz).date()
        # Neighbouring days too: DST shifts can move an interval's edge across local midnight.
        for offset in (-1, 0, 1):
            for start, end in self._day_intervals(local_day + offset * _ONE_DAY):
                if start <= at_utc < end:
                    return start.astimezone(self.tz), end.astimezone(self.tz)
        return None

    def is_open(self, at: datetime) -> bool:
        """Whether an operator should be available at ``at`` (timezone-aware)."""
        return self.interval_at(at) is not None

    def opening_of(self, at: datetime) -> datetime | None:
        """Start of the open stretch containing ``at``, or None when closed."""
        interval = self.interval_at(at)
        return interval[0] if interval else None

    def next_open(self, at: datetime) -> datetime:
        """``at`` itself if open, else the next opening; returned in ``tz``."""
        if self.is_open(at):
            return at.astimezone(self.tz)
        at_utc = at.astimezone(UTC)
        day = at_utc.astimezone(self.tz).date() - _ONE_DAY
        for _ in range(SEARCH_DAYS + 2):
            for start, end in self._day_intervals(day):
                if end > at_utc:
                    return max(start, at_utc).astimezone(self.tz)
            day += _ONE_DAY
        raise InvalidSchedule(f"business hours never open within {SEARCH_DAYS} days after {at.isoformat()}")

    def intervals_between(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """Open stretches overlapping ``[start, end)`` as UTC instants, clipped to it, in order."""
        start_utc, end_utc = start.astimezone(UTC), end.astimezone(UTC)
        day = start_utc.astimezone(self.tz).date() - _ONE_DAY
        last = end_utc.astimezone(self.tz).date() + _ONE_DAY
        found: list[tuple[datetime, datetime]] = []
        while day <= last:
            for lo, hi in self._day_intervals(day):
                lo, hi = max(lo, start_utc), min(hi, end_utc)
                if lo < hi:
                    found.append((lo, hi))
            day += _ONE_DAY
        return _merged(found)


def _merged(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Sorted, with touching or overlapping stretches joined (e.g. across local midnight)."""
    out: list[tuple[datetime, datetime]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _intersect(
    a: list[tuple[datetime, datetime]], b: list[tuple[datetime, datetime]]
) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


class OpenHours(Protocol):
    """What the schedule needs of a calendar: :class:`BusinessCalendar` or :class:`CallingHours`."""

    def interval_at(self, at: datetime) -> tuple[datetime, datetime] | None: ...

    def is_open(self, at: datetime) -> bool: ...

    def next_open(self, at: datetime) -> datetime: ...


DEFAULT_CLIENT_HOURS: Mapping[str, str | list[str]] = {"mon-sun": "09:00-21:00"}


@dataclass(frozen=True)
class ClientWindow:
    """When a client may be called, in the client's own wall-clock time, whatever their zone.

    Telemarketing rules speak of the called party's local daytime, so the same
    window is laid over each zone the client may be in.
    """

    weekly: Mapping[int, tuple[Interval, ...]] = field(hash=False)
    # One calendar per zone, kept: its open stretches by date are kept with it.
    _zones: dict[str, BusinessCalendar] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        # Validation is the calendar's: the same interval rules apply.
        checked = BusinessCalendar(tz=ZoneInfo("UTC"), weekly=self.weekly).weekly
        if not checked:
            raise InvalidSchedule("client hours are closed every day: no client could ever be called")
        object.__setattr__(self, "weekly", checked)

    @classmethod
    def from_spec(cls, hours: Mapping[str, str | list[str]] = DEFAULT_CLIENT_HOURS) -> ClientWindow:
        """Same format as business hours, e.g. ``{'mon-fri': '09:00-21:00', 'sat,sun': '10:00-20:00'}``."""
        return cls(weekly=_parse_weekly(hours))

    def in_zone(self, tz: str) -> BusinessCalendar:
        cal = self._zones.get(tz)
        if cal is None:
            cal = self._zones[tz] = BusinessCalendar(tz=_zone(tz), weekly=self.weekly)
        return cal


@dataclass(frozen=True)
class CallingHours:
    """Open only where every calendar is open: the business and the client in each possible zone.

    A number whose zone is uncertain (a Russian mobile may be anywhere from
    Kaliningrad to Kamchatka) is called only when it is daytime in all of them.
    """

    calendars: tuple[BusinessCalendar, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "calendars", tuple(self.calendars))
        if not self.calendars:
            raise InvalidSchedule("calling hours need at least one calendar")

    @classmethod
    def for_client(
        cls, business: BusinessCalendar, window: ClientWindow, zones: Sequence[str]
    ) -> CallingHours:
        return cls((business, *(window.in_zone(z) for z in dict.fromkeys(zones))))

    @property
    def tz(self) -> ZoneInfo:
        return self.calendars[0].tz

    def intervals_between(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        common = self.calendars[0].intervals_between(start, end)
        for cal in self.calendars[1:]:
            if not common:
                break
            common = _intersect(common, cal.intervals_between(start, end))
        return common

    def interval_at(self, at: datetime) -> tuple[datetime, datetime] | None:
        _require_aware(at)
        at_utc = at.astimezone(UTC)
        for lo, hi in self.intervals_between(at_utc - 2 * _ONE_DAY, at_utc + 2 * _ONE_DAY):
            if lo <= at_utc < hi:
                return lo.astimezone(self.tz), hi.astimezone(self.tz)
        return None

    def is_open(self, at: datetime) -> bool:
        return self.interval_at(at) is not None

    def next_open(self, at: datetime) -> datetime:
        """``at`` itself if open, else the next common opening; :class:`NoCommonHours` if none in a year."""
        _require_aware(at)
        at_utc = at.astimezone(UTC)
        chunk = timedelta(days=14)
        cursor = at_utc
        while cursor < at_utc + timedelta(days=SEARCH_DAYS):
            for lo, hi in self.intervals_between(cursor, cursor + chunk):
                if hi > at_utc:
                    return max(lo, at_utc).astimezone(self.tz)
            cursor += chunk
        zones = ", ".join(str(c.tz) for c in self.calendars[1:])
        raise NoCommonHours(
            f"the client's hours in {zones} never meet the business hours within {SEARCH_DAYS} days"
        )
