"""The event-lag histogram (observed on every AMI event the daemon reads) is exposed exactly as
prometheus_client's Histogram exposes the same observations, less its ``_created`` sample."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from callbackd.adapters.metrics import EVENT_LAG_BUCKETS, FastHistogram


def exposition(registry: CollectorRegistry) -> list[str]:
    return [ln for ln in generate_latest(registry).decode().splitlines() if "_created" not in ln]


def test_the_same_buckets_count_and_sum_as_prometheus_clients_histogram():
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("lag_seconds", "Lag", buckets=EVENT_LAG_BUCKETS, registry=theirs)
    fast = FastHistogram("lag_seconds", "Lag", EVENT_LAG_BUCKETS)
    ours.register(fast)
    rng = random.Random(7)
    # On each bound (le is inclusive), either side of it, zero, and past the last bound.
    values = [0.0, 31.0, 1e6, *EVENT_LAG_BUCKETS]
    values += [b * f for b in EVENT_LAG_BUCKETS for f in (0.999999, 1.000001)]
    values += [rng.expovariate(20) for _ in range(2000)]
    for v in values:
        reference.observe(v)
        fast.observe(v)
    assert exposition(ours) == exposition(theirs)
    assert sum(fast.counts) == len(values)
    assert 'lag_seconds_bucket{le="1.0"}' in generate_latest(ours).decode()


def test_nothing_observed_shows_zero_buckets():
    ours = CollectorRegistry()
    ours.register(FastHistogram("lag_seconds", "Lag", EVENT_LAG_BUCKETS))
    theirs = CollectorRegistry()
    Histogram("lag_seconds", "Lag", buckets=EVENT_LAG_BUCKETS, registry=theirs)
    assert exposition(ours) == exposition(theirs)
