"""The AMI routing table (callbackd.app.AMI_ROUTES) sends each part of the daemon every event it
reacts to: an event named nowhere in it is dropped unparsed, so a name missing there would be
an event silently never seen."""

from __future__ import annotations

import inspect
import re
from datetime import UTC, datetime

from test_ami_parse import BENCH_TRACE, TRACE_BLOCKS

from callbackd.adapters.ami import parse_event
from callbackd.app import AMI_ROUTES, DETECTOR, DIALER, POOL, WAKE
from callbackd.dialer import Dialer
from callbackd.domain.attempts import AttemptTracker
from callbackd.domain.detection import Detector
from callbackd.domain.operators import OperatorPool


def routed(flag: int) -> set[str]:
    return {name for name, route in AMI_ROUTES.items() if route & flag}


def names_in(source: str, pattern: str) -> set[str]:
    """The event names a handler compares ``Event`` with, found in its source."""
    return set(re.findall(pattern, source))


def test_every_detector_handler_is_routed_to_the_detector():
    handlers = {n.removeprefix("_on_") for n in vars(Detector) if n.startswith("_on_")}
    assert len(handlers) >= 10
    assert handlers == routed(DETECTOR)


def test_every_event_the_pool_reads_is_routed_to_the_pool():
    read = names_in(inspect.getsource(OperatorPool.update), r'"(Queue[A-Z][A-Za-z]*)"')
    assert {"QueueMemberStatus", "QueueCallerJoin", "QueueMemberRemoved"} <= read
    assert read == routed(POOL)


def test_every_event_the_dialer_follows_is_routed_to_the_dialer():
    read = names_in(inspect.getsource(AttemptTracker.feed), r'name == "(\w+)"')
    read |= names_in(inspect.getsource(Dialer.on_event), r'ev.get\("Event"\) == "(\w+)"')
    assert {"UserEvent", "Newstate", "DialBegin", "BridgeEnter", "Hangup"} == read == routed(DIALER)
    # What can free an operator for a callback: a member's state or pause, a caller leaving.
    assert routed(WAKE) == {"QueueMemberStatus", "QueueMemberPause", "QueueCallerLeave"}


def test_the_detector_finds_the_same_calls_from_the_routed_events_only():
    """Over every recorded trace: the same outputs, in order, and the same calls left open."""
    at = datetime(2026, 3, 2, 10, tzinfo=UTC)
    for name, blocks in TRACE_BLOCKS.items():
        events = [ev for ev in map(parse_event, blocks) if ev is not None]
        every, only = Detector(), Detector()
        pool_every, pool_only = OperatorPool(()), OperatorPool(())
        out_every, out_only = [], []
        for ev in events:
            out_every += every.feed(ev, at)
            pool_every.update(ev)
            if AMI_ROUTES.get(ev["Event"], 0) & DETECTOR:
                out_only += only.feed(ev, at)
            if AMI_ROUTES.get(ev["Event"], 0) & POOL:
                pool_only.update(ev)
        assert out_only == out_every, name
        assert only.calls == every.calls, name
        assert pool_only.members == pool_every.members and pool_only.waiting == pool_every.waiting, name
        if name == BENCH_TRACE.name:
            assert out_every and pool_every.members
