"""Prometheus metrics, served as GET /metrics on the HTTP listener.

The registry is the daemon's own, not prometheus_client's global one, so tests can run
several daemons in one process; it holds the process collector (CPU, memory, open files:
in a test with several daemons they share one process's figures) and ``callbackd_build_info``.
Live figures (AMI, operators, refusals) are read from the daemon at scrape time, and
requests by status come from the database at most every ``db_refresh`` seconds, so a
busy scraper cannot load the database.

The endpoint has no token: the listener binds loopback unless configured otherwise.
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from fastapi import APIRouter
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from callbackd.domain.outcomes import Outcome
from callbackd.domain.states import RequestStatus

log = structlog.get_logger("callbackd.metrics")

EVENT_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FIRST_ATTEMPT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 86400, 3 * 86400)
# Requests whose first attempt was already observed; bounded, oldest forgotten first.
_SEEN_MAX = 10_000


@dataclass(frozen=True)
class Live:
    """What the daemon knows right now, read at each scrape."""

    ami_connected: bool = False
    ami_reconnects: int = 0
    operators: int = 0
    operators_free: int = 0
    callers_waiting: int = 0
    in_flight: int = 0
    refusals: Mapping[str, int] = field(default_factory=dict)
    database_up: bool | None = None  # None: not tried yet
    backlog: int = 0  # contacts and call records not in the database yet (queued or spooled)
    spooled: int = 0
    backlog_oldest_s: float = 0.0
    spool_full: bool = False


class _LiveCollector(Collector):
    def __init__(self, live: Callable[[], Live]) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        now = self._live()
        yield GaugeMetricFamily(
            "callbackd_ami_connected", "1 while logged in to AMI", value=now.ami_connected
        )
        yield CounterMetricFamily(
            "callbackd_ami_reconnects", "AMI logins after the first one", value=now.ami_reconnects
        )
        yield GaugeMetricFamily("callbackd_operators", "Queue members seen", value=now.operators)
        yield GaugeMetricFamily(
            "callbackd_operators_free", "Operators free for a callback now", value=now.operators_free
        )
        yield GaugeMetricFamily(
            "callbackd_callers_waiting",
            "Live callers waiting in the operators' queues",
            value=now.callers_waiting,
        )
        yield GaugeMetricFamily("callbackd_attempts_in_flight", "Callbacks in progress", value=now.in_flight)
        refusals = CounterMetricFamily(
            "callbackd_refusals", "Contacts refused by number rules or abuse limits", labels=["reason"]
        )
        for reason, n in sorted(now.refusals.items()):
            refusals.add_metric([reason], n)
        yield refusals
        yield GaugeMetricFamily(
            "callbackd_database_up",
            "1 while the intake reaches the database (0 when down, -1 before the first try)",
            value=-1 if now.database_up is None else int(now.database_up),
        )
        yield GaugeMetricFamily(
            "callbackd_intake_backlog", "Contacts and call records not yet in the database", value=now.backlog
        )
        yield GaugeMetricFamily(
            "callbackd_intake_spooled", "Items in the local spool waiting for the database", value=now.spooled
        )
        yield GaugeMetricFamily(
            "callbackd_intake_backlog_oldest_seconds",
            "Age of the oldest item not yet in the database (0 when none)",
            value=now.backlog_oldest_s,
        )
        yield GaugeMetricFamily(
            "callbackd_spool_full",
            "1 while the spool is full and new leads are refused",
            value=now.spool_full,
        )


class FastHistogram(Collector):
    """A histogram for a value observed on every AMI event: a bucket count and a sum, no lock and
    no per-bucket loop (prometheus_client's Histogram takes both on each observation, a few µs
    an event). Exposed as prometheus_client's would be, less the ``_created`` sample."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value: le="bound"
        self.sum += value

    def collect(self) -> Iterator[Metric]:
        cumulative, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            cumulative.append((floatToGoString(bound), total))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.sum)


