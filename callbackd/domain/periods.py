"""Report periods: half-open ``[start, end)`` ranges of aware datetimes in a local time zone.

Days begin at local midnight, so "yesterday" in Moscow and in New York are
different UTC ranges, and a day across a DST change is 23 or 25 hours long.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, tzinfo

PERIODS = ("today", "yesterday", "last_7_days", "last_30_days", "last_week", "last_month")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def midnight(day: date, tz: tzinfo) -> datetime:
    """Local midnight of *day*, as an aware datetime."""
    return datetime.combine(day, time(0), tzinfo=tz)


def parse_bound(text: str, tz: tzinfo) -> datetime:
    """``YYYY-MM-DD`` is local midnight; an ISO datetime without an offset is local time."""
    text = text.strip()
    if _DATE.match(text):
        return midnight(date.fromisoformat(text), tz)
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=tz) if value.tzinfo is None else value


def named_period(name: str, now: datetime, tz: tzinfo) -> tuple[datetime, datetime]:
    """The period *name* (one of :data:`PERIODS`) as seen at *now*; whole local days."""
    today = now.astimezone(tz).date()
    if name == "today":
        first, last = today, today + timedelta(days=1)
    elif name == "yesterday":
        first, last = today - timedelta(days=1), today
    elif name == "last_7_days":
        first, last = today - timedelta(days=7), today
    elif name == "last_30_days":
        first, last = today - timedelta(days=30), today
    elif name == "last_week":  # the previous ISO week, Monday to Monday
        last = today - timedelta(days=today.weekday())
        first = last - timedelta(days=7)
    elif name == "last_month":
        last = today.replace(day=1)
        first = (last - timedelta(days=1)).replace(day=1)
    else:
        raise ValueError(f"unknown period {name!r}; use one of {', '.join(PERIODS)}")
    return midnight(first, tz), midnight(last, tz)


def period_label(start: datetime, end: datetime, tz: tzinfo) -> str:
    """``2026-03-01`` for one whole local day, else ``2026-02-23_2026-03-01`` (last day included)."""
    first = start.astimezone(tz)
    last = (end - timedelta(microseconds=1)).astimezone(tz)
    if first.date() == last.date():
        return first.date().isoformat()
    return f"{first.date().isoformat()}_{last.date().isoformat()}"
