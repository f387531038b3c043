"""What-if replay of a stored period: the queue with impatient callers, plus the callbacks.

Why a discrete-event simulation rather than Erlang-A alone: Erlang-A (M/M/c+M) answers the steady
state of a queue whose callers hang up, but a business day is not steady (an arrival curve, opening
hours), and callbacks are a second stream, delayed by the ladder, held back while live callers wait,
fitted into business hours and a client window, that competes for the same operators. No closed form
covers that; a simulation replays the period's own arrivals through the real rules (the
:class:`~callbackd.domain.ladder.Schedule` the daemon uses) and is checked against Erlang-A where the
two meet (Poisson arrivals, no callbacks: tests/unit/test_simulation.py). It is plain Python with a
seeded :class:`random.Random` and a heap: a few thousand calls a day need no simulation framework, and
the whole model stays in one readable file with no dependency.

The model, per run:

- queued calls arrive at their stored times and wait FIFO for one of ``operators`` identical
  operators. A caller who hung up in the data keeps their observed patience; one who was answered
  waited at least their observed wait, and their remaining patience is drawn from the fitted
  exponential (memoryless, so ``wait + Exp(theta)``). Talk times are the stored ones, or drawn
  from them for callers the data never shows answered. Calls outside a queue keep their stored fate.
- a missed call that waited at least ``short_abandon`` and has a number becomes a callback request
  (one open request per number; later misses merge), as does each web lead.
- ``breaks`` take one operator each away for their span (an operator on a call finishes it first):
  the period's rota, which the database does not hold, so the admin states it (``--breaks``).
- a free operator takes a waiting caller first; only with nobody waiting does it take a due request
  (as the daemon does), inside business hours and the client window. Try k of a request goes as
  the client's stored try k went when the period made it (``Behaviour.clients``: the data's own
  clients are kept, as its hung-up callers keep their patience); else it reaches the client with
  the fitted probability ``reach[k]``. The operator is busy for a drawn callback length (answered)
  or the fitted ring time (not). An unanswered try ends as it did (busy, no answer, ...) or, drawn,
  as a stored one did, and later tries follow the ladder with its outcome delays; a request with
  no next slot is lost.
- a later answered call from the number, or an answered callback, reaches the client: a lost call
  is *net lost* when nothing reached its number after it started (the report's definition).

Figures are over the period (calls offered in it; operator time and callbacks inside it), and the
callbacks of calls lost near its end run on until the figures are read (``Scenario.horizon``: for a
period just past, callbacks still to come are not counted, as in the report), at most ``max_age``.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo

from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.ladder import Schedule


@dataclass(frozen=True)
class SimCall:
    at: float  # seconds from the start of the period
    number: str | None
    queued: bool  # waited in a queue: simulated; else its stored fate is kept
    patience: float | None = None  # queued and hung up: the observed wait; None: drawn beyond ``waited``
    waited: float = 0.0  # queued and answered: the observed wait (patience is at least this)
    talk: float | None = None  # stored talk time when answered; None: drawn
    answered: bool = False  # not queued: the stored outcome
    length: float = 0.0  # not queued and missed: seconds to the hang-up (its wait)


@dataclass(frozen=True)
class SimLead:
    at: float
    number: str


@dataclass(frozen=True)
class Behaviour:
    """The clients' and operators' behaviour, fitted from a stored period (see :func:`fit`)."""

    abandon_rate: float  # theta per second: exponential patience beyond what was observed
    talk: tuple[float, ...]  # talk times of answered calls, drawn with replacement
    reach: tuple[float, ...]  # P(client answers try k | try k made), k = 1, 2, ...; the last repeats
    callback_busy: tuple[float, ...]  # operator-busy seconds of answered callbacks
    miss_busy: float  # operator-busy seconds of an unanswered try
    answer_delay: float = 0.0  # seconds an operator's phone rings before a queued caller is connected
    # How unanswered tries ended (client_busy, client_no_answer, ...), drawn with replacement: the
    # ladder waits its ``outcome_delays`` after some (10 minutes after a busy line by default).
    miss_outcomes: tuple[str, ...] = ()
    # Per number, the stored requests' counted tries in order, each "answered" or how it ended: a
    # client's own tries are replayed as they went, and only tries the period did not make are drawn
    # from ``reach`` (as a hung-up caller keeps the patience seen). Empty: every try is drawn.
    clients: Mapping[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict, hash=False)

    def reach_on(self, try_no: int) -> float:
        return self.reach[min(try_no, len(self.reach)) - 1]

    def stored_tries(self, number: str, nth: int) -> tuple[str, ...]:
        """The outcomes of the number's ``nth`` stored request's tries (0: its first request)."""
        requests = self.clients.get(number, ())
        return requests[nth] if nth < len(requests) else ()


@dataclass(frozen=True)
class Scenario:
    operators: int
    schedule: Schedule  # ladder, business hours (when callbacks are dialled and operators count), max age
    epoch: datetime  # the instant of second 0
    period: float  # seconds: the offered calls' period
    dialer: bool = True
    client_window: BusinessCalendar | None = None  # when clients may be called, on top of business hours
    short_abandon: float = 5.0
    # Seconds from the epoch at which the figures are read, as a report reads the database "as it
    # stands": callbacks after it have not happened yet. None: the period plus ``max_age``.
    horizon: float | None = None
    # (from, until) seconds from the epoch: one operator away each; overlapping breaks add up.
    breaks: tuple[tuple[float, float], ...] = ()

    def staffed_seconds(self) -> float:
        """Operator-seconds on duty inside business hours over the period (occupancy's base)."""
        cal, epoch = self.schedule.calendar, self.epoch
        total = self.operators * open_seconds(cal, epoch, epoch + timedelta(seconds=self.period))
        for a, b in self.breaks:
            a, b = max(a, 0.0), min(b, self.period)
            if b > a:
                total -= open_seconds(cal, epoch + timedelta(seconds=a), epoch + timedelta(seconds=b))
        return max(total, 0.0)


@dataclass(frozen=True)
class RunResult:
    offered: int
    short: int
    abandoned: int
    net_lost: int
    requests: int
    attempts: int  # callback tries made (all, also after the period)
    attempts_in_period: int
    reached_by_callback: int
    recovered_by_call: int
    first_attempt: tuple[float, ...]  # seconds from request to first try
    busy_in_period: float  # operator-seconds inside the period's business hours
    open_seconds: float  # business-hours seconds in the period
    staffed_seconds: float = 0.0  # operator-seconds on duty in those hours (0: operators x open)
    delayed: int = 0  # queued callers who found every operator busy
    queue_wait: float = 0.0  # seconds queued callers waited, answered or not

    @property
    def counted(self) -> int:
        return self.offered - self.short

    @property
    def car(self) -> float | None:
        return self.abandoned / self.counted if self.counted else None

    @property
    def net_lost_rate(self) -> float | None:
        return self.net_lost / self.counted if self.counted else None

    def occupancy(self, operators: int) -> float | None:
        staffed = self.staffed_seconds or operators * self.open_seconds
        return self.busy_in_period / staffed if staffed else None

    @property
    def callbacks_per_hour(self) -> float | None:
        return self.attempts_in_period / (self.open_seconds / 3600) if self.open_seconds else None

    @property
    def first_attempt_median(self) -> float | None:
        return statistics.median(self.first_attempt) if self.first_attempt else None


@dataclass
class _Request:
    number: str
    created: float
    attempts: int = 0
    last: float | None = None
    closed: bool = False
    outcome: str | None = None  # how the last try ended, for the ladder's outcome delays
    stored: tuple[str, ...] = ()  # how the client's stored tries went (Behaviour.clients)
    seq: int = 0  # the order it was made in: due at the same moment, the older goes first


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    kind: str = field(compare=False)
    ref: object = field(compare=False, default=None)


def open_seconds(calendar: BusinessCalendar, start: datetime, end: datetime) -> float:
    """Seconds of ``[start, end)`` inside business hours."""
    total = 0.0
    at = start.astimezone(UTC)
    end = end.astimezone(UTC)
    while at < end:
        interval = calendar.interval_at(at)
        if interval is None:
            at = calendar.next_open(at).astimezone(UTC)
            continue
        stop = min(interval[1].astimezone(UTC), end)
        total += (stop - at).total_seconds()
        at = stop
    return total


class _Run:
    def __init__(
        self,
        calls: Sequence[SimCall],
        leads: Sequence[SimLead],
        b: Behaviour,
        s: Scenario,
        rng: random.Random,
    ) -> None:
        self.calls, self.leads, self.b, self.s, self.rng = calls, leads, b, s, rng
        self.heap: list[_Event] = []
        self.seq = 0
        self.free = s.operators
        self.waiting: deque[int] = deque()
        self.gone: set[int] = set()  # queued callers who hung up or were answered
        self.due: list[tuple[float, int, _Request]] = []
        self.open: dict[str, _Request] = {}
        self.made: dict[str, int] = {}  # requests made per number so far
        self.reached_at: dict[str, list[float]] = {}
        self.requests = 0
        self.attempts = 0
        self.attempts_in_period = 0
        self.by_callback = 0
        self.by_call = 0
        self.first: list[float] = []
        self.busy = 0.0
        self.lost: list[tuple[float, str | None]] = []  # counted abandoned calls: start, number
        self.short = 0
        self.delayed = 0
        self.queue_wait = 0.0
        self.patience: dict[int, float] = {}
        self.leaving: list[float] = []  # breaks begun while their operator was still on a call
        self.late = 0.0  # break seconds spent finishing those calls (business hours, in the period)
        self._open_from = 0.0
        self._open_until: float | None = None

    # -- time ----------------------------------------------------------------------------

    def _dt(self, t: float) -> datetime:
        return self.s.epoch + timedelta(seconds=t)

    def _t(self, at: datetime) -> float:
        return (at - self.s.epoch).total_seconds()

    def push(self, at: float, kind: str, ref: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, _Event(at, self.seq, kind, ref))

    def _slot(self, t: float) -> float:
        """The first instant at or after t inside business hours and the client window."""
        cal, window = self.s.schedule.calendar, self.s.client_window
        at = self._dt(t)
        for _ in range(100):
            opened = cal.next_open(at)
            if window is None:
                return self._t(opened)
            both = window.next_open(opened)
            if both == opened or cal.is_open(both):
                return self._t(both)
            at = both
        raise ValueError("business hours and the client window never overlap")

    def _busy(self, start: float, length: float) -> None:
        """Operator time inside the period, counted during business hours only."""
        end = min(start + length, self.s.period)
        if end <= start:
            return
        if self._open_until is not None and self._open_from <= start and end <= self._open_until:
            self.busy += end - start  # inside the open stretch seen last: no calendar look-up
            return
        at = self._dt(start)
        interval = self.s.schedule.calendar.interval_at(at)
        if interval is not None:
            self._open_from = self._t(interval[0])
            self._open_until = self._t(interval[1])
        self.busy += open_seconds(self.s.schedule.calendar, at, self._dt(end))

    # -- requests --------------------------------------------------------------------------

    def request(self, number: str | None, now: float) -> None:
        if number is None:
            return
        if number in self.open:
            return  # merged into the open request
        nth = self.made.get(number, 0)
        self.made[number] = nth + 1
        req = _Request(number, now, stored=self.b.stored_tries(number, nth), seq=self.requests)
        self.open[number] = req
        self.requests += 1
        if self.s.dialer:
            self._schedule(req)

    def _schedule(self, req: _Request) -> None:
        last = self._dt(req.last) if req.last is not None else None
        due = self.s.schedule.due_at(
            req.attempts, last, self._dt(req.created), spread_key=req.number, outcome=req.outcome
        )
        if due is None:
            self._close(req)
            return
        t = self._slot(self._t(due))
        heapq.heappush(self.due, (t, req.seq, req))
        self.push(t, "due")

    def _close(self, req: _Request) -> None:
        req.closed = True
        if self.open.get(req.number) is req:
            del self.open[req.number]

    def _reached(self, number: str | None, at: float) -> None:
        if number is not None:
            self.reached_at.setdefault(number, []).append(at)

    # -- events ----------------------------------------------------------------------------

    def run(self) -> RunResult:
        for i, c in enumerate(self.calls):
            self.push(c.at, "arrive", i)
        for lead in self.leads:
            self.push(lead.at, "lead", lead)
        for start, end in self.s.breaks:
            self.push(start, "away", -1)
            self.push(end, "away", +1)
        horizon = self.s.horizon
        if horizon is None:
            horizon = self.s.period + self.s.schedule.max_age.total_seconds()
        while self.heap:
            ev = heapq.heappop(self.heap)
            if ev.at > horizon:
                break
            getattr(self, f"_on_{ev.kind}")(ev.at, ev.ref)
            self.dispatch(ev.at)
        return self._result()

    def _on_arrive(self, now: float, i: int) -> None:
        c = self.calls[i]
        if c.queued:
            if self.free == 0 or self.waiting:
                self.delayed += 1
            self.waiting.append(i)
            patience = c.patience
            if patience is None:
                patience = c.waited + self.rng.expovariate(self.b.abandon_rate)
            self.patience[i] = patience
            self.push(now + patience, "abandon", i)
        elif c.answered:
            self._reached(c.number, now)
            req = self.open.get(c.number) if c.number else None
            if req is not None:
                self.by_call += 1
                self._close(req)
        else:
            self.push(now + c.length, "missed", i)

    def _on_abandon(self, now: float, i: int) -> None:
        if i in self.gone:
            return
        self.gone.add(i)
        self.waiting.remove(i)
        self.queue_wait += self.patience[i]
        self._miss(self.calls[i], self.patience[i], now)  # the drawn patience: no rounding at the edge

    def _on_missed(self, now: float, i: int) -> None:
        c = self.calls[i]
        self._miss(c, c.length, now)

    def _miss(self, c: SimCall, wait: float, now: float) -> None:
        if wait < self.s.short_abandon:
            self.short += 1
            return
        self.lost.append((c.at, c.number))
        self.request(c.number, now)

    def _on_lead(self, now: float, lead: SimLead) -> None:
        self.request(lead.number, now)

    def _on_free(self, now: float, _: object) -> None:
        if self.free < 0 and self.leaving:  # the one going on a break: it leaves only now
            self._on_duty(self.leaving.pop(0), now)
        self.free += 1

    def _on_away(self, now: float, change: int) -> None:
        """A break starts (-1) or ends (+1). Below zero free: the one going away is on a call and
        leaves when it ends (that call's own "free" brings the count back to zero)."""
        if change > 0 and self.leaving:  # the break ended before its operator's call did
            self._on_duty(self.leaving.pop(0), now)
        self.free += change
        if change < 0 and self.free < 0:
            self.leaving.append(now)

    def _on_duty(self, start: float, end: float) -> None:
        """Break time spent finishing a call: on duty after all, for occupancy's base."""
        end = min(end, self.s.period)
        if end > start:
            cal = self.s.schedule.calendar
            self.late += open_seconds(cal, self._dt(start), self._dt(end))

    def _on_due(self, now: float, _: object) -> None:
        pass  # dispatch runs after every event

    def dispatch(self, now: float) -> None:
        while self.free > 0:
            if self.waiting:
                self._answer(self.waiting.popleft(), now)
            elif not self._callback(now):
                return

    def _answer(self, i: int, now: float) -> None:
        """The operator's phone rings ``answer_delay``; a caller whose patience ends first is lost."""
        c = self.calls[i]
        self.gone.add(i)
        self.free -= 1
        pick_up = now + self.b.answer_delay
        if c.at + self.patience[i] < pick_up:
            gave_up = c.at + self.patience[i]
            self.queue_wait += self.patience[i]
            self.push(gave_up, "free")
            self._busy(now, gave_up - now)
            self._miss(c, self.patience[i], gave_up)
            return
        self.queue_wait += pick_up - c.at
        talk = c.talk if c.talk is not None else self.rng.choice(self.b.talk)
        self.push(pick_up + talk, "free")
        self._busy(now, pick_up + talk - now)
        self._reached(c.number, pick_up)
        req = self.open.get(c.number) if c.number else None
        if req is not None:
            self.by_call += 1
            self._close(req)

    def _callback(self, now: float) -> bool:
        """Start the earliest due request's next try; False when none is due now."""
        while self.due and self.due[0][0] <= now:
            _, _, req = self.due[0]
            if req.closed:
                heapq.heappop(self.due)
                continue
            slot = self._slot(now)
            if slot > now:  # waited for an operator past closing: the next opening
                heapq.heapreplace(self.due, (slot, req.seq, req))
                self.push(slot, "due")
                continue
            heapq.heappop(self.due)
            self._attempt(req, now)
            return True
        return False

    def _attempt(self, req: _Request, now: float) -> None:
        if req.attempts == 0:
            self.first.append(now - req.created)
        req.attempts += 1
        req.last = now
        self.attempts += 1
        if now < self.s.period:
            self.attempts_in_period += 1
        if req.attempts <= len(req.stored):  # this try was made in the period: as it went
            outcome: str | None = req.stored[req.attempts - 1]
            reached = outcome == "answered"
        else:
            reached = self.rng.random() < self.b.reach_on(req.attempts)
            outcome = None if reached or not self.b.miss_outcomes else self.rng.choice(self.b.miss_outcomes)
        length = self.rng.choice(self.b.callback_busy) if reached else self.b.miss_busy
        self.free -= 1
        self.push(now + length, "free")
        self._busy(now, length)
        if reached:
            self.by_callback += 1
            self._reached(req.number, now)
            self._close(req)
        else:
            req.outcome = outcome
            self._schedule(req)

    def _result(self) -> RunResult:
        net_lost = 0
        for start, number in self.lost:
            times = self.reached_at.get(number) if number else None
            if not times or max(times) <= start:
                net_lost += 1
        return RunResult(
            offered=len(self.calls),
            short=self.short,
            abandoned=len(self.lost),
            net_lost=net_lost,
            requests=self.requests,
            attempts=self.attempts,
            attempts_in_period=self.attempts_in_period,
            reached_by_callback=self.by_callback,
            recovered_by_call=self.by_call,
            first_attempt=tuple(self.first),
            busy_in_period=self.busy,
            delayed=self.delayed,
            queue_wait=self.queue_wait,
            open_seconds=open_seconds(
                self.s.schedule.calendar, self.s.epoch, self.s.epoch + timedelta(seconds=self.s.period)
            ),
            staffed_seconds=self.s.staffed_seconds() + self.late,
        )


def daily_breaks(
    spans: Sequence[tuple[time, time]], tz: tzinfo, epoch: datetime, period: float
) -> tuple[tuple[float, float], ...]:
    """Each (start, end) wall-clock span, in ``tz``, on every day the period touches, as seconds
    from the epoch (a span ending at or before its start runs past midnight)."""
    out = []
    end = epoch + timedelta(seconds=period)
    day = epoch.astimezone(tz).date() - timedelta(days=1)
    while datetime.combine(day, time(0), tz) < end:
        for a, b in spans:
            start = datetime.combine(day, a, tz)
            stop = datetime.combine(day + timedelta(days=1) if b <= a else day, b, tz)
            lo, hi = (start - epoch).total_seconds(), (stop - epoch).total_seconds()
            if hi > 0 and lo < period:
                out.append((lo, hi))
        day += timedelta(days=1)
    return tuple(sorted(out))


def simulate(
    calls: Sequence[SimCall], leads: Sequence[SimLead], behaviour: Behaviour, scenario: Scenario, seed: int
) -> RunResult:
    """One run; the same seed gives the same result."""
    if scenario.operators < 1:
        raise ValueError("at least one operator")
    if any(b <= a for a, b in scenario.breaks):
        raise ValueError("a break must end after it starts")
    ordered = sorted(calls, key=lambda c: c.at)
    return _Run(ordered, leads, behaviour, scenario, random.Random(seed)).run()


# -- repeated runs ------------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    """Mean over the runs and the 5th to 95th percentile (nearest rank)."""

    mean: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Band:
        xs = sorted(v for v in values if v is not None)
        if not xs:
            return cls(None, None, None)

        def rank(q: float) -> float:
            return xs[max(math.ceil(q * len(xs)) - 1, 0)]

        return cls(statistics.fmean(xs), rank(0.05), rank(0.95))


@dataclass(frozen=True)
class Prediction:
    runs: int
    car: Band
    net_lost_rate: Band
    callbacks_per_hour: Band
    occupancy: Band
    first_attempt_median: Band
    reached_by_callback: Band
    recovered_by_call: Band


def predict(
    calls: Sequence[SimCall],
    leads: Sequence[SimLead],
    behaviour: Behaviour,
    scenario: Scenario,
    *,
    runs: int = 20,
    seed: int = 1,
) -> Prediction:
    """``runs`` runs seeded ``seed``, ``seed + 1``, ...: the spread is the model's own randomness."""
    results = [simulate(calls, leads, behaviour, scenario, seed + i) for i in range(runs)]
    return Prediction(
        runs=runs,
        car=Band.of([r.car for r in results]),
        net_lost_rate=Band.of([r.net_lost_rate for r in results]),
        callbacks_per_hour=Band.of([r.callbacks_per_hour for r in results]),
        occupancy=Band.of([r.occupancy(scenario.operators) for r in results]),
        first_attempt_median=Band.of([r.first_attempt_median for r in results]),
        reached_by_callback=Band.of([r.reached_by_callback for r in results]),
        recovered_by_call=Band.of([r.recovered_by_call for r in results]),
    )


# -- fitting a stored period --------------------------------------------------------------


@dataclass(frozen=True)
class StoredCall:
    started_at: datetime
    number: str | None
    queue: str | None
    answered_at: datetime | None
    ended_at: datetime | None
    hold_time: int | None
    outcome: str
    joined_at: datetime | None = None  # entered the queue (the wait counts from here)
    agent: str | None = None  # the operator who answered (the pool's identity)


@dataclass(frozen=True)
class StoredAttempt:
    request_id: int
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None
    counted: bool
    operator: str | None = None
    number: str | None = None  # the request's


DEFAULT_REACH = 0.5  # when the period holds no callback tries at all
MIN_TRIES = 3  # fewer tries of a rank than this: pooled with the later ranks


def _wait(c: StoredCall) -> float:
    """Seconds queued: from the join to the answer or the hang-up when both are stored (Asterisk's
    HoldTime is whole seconds, cut down), else HoldTime, else from the call's start."""
    end = c.answered_at if c.outcome == "answered" else c.ended_at
    if c.joined_at is not None and end is not None:
        return max((end - c.joined_at).total_seconds(), 0.0)
    if c.hold_time is not None:
        return float(c.hold_time)
    end = c.answered_at or c.ended_at
    return (end - c.started_at).total_seconds() if end else 0.0


def to_sim_calls(calls: Sequence[StoredCall], start: datetime) -> list[SimCall]:
    out = []
    for c in calls:
        at = ((c.joined_at if c.queue is not None and c.joined_at else c.started_at) - start).total_seconds()
        answered = c.outcome == "answered"
        talk = (
            (c.ended_at - c.answered_at).total_seconds()
            if answered and c.ended_at and c.answered_at
            else None
        )
        if c.queue is not None:
            wait = _wait(c)
            out.append(
                SimCall(at, c.number, True, patience=None if answered else wait, waited=wait, talk=talk)
            )
        else:
            out.append(SimCall(at, c.number, False, answered=answered, length=_wait(c), talk=talk))
    return out


def fit_reach(attempts: Sequence[StoredAttempt]) -> tuple[float, ...]:
    """P(answered on try k | try k made), from counted tries in start order per request.

    A rank with fewer than :data:`MIN_TRIES` tries is pooled with every later rank, so a
    handful of fifth tries does not make a 0 % or 100 % step.
    """
    by_request: dict[int, list[StoredAttempt]] = {}
    for a in attempts:
        if a.counted:
            by_request.setdefault(a.request_id, []).append(a)
    made: list[int] = []
    answered: list[int] = []
    for tries in by_request.values():
        for k, a in enumerate(sorted(tries, key=lambda a: a.started_at)):
            if k == len(made):
                made.append(0)
                answered.append(0)
            made[k] += 1
            answered[k] += a.outcome == "answered"
    if not made:
        return (DEFAULT_REACH,)
    reach: list[float] = []
    for k in range(len(made)):
        n, r = made[k], answered[k]
        if n < MIN_TRIES:
            n, r = sum(made[k:]), sum(answered[k:])
        if n < MIN_TRIES and reach:
            reach.append(reach[-1])
        else:
            reach.append(r / n)
    return tuple(reach)


def fit_clients(attempts: Sequence[StoredAttempt]) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Per number, its requests' counted tries in order (requests by id, tries by start): how each
    went, up to the first one still without an outcome (in progress when the period was read)."""
    by_request: dict[tuple[int, str], list[StoredAttempt]] = {}
    for a in attempts:
        if a.counted and a.number is not None:
            by_request.setdefault((a.request_id, a.number), []).append(a)
    clients: dict[str, list[tuple[str, ...]]] = {}
    for (_, number), tries in sorted(by_request.items()):
        outcomes: list[str] = []
        for a in sorted(tries, key=lambda a: a.started_at):
            if a.outcome is None:
                break
            outcomes.append(a.outcome)
        clients.setdefault(number, []).append(tuple(outcomes))
    return {number: tuple(requests) for number, requests in clients.items()}


def fit_answer_delay(queued: Sequence[StoredCall], attempts: Sequence[StoredAttempt]) -> float:
    """Seconds from "a caller waits and an operator is free" to the two talking, on average: the
    operator's ring, and the queue's own pause before it rings a member who just came free (its
    ``retry``, device state news). Per answered call: its answer less the later of its join and the
    end of the answering operator's previous call or callback. Without joins and operators stored:
    the quickest answer any queued caller got."""
    busy: dict[str, list[tuple[datetime, datetime]]] = {}
    for c in queued:
        if c.outcome == "answered" and c.agent and c.answered_at and c.ended_at:
            busy.setdefault(c.agent, []).append((c.answered_at, c.ended_at))
    for a in attempts:
        if a.operator and a.ended_at:
            busy.setdefault(a.operator, []).append((a.started_at, a.ended_at))
    # Each operator's intervals by end, so a call finds the last one before it by bisection (a
    # month of a busy centre is a hundred thousand calls an operator: no scan per call).
    by_end = {op: sorted(spans, key=lambda s: s[1]) for op, spans in busy.items()}
    ends = {op: [end for _, end in spans] for op, spans in by_end.items()}
    gaps = []
    for c in queued:
        if c.outcome != "answered" or not (c.agent and c.answered_at and c.joined_at):
            continue
        at, spans = c.answered_at, by_end.get(c.agent, [])
        k = bisect.bisect_right(ends.get(c.agent, []), at) - 1
        while k >= 0 and spans[k][0] >= at:  # ended by then but began at the answer itself
            k -= 1
        ready = max(c.joined_at, spans[k][1]) if k >= 0 else c.joined_at
        gaps.append((at - ready).total_seconds())
    if gaps:
        return statistics.fmean(gaps)
    answered_waits = [_wait(c) for c in queued if c.outcome == "answered"]
    return min(answered_waits) if answered_waits else 0.0


def fit(
    calls: Sequence[StoredCall],
    attempts: Sequence[StoredAttempt],
    *,
    default_talk: float = 120.0,
    per_client: bool = True,
) -> Behaviour:
    """Patience rate, talk times and reach from a stored period; with *per_client*, also each
    client's own tries (:func:`fit_clients`), which the replay keeps as they went.

    The patience rate is the censored-data estimate of an exponential: queued callers who hung
    up over the total time all queued callers waited (those answered waited at least that long).
    """
    queued = [c for c in calls if c.queue is not None]
    gave_up = sum(1 for c in queued if c.outcome != "answered")
    waited = sum(_wait(c) for c in queued)
    theta = gave_up / waited if gave_up and waited else 1 / 3600
    talk = tuple(
        (c.ended_at - c.answered_at).total_seconds()
        for c in calls
        if c.outcome == "answered" and c.ended_at and c.answered_at
    ) or (default_talk,)
    busy = tuple(
        (a.ended_at - a.started_at).total_seconds()
        for a in attempts
        if a.outcome == "answered" and a.ended_at
    )
    missed = [
        (a.ended_at - a.started_at).total_seconds()
        for a in attempts
        if a.counted and a.outcome != "answered" and a.ended_at
    ]
    miss_outcomes = tuple(a.outcome for a in attempts if a.counted and a.outcome and a.outcome != "answered")
    return Behaviour(
        abandon_rate=theta,
        answer_delay=fit_answer_delay(queued, attempts),
        talk=talk,
        reach=fit_reach(attempts),
        callback_busy=busy or talk,
        miss_busy=statistics.fmean(missed) if missed else 30.0,
        miss_outcomes=miss_outcomes,
        clients=fit_clients(attempts) if per_client else {},
    )