class Metrics:
    def __init__(
        self, live: Callable[[], Live], *, db_refresh: float = 5.0, version: str = "unknown"
    ) -> None:
        self.registry = CollectorRegistry()
        self.db_refresh = db_refresh
        self._refreshed = float("-inf")
        self._seen: OrderedDict[int, None] = OrderedDict()
        r = self.registry
        self.requests = Gauge("callbackd_requests", "Callback requests by status", ["status"], registry=r)
        for status in RequestStatus:
            self.requests.labels(status.value)
        self.next_due = Gauge(
            "callbackd_next_due_timestamp_seconds",
            "Due time of the earliest open request (0 when none)",
            registry=r,
        )
        self.attempts = Counter(
            "callbackd_attempts", "Finished callback attempts by outcome", ["outcome"], registry=r
        )
        for outcome in Outcome:
            self.attempts.labels(outcome.value)
        self.event_lag = FastHistogram(
            "callbackd_ami_event_lag_seconds",
            "Receipt time minus the AMI event's Timestamp, over the events the daemon reads"
            " (needs timestampevents = yes)",
            EVENT_LAG_BUCKETS,
        )
        r.register(self.event_lag)
        self.first_attempt = Histogram(
            "callbackd_time_to_first_attempt_seconds",
            "From a request's creation to the start of its first attempt",
            buckets=FIRST_ATTEMPT_BUCKETS,
            registry=r,
        )
        r.register(_LiveCollector(live))
        ProcessCollector(registry=r)
        build = Gauge(
            "callbackd_build_info", "The running build (always 1)", ["version", "python"], registry=r
        )
        build.labels(version, platform.python_version()).set(1)
        self.offered = Counter("callbackd_calls_offered", "Inbound calls recorded", registry=r)
        self.abandoned = Counter(
            "callbackd_calls_abandoned", "Inbound calls not answered, by why", ["reason"], registry=r
        )
        self.recovered = Counter(
            "callbackd_calls_recovered",
            "Clients reached after a missed call: by a callback, their own call or an operator's",
            ["how"],
            registry=r,
        )
        self.recovered.labels("callback")

    # -- fed by the daemon -----------------------------------------------------------

    def event_received(self, event: Mapping[str, str], now: float | None = None) -> None:
        stamp = event.get("Timestamp")
        if not stamp:
            return
        try:
            sent = float(stamp)
        except ValueError:
            return
        # A remote Asterisk with a clock ahead of ours would give negative lags.
        self.event_lag.observe(max(0.0, (time.time() if now is None else now) - sent))

    def attempt_started(
        self, request_id: int, created_at: datetime, started_at: datetime, first: bool
    ) -> None:
        if not first or request_id in self._seen:
            return
        self._seen[request_id] = None
        while len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        self.first_attempt.observe(max(0.0, (started_at - created_at).total_seconds()))

    def attempt_finished(self, outcome: str, reached: bool = False) -> None:
        self.attempts.labels(outcome).inc()
        if reached:
            self.recovered.labels("callback").inc()

    def call_recorded(self, missed_reason: str | None) -> None:
        self.offered.inc()
        if missed_reason is not None:
            self.abandoned.labels(missed_reason).inc()

    def recovered_by(self, how: str, n: int) -> None:
        if n:
            self.recovered.labels(how).inc(n)

    # -- scraped ---------------------------------------------------------------------

    async def refresh(self, store: Any) -> None:
        """Requests by status and the next due time, from the database, if the last read is old."""
        if time.monotonic() - self._refreshed < self.db_refresh:
            return
        try:
            counts = await store.counts_by_status()
            due = await store.next_due()
        except Exception as exc:  # a scrape must still answer with what is known
            log.warning("metrics.refresh_failed", error=str(exc)[:200])
            return
        self._refreshed = time.monotonic()
        for status in RequestStatus:
            self.requests.labels(status.value).set(counts.get(status.value, 0))
        self.next_due.set(due.timestamp() if due is not None else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def router(metrics: Metrics, store: Any) -> APIRouter:
    """GET /metrics, unauthenticated: mount it only on a listener that is not public."""
    from fastapi import APIRouter, Response  # only with a listener: the daemon may run without FastAPI

    r = APIRouter()

    @r.get("/metrics", include_in_schema=False)
    async def scrape() -> Response:
        await metrics.refresh(store)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return r
