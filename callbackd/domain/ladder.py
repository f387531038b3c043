"""When the next callback attempt is due.

The ladder says how long to wait between attempts; the schedule fits that into
business hours and gives up on requests too old to be worth a call.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from types import MappingProxyType
from zoneinfo import ZoneInfo

from callbackd.domain.calendar import BusinessCalendar, CallingHours, ClientWindow, OpenHours, wall_time_in
from callbackd.domain.errors import InvalidSchedule, NoCommonHours
from callbackd.domain.phone import E164, client_zones

__all__ = ["MAX_ATTEMPTS_LIMIT", "Plan", "RetryLadder", "Schedule", "Wait"]

MAX_ATTEMPTS_LIMIT = 10
_ZERO = timedelta(0)

# A busy line is likely free in minutes, congestion is the network's passing trouble; no answer
# and a machine wait for the ladder's next rung. Keys are Outcome values.
DEFAULT_OUTCOME_DELAYS: Mapping[str, timedelta] = MappingProxyType(
    {"client_busy": timedelta(minutes=10), "client_congestion": timedelta(minutes=2)}
)


def _utc(at: datetime, name: str) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{name} is naive: pass a timezone-aware datetime")
    # Arithmetic happens in UTC: adding hours to a local time across DST would be off by one.
    return at.astimezone(UTC)


@dataclass(frozen=True)
class RetryLadder:
    """Waits between attempts, each counted from the previous attempt's start; the last wait repeats.

    Counting from the start rather than the end keeps the rhythm independent of how
    long a call rang or talked. ``outcome_delays`` replaces the rung's wait after the
    outcomes it names (an Outcome value to a delay); others take the rung.
    """

    delays: tuple[timedelta, ...] = (timedelta(hours=1), timedelta(hours=3), timedelta(hours=6))
    max_attempts: int = 5
    outcome_delays: Mapping[str, timedelta] = field(
        default_factory=lambda: DEFAULT_OUTCOME_DELAYS, hash=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "delays", tuple(self.delays))
        object.__setattr__(self, "outcome_delays", MappingProxyType(dict(self.outcome_delays)))
        for name, delay in self.outcome_delays.items():
            if not isinstance(delay, timedelta) or delay <= _ZERO:
                raise InvalidSchedule(f"delay after {name} {delay!r} must be a positive timedelta")
        if not self.delays:
            raise InvalidSchedule("retry delays must not be empty")
        for delay in self.delays:
            if not isinstance(delay, timedelta) or delay <= _ZERO:
                raise InvalidSchedule(f"retry delay {delay!r} must be a positive timedelta")
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise InvalidSchedule(f"max_attempts must be an integer, got {attempts!r}")
        if not 1 <= attempts <= MAX_ATTEMPTS_LIMIT:
            raise InvalidSchedule(f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {attempts}")

    def delay_after(self, attempts_made: int) -> timedelta:
        """The wait after the ``attempts_made``-th attempt (1-based)."""
        if attempts_made < 1:
            raise ValueError("delay_after needs at least one attempt made")
        return self.delays[min(attempts_made - 1, len(self.delays) - 1)]

    def next_due(
        self,
        attempts_made: int,
        last_attempt_at: datetime | None,
        created_at: datetime,
        outcome: str | None = None,
    ) -> datetime | None:
        """When the next attempt may start (UTC), ignoring business hours; None when attempts are used up.

        ``outcome`` is how the last attempt ended (an Outcome value), for ``outcome_delays``.
        """
        if attempts_made < 0:
            raise ValueError(f"attempts_made must be >= 0, got {attempts_made}")
        if attempts_made >= self.max_attempts:
            return None
        if attempts_made == 0:
            return _utc(created_at, "created_at")
        if last_attempt_at is None:
            raise ValueError(f"{attempts_made} attempts made but no last_attempt_at")
        delay = self.outcome_delays.get(outcome or "") or self.delay_after(attempts_made)
        return _utc(last_attempt_at, "last_attempt_at") + delay


def _spread_offset(key: str, span: timedelta) -> timedelta:
    """A stable per-key offset in ``[0, span)``; crc32 because ``hash()`` changes between processes."""
    seconds = int(span.total_seconds())
    if seconds <= 0:
        return _ZERO
    return timedelta(seconds=zlib.crc32(key.encode("utf-8", "surrogatepass")) % seconds)


class Wait(StrEnum):
    """Why a request is not due sooner; shown by ``requests show`` and logged."""

    LADDER = "ladder"  # the retry ladder's wait since the last try
    OUTCOME_DELAY = "outcome_delay"  # the short wait after a busy line or congestion
    CHOSEN_TIME = "chosen_time"  # the client asked to be called at this time
    BUSINESS_HOURS = "business_hours"  # the office is closed
    CLIENT_HOURS = "client_hours"  # the office is open but it is night (or a day off) for the client


@dataclass(frozen=True)
class Plan:
    """The next step for a request: when (UTC) and why then, or why never (``close_reason``)."""

    due: datetime | None
    wait: Wait | None = None
    close_reason: str | None = None  # max_attempts, max_age or no_common_hours


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """The retry ladder fitted into business hours and the client's local hours, with an age limit.

    ``client_window`` None means only the business's clock counts (the behaviour
    before client zones existed).
    """

    calendar: BusinessCalendar
    ladder: RetryLadder = field(default_factory=RetryLadder)
    max_age: timedelta = timedelta(days=3)
    opening_spread: timedelta = timedelta(minutes=5)
    client_window: ClientWindow | None = None
    # Per-queue ladders (delays, max_attempts, outcome delays) replacing ``ladder`` for that queue.
    queue_ladders: Mapping[str, RetryLadder] = field(default_factory=dict, hash=False)
    # Per-queue business hours (a sales line open on Saturdays) replacing ``calendar`` for that queue.
    queue_calendars: Mapping[str, BusinessCalendar] = field(default_factory=dict, hash=False)
    # Configured number ranges to zones, for numbers phonenumbers places in several zones.
    zone_prefixes: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.max_age <= _ZERO:
            raise InvalidSchedule(f"max_age must be positive, got {self.max_age}")
        if self.opening_spread < _ZERO:
            raise InvalidSchedule(f"opening_spread must not be negative, got {self.opening_spread}")

    def is_expired(self, created_at: datetime, now: datetime) -> bool:
        """Whether a request is too old to call back at ``now``."""
        return _utc(now, "now") > _utc(created_at, "created_at") + self.max_age

    def chosen_instant(self, wall: datetime, client_zones: Sequence[str] = ()) -> datetime:
        """A keyed-in local time in the client's zone; with several possible zones, the business's."""
        zone = client_zones[0] if len(client_zones) == 1 else str(self.calendar.tz)
        return wall_time_in(wall, zone)

    def next_chosen(self, wall: time, now: datetime, client_zones: Sequence[str] = ()) -> datetime:
        """The next time the client's clock shows ``wall`` (today or tomorrow): "call me at 15:30"."""
        zone = client_zones[0] if len(client_zones) == 1 else str(self.calendar.tz)
        local_now = _utc(now, "now").astimezone(ZoneInfo(zone))
        for days in (0, 1, 2):
            at = wall_time_in(datetime.combine(local_now.date() + timedelta(days=days), wall), zone)
            if at >= _utc(now, "now"):
                return at
        raise AssertionError("a wall time recurs within two days")  # pragma: no cover

    def ladder_for(self, queue: str | None = None) -> RetryLadder:
        return self.queue_ladders.get(queue or "", self.ladder)

    def calendar_for(self, queue: str | None = None) -> BusinessCalendar:
        return self.queue_calendars.get(queue or "", self.calendar)

    def open_for_any(self, at: datetime) -> bool:
        """Whether some queue (or the business as a whole) is open at ``at``: the dialer's gate."""
        return self.calendar.is_open(at) or any(c.is_open(at) for c in self.queue_calendars.values())

    def zones_for(self, number: E164, given: str | None = None) -> tuple[str, ...]:
        """The client's possible zones: the form's, a configured range's, or the numbering plan's."""
        return client_zones(number, given, self.zone_prefixes)

    def hours_for(self, client_zones: Sequence[str] = (), queue: str | None = None) -> OpenHours:
        """When a client in ``client_zones`` may be called: business (or the queue's) hours,
        narrowed by the client window."""
        calendar = self.calendar_for(queue)
        if self.client_window is None or not client_zones:
            return calendar
        return CallingHours.for_client(calendar, self.client_window, client_zones)

    def next_callable(self, at: datetime, client_zones: Sequence[str] = (), queue: str | None = None) -> Plan:
        """The first instant from ``at`` inside business and client hours, with no ladder or spread.

        For waits that are not a new try: an operator round that found nobody, a request
        that became due while the client's evening ended.
        """
        at = _utc(at, "at")
        try:
            opened = self.hours_for(client_zones, queue).next_open(at).astimezone(UTC)
        except NoCommonHours:
            return Plan(None, close_reason=NoCommonHours.reason)
        if opened == at:
            return Plan(opened, Wait.LADDER)
        business = self.calendar_for(queue).next_open(at).astimezone(UTC)
        return Plan(opened, Wait.BUSINESS_HOURS if business == opened else Wait.CLIENT_HOURS)

    def due_at(
        self,
        attempts_made: int,
        last_attempt_at: datetime | None,
        created_at: datetime,
        preferred_at: datetime | None = None,
        spread_key: str = "",
        client_zones: Sequence[str] = (),
        outcome: str | None = None,
        queue: str | None = None,
    ) -> datetime | None:
        """When the next attempt should start (UTC), always inside business and client hours.

        None means stop: attempts used up, the next slot would be past ``max_age``, or
        the client's hours never meet the business's (see :meth:`plan` for which).
        """
        return self.plan(
            attempts_made, last_attempt_at, created_at, preferred_at, spread_key, client_zones, outcome, queue
        ).due

    def plan(
        self,
        attempts_made: int,
        last_attempt_at: datetime | None,
        created_at: datetime,
        preferred_at: datetime | None = None,
        spread_key: str = "",
        client_zones: Sequence[str] = (),
        outcome: str | None = None,
        queue: str | None = None,
    ) -> Plan:
        """The next attempt's time and why it is then.

        A slot deferred to an opening is offset by up to ``opening_spread`` per
        ``spread_key``, so a night's backlog does not ring every operator at 09:00 sharp;
        the spread stays inside the common open stretch, so it never leaves client hours.
        """
        ladder = self.ladder_for(queue)
        raw = ladder.next_due(attempts_made, last_attempt_at, created_at, outcome)
        if raw is None:
            return Plan(None, close_reason="max_attempts")
        wait = (
            Wait.OUTCOME_DELAY if attempts_made and (outcome or "") in ladder.outcome_delays else Wait.LADDER
        )
        if preferred_at is not None and attempts_made == 0 and _utc(preferred_at, "preferred_at") > raw:
            raw = _utc(preferred_at, "preferred_at")
            wait = Wait.CHOSEN_TIME
        hours = self.hours_for(client_zones, queue)
        try:
            opened = hours.next_open(raw).astimezone(UTC)
        except NoCommonHours:
            return Plan(None, close_reason=NoCommonHours.reason)
        due = opened
        if opened != raw:
            business_opened = self.calendar_for(queue).next_open(raw).astimezone(UTC)
            wait = Wait.BUSINESS_HOURS if business_opened == opened else Wait.CLIENT_HOURS
            interval = hours.interval_at(opened)
            if interval is not None:
                # Subtract in UTC: two datetimes sharing a ZoneInfo subtract as wall times.
                length = interval[1].astimezone(UTC) - interval[0].astimezone(UTC)
                due = opened + _spread_offset(spread_key, min(self.opening_spread, length))
        if due > _utc(created_at, "created_at") + self.max_age:
            return Plan(None, wait, close_reason="max_age")
        return Plan(due, wait)

    def merged_due(
        self,
        due_at: datetime | None,
        contact_at: datetime,
        preferred_at: datetime | None = None,
        spread_key: str = "",
        client_zones: Sequence[str] = (),
        *,
        kept_choice: bool = False,
        new_choice: bool = False,
        queue: str | None = None,
    ) -> datetime | None:
        """The due time of an open request once a new contact merges into it.

        The earliest need wins: a missed call merging into a web lead asked for six days
        ahead is called back as soon as a fresh contact would be, never later than before.
        Unless the client chose a time ("call me at 15:00", from the phone or an operator):
        a new choice replaces the due time, and a standing one is kept.
        """
        chose_now = new_choice and preferred_at is not None
        if kept_choice and not chose_now:
            return due_at
        fresh = self.due_at(
            0,
            None,
            contact_at,
            preferred_at=preferred_at,
            spread_key=spread_key,
            client_zones=client_zones,
            queue=queue,
        )
        if fresh is None:
            return due_at
        if chose_now or due_at is None:
            return fresh
        return min(due_at, fresh)
