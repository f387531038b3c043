"""Recovery analytics: what the callbacks brought back, per queue and per source.

Pure functions over rows, like :mod:`callbackd.domain.metrics`, whose call figures
(CAR, net lost) they reuse so the two never disagree.

Definitions (also in README, "Recovery analytics"):

reach by try
    reached-by-callback requests counted by the try number of the answered attempt
    (1, 2, 3, 4, 5 and later), and each as a share of all reached ones. The field
    figures beside them (80.5 / 12 / 4.5 / 2 / 1 %) are :data:`FIELD_REACH_SHARES`.
reached by callback
    requests whose callback was answered (status ``reached``).
recovered by the client
    requests closed because the client called in again and was answered
    (``recovered``, close reason ``client_called_in``).
recovered by an operator
    requests closed because an operator dialled the client by hand and the client
    answered (``recovered``, any other close reason).
not recovered
    requests expired, failed or cancelled; open: still open or dialling.
time to first attempt, callback wait
    from the request's creation (the miss, or the lead's arrival) to the first
    attempt's start, and to the start of the answered attempt (median and p90; the
    wait also as a mean). A callback client's wait is this figure, never a zero in
    ASA: callback legs are not offered calls.
net lost rate against CAR
    net lost rate / CAR: the share of abandoned demand that stayed lost. 1.0 means the
    callbacks and the clients' own calls brought nobody back; the field case reached 0.5.

Groups: ``queue`` (the queue of the first call behind a request; leads have none)
and ``source`` (``call`` for calls seen on AMI or FastAGI, ``web`` for HTTP and MQTT
leads, ``admin`` for requests added by hand). Call figures exist for queues and for
the ``call`` source only: a web lead has no offered call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from callbackd.domain.metrics import (
    NONE_KEY,
    Accumulator,
    CallRow,
    Thresholds,
    median,
    p90,
)

# Share of reached clients reached on try 1..5 in the field data behind the default ladder.
FIELD_REACH_SHARES = (0.805, 0.12, 0.045, 0.02, 0.01)
TRY_BUCKETS = len(FIELD_REACH_SHARES)  # the last bucket is "5 and later"
CALL_SOURCES = frozenset({"ami", "agi"})
WEB_SOURCES = frozenset({"http", "mqtt"})


def source_kind(source: str) -> str:
    """``call``, ``web`` or the stored source itself (``admin``)."""
    if source in CALL_SOURCES:
        return "call"
    if source in WEB_SOURCES:
        return "web"
    return source or NONE_KEY


class TryRow(NamedTuple):
    started_at: datetime
    try_no: int  # counted tries made before it, plus one
    outcome: str | None


class RecoveryRow(NamedTuple):
    """A callback request created in the period, with its attempts in start order."""

    id: int
    created_at: datetime
    status: str
    close_reason: str | None
    source: str  # the first contact's source
    queue: str | None
    attempts: tuple[TryRow, ...] = ()


@dataclass
class _Group:
    calls: Accumulator = field(default_factory=Accumulator)
    has_calls: bool = False
    requests: int = 0
    by_callback: int = 0
    by_client: int = 0
    by_operator: int = 0
    not_recovered: int = 0
    open: int = 0
    by_try: list[int] = field(default_factory=lambda: [0] * TRY_BUCKETS)
    first_attempt: list[int] = field(default_factory=list)
    wait: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Recovery:
    """One group's figures. Ratios are fractions, durations seconds; None when undefined."""

    requests: int
    reached_by_callback: int
    recovered_by_client: int
    recovered_by_operator: int
    not_recovered: int
    open: int
    reach_by_try: tuple[int, ...]
    reach_share_by_try: tuple[float | None, ...]
    first_attempt_median: float | None
    first_attempt_p90: float | None
    callback_wait_median: float | None
    callback_wait_p90: float | None
    callback_wait_mean: float | None
    # Call figures (None for groups without offered calls: web leads).
    offered: int | None = None
    abandoned: int | None = None
    net_lost: int | None = None
    car: float | None = None
    net_lost_rate: float | None = None
    net_to_car: float | None = None

    @property
    def recovered_share(self) -> float | None:
        """Requests brought back any way / requests closed or open."""
        back = self.reached_by_callback + self.recovered_by_client + self.recovered_by_operator
        return back / self.requests if self.requests else None


