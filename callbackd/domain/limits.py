"""Abuse limits: how many new requests and how many dial attempts we allow per time window.

A number that keeps asking for callbacks, a script that floods the web form, or a bug
that keeps redialling must not turn the PBX into a dialler paid for by the company.
The limits are counted in memory, per daemon: they bound the damage between two
restarts, they are not billing.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["GLOBAL_RATE", "NUMBER_RATE", "AbuseGuard", "AbuseLimits", "RateLimiter"]

NUMBER_RATE = "number_rate_limit"
GLOBAL_RATE = "global_rate_limit"
HOUR = timedelta(hours=1)
# Per-number history is dropped oldest first beyond this many numbers; the global limit
# still holds, so cycling through more numbers than this gains an attacker nothing.
MAX_KEYS = 10_000


class RateLimiter:
    """At most ``limit`` events per key in any sliding ``window``; ``limit`` 0 means no limit.

    Memory stays bounded: each key keeps at most ``limit`` timestamps, keys whose
    events all left the window are dropped, and past ``max_keys`` keys the one used
    least recently is forgotten.
    """

    def __init__(self, limit: int, window: timedelta, *, max_keys: int = MAX_KEYS) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0 (0 means no limit)")
        if window <= timedelta(0):
            raise ValueError("window must be positive")
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: OrderedDict[Hashable, deque[datetime]] = OrderedDict()

    def __len__(self) -> int:
        """Keys tracked now (for tests and metrics)."""
        return len(self._events)

    def _live(self, key: Hashable, now: datetime) -> deque[datetime] | None:
        events = self._events.get(key)
        if events is None:
            return None
        cutoff = now - self.window
        while events and events[0] <= cutoff:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def would_allow(self, key: Hashable, now: datetime) -> bool:
        """True if one more event for ``key`` fits; records nothing."""
        if self.limit == 0:
            return True
        events = self._live(key, now)
        return events is None or len(events) < self.limit

    def remaining(self, key: Hashable, now: datetime) -> int | None:
        """Events ``key`` may still have in the window now; None when unlimited."""
        if self.limit == 0:
            return None
        events = self._live(key, now)
        return self.limit - (len(events) if events else 0)

    def record(self, key: Hashable, now: datetime) -> None:
        """Count one event, whether or not it fitted (the caller already decided)."""
        if self.limit == 0:
            return
        events = self._live(key, now)
        if events is None:
            events = self._events[key] = deque(maxlen=self.limit)
        else:
            self._events.move_to_end(key)
        events.append(now)
        while len(self._events) > self.max_keys:
            self._events.popitem(last=False)

    def forget(self, key: Hashable, at: datetime) -> None:
        """Take back one event counted at *at* (a slot given back because nothing was opened)."""
        events = self._events.get(key)
        if events is None:
            return
        with contextlib.suppress(ValueError):
            events.remove(at)
        if not events:
            del self._events[key]

    def allow(self, key: Hashable, now: datetime) -> bool:
        """Count the event and return True if it fits; refuse it (counting nothing) otherwise."""
        if not self.would_allow(key, now):
            return False
        self.record(key, now)
        return True

    def resize(self, limit: int, window: timedelta) -> None:
        """New limit and window (a config reload), keeping the events counted so far."""
        if limit < 0:
            raise ValueError("limit must be >= 0 (0 means no limit)")
        if window <= timedelta(0):
            raise ValueError("window must be positive")
        self.limit = limit
        self.window = window
        if limit == 0:
            self._events.clear()
            return
        for key, events in self._events.items():
            self._events[key] = deque(events, maxlen=limit)

    def prune(self, now: datetime) -> None:
        """Drop keys with no event left in the window (``allow`` does it for the keys it sees)."""
        for key in list(self._events):
            self._live(key, now)


@dataclass(frozen=True)
class AbuseLimits:
    """The configured limits; 0 turns one off."""

    new_requests_per_number: int = 3
    per_number_window: timedelta = HOUR
    new_requests_global: int = 200
    global_window: timedelta = HOUR
    attempts_per_hour: int = 120


class AbuseGuard:
    """Per-number and global limits on new requests, and the dialer's hourly attempt cap.

    Only a contact that would open a new request is checked: a contact that merges
    into an open request adds no call, so it is never refused here.
    """

    def __init__(self, limits: AbuseLimits | None = None, *, max_keys: int = MAX_KEYS) -> None:
        self.limits = limits or AbuseLimits()
        lim = self.limits
        self.per_number = RateLimiter(lim.new_requests_per_number, lim.per_number_window, max_keys=max_keys)
        self.overall = RateLimiter(lim.new_requests_global, lim.global_window, max_keys=1)
        self.attempts = RateLimiter(lim.attempts_per_hour, HOUR, max_keys=1)

    def reconfigure(self, limits: AbuseLimits) -> None:
        """Apply new limits without forgetting what was counted: a reload must not reset the caps."""
        self.limits = limits
        self.per_number.resize(limits.new_requests_per_number, limits.per_number_window)
        self.overall.resize(limits.new_requests_global, limits.global_window)
        self.attempts.resize(limits.attempts_per_hour, HOUR)

    def new_request_refusal(self, number: str, now: datetime) -> str | None:
        """Why a new request for ``number`` may not be opened now, or None if it may. Records nothing."""
        if not self.per_number.would_allow(number, now):
            return NUMBER_RATE
        if not self.overall.would_allow(None, now):
            return GLOBAL_RATE
        return None

    def new_request_opened(self, number: str, now: datetime) -> None:
        """Count a request that was opened outside :meth:`take` (records, never refuses)."""
        self.per_number.record(number, now)
        self.overall.record(None, now)

    def take(self, number: str, now: datetime) -> str | None:
        """Check and count one new request for ``number`` in one step: the refusal, or None and a slot taken.

        Called before any await, so concurrent contacts cannot all pass the check before
        one of them is counted. A slot not used (the contact merged, was a duplicate or
        was not stored) goes back with :meth:`give_back`.
        """
        refusal = self.new_request_refusal(number, now)
        if refusal is None:
            self.new_request_opened(number, now)
        return refusal

    def give_back(self, number: str, taken_at: datetime) -> None:
        self.per_number.forget(number, taken_at)
        self.overall.forget(None, taken_at)

    def attempts_left(self, now: datetime) -> int | None:
        """Attempts the dialer may still start in the last hour's window; None when uncapped."""
        return self.attempts.remaining(None, now)

    def attempt_started(self, now: datetime) -> None:
        self.attempts.record(None, now)