def _seconds(a: datetime, b: datetime) -> int:
    return round((b - a).total_seconds())


def _figures(g: _Group) -> Recovery:
    reached = sum(g.by_try)
    calls: dict[str, object] = {}
    if g.has_calls:
        f = g.calls.figures()
        calls = dict(
            offered=f.offered,
            abandoned=f.abandoned,
            net_lost=f.net_lost,
            car=f.car,
            net_lost_rate=f.net_lost_rate,
            net_to_car=(f.net_lost_rate / f.car) if f.car and f.net_lost_rate is not None else None,
        )
    return Recovery(
        requests=g.requests,
        reached_by_callback=g.by_callback,
        recovered_by_client=g.by_client,
        recovered_by_operator=g.by_operator,
        not_recovered=g.not_recovered,
        open=g.open,
        reach_by_try=tuple(g.by_try),
        reach_share_by_try=tuple((n / reached if reached else None) for n in g.by_try),
        first_attempt_median=median(g.first_attempt),
        first_attempt_p90=p90(g.first_attempt),
        callback_wait_median=median(g.wait),
        callback_wait_p90=p90(g.wait),
        callback_wait_mean=(sum(g.wait) / len(g.wait)) if g.wait else None,
        **calls,  # type: ignore[arg-type]
    )


@dataclass
class RecoveryBuilder:
    """Feed calls (started in the period, ``reached_later`` set) and requests (created in it) once each."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    groups: dict[tuple[str, str], _Group] = field(default_factory=dict)
    total: _Group = field(default_factory=_Group)

    def _group(self, by: str, key: str) -> _Group:
        g = self.groups.get((by, key))
        if g is None:
            g = self.groups[(by, key)] = _Group()
        return g

    def add_call(self, c: CallRow) -> None:
        short = self.thresholds.short_abandon.total_seconds()
        sl = self.thresholds.service_level.total_seconds()
        for g in (self.total, self._group("queue", c.queue or NONE_KEY), self._group("source", "call")):
            g.calls.add_call(c, short, sl)
            g.has_calls = True

    def add_calls(self, calls: Iterable[CallRow]) -> None:
        for c in calls:
            self.add_call(c)

    def add_request(self, r: RecoveryRow) -> None:
        groups = (
            self.total,
            self._group("queue", r.queue or NONE_KEY),
            self._group("source", source_kind(r.source)),
        )
        first = min((a.started_at for a in r.attempts), default=None)
        answered = min(
            (a for a in r.attempts if a.outcome == "answered"), default=None, key=lambda a: a.started_at
        )
        for g in groups:
            g.requests += 1
            if first is not None:
                g.first_attempt.append(_seconds(r.created_at, first))
            if r.status == "reached":
                g.by_callback += 1
                if answered is not None:
                    g.by_try[min(max(answered.try_no, 1), TRY_BUCKETS) - 1] += 1
                    g.wait.append(_seconds(r.created_at, answered.started_at))
            elif r.status == "recovered":
                if r.close_reason == "client_called_in":
                    g.by_client += 1
                else:
                    g.by_operator += 1
            elif r.status in ("open", "dialling"):
                g.open += 1
            else:
                g.not_recovered += 1

    def build(self) -> RecoveryReport:
        rows = []
        for by in ("queue", "source"):
            keys = sorted(k for b, k in self.groups if b == by)
            if NONE_KEY in keys:  # no queue: last
                keys.remove(NONE_KEY)
                keys.append(NONE_KEY)
            rows.extend((by, k, _figures(self.groups[(by, k)])) for k in keys)
        return RecoveryReport(rows=tuple(rows), total=_figures(self.total))


@dataclass(frozen=True)
class RecoveryReport:
    rows: tuple[tuple[str, str, Recovery], ...]  # (grouping, key, figures)
    total: Recovery


def compute_recovery(
    calls: Iterable[CallRow],
    requests: Iterable[RecoveryRow],
    *,
    thresholds: Thresholds | None = None,
) -> RecoveryReport:
    """Over rows already limited to the period (calls with ``reached_later`` worked out)."""
    builder = RecoveryBuilder(thresholds or Thresholds())
    builder.add_calls(calls)
    for r in requests:
        builder.add_request(r)
    return builder.build()
