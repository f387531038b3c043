"""The AMI fast path: plain events parsed straight into dicts must equal what panoramisk's Message and
``to_dict`` give, over every recorded trace (tests/fixtures/ami, the lab traces copied there, and the
bench's recorded lab stream), message by message and through the protocol with any chunking."""

from __future__ import annotations

import gzip
import random
from pathlib import Path
from typing import Any

import pytest
from panoramisk.message import Message

from callbackd.adapters.ami import SafeAmiProtocol, parse_event, to_dict, unwanted
from callbackd.app import AMI_ROUTES

ROOT = Path(__file__).resolve().parents[2]
TRACES = sorted((ROOT / "tests" / "fixtures" / "ami").glob("*.ami.txt"))
BENCH_TRACE = ROOT / "bench" / "data" / "ami-lab.trace.gz"
EOM = "\r\n\r\n"


def blocks_of(text: str) -> list[str]:
    """A trace's messages as Asterisk sends them: CRLF lines, without the trace tool's ';' notes."""
    text = "\n".join(line for line in text.split("\n") if not line.startswith(";"))
    return [b.strip() for b in text.split(EOM) if b.strip()]


def all_traces() -> dict[str, list[str]]:
    out = {p.name: blocks_of(p.read_bytes().decode()) for p in TRACES}
    out[BENCH_TRACE.name] = blocks_of(gzip.decompress(BENCH_TRACE.read_bytes()).decode())
    # The lab tool writes panoramisk's 'content' key; Asterisk never sends it.
    for name, blocks in list(out.items()):
        bare = ["\r\n".join(ln for ln in b.split("\r\n") if not ln.startswith("content:")) for b in blocks]
        if bare != blocks:
            out[f"{name} (as Asterisk sends it)"] = bare
    return out


TRACE_BLOCKS = all_traces()


def old_path(block: str) -> dict[str, str] | None:
    message = Message.from_line(block)
    return None if message is None else to_dict(message)


def test_the_traces_are_there():
    assert {p.name for p in TRACES} >= {"queue-abandon.ami.txt", "originate-operator-first.ami.txt"}
    assert sum(len(b) for b in TRACE_BLOCKS.values()) > 1000


@pytest.mark.parametrize("name", sorted(TRACE_BLOCKS))
def test_every_plain_event_parses_to_the_dict_panoramisk_and_to_dict_give(name):
    fast = 0
    for block in TRACE_BLOCKS[name]:
        event = parse_event(block)
        if event is not None:
            fast += 1
            assert event == old_path(block), block
            assert list(event) == list(old_path(block) or {}), block  # header order kept too
    if "as Asterisk sends it" in name or name == BENCH_TRACE.name:
        # Every event of a real stream takes the fast path but replies to actions (OriginateResponse).
        assert fast == sum("ActionID: " not in b for b in TRACE_BLOCKS[name]) > 0


@pytest.mark.parametrize(
    "block",
    [
        "Event: Hangup\r\nUniqueid: 1.1\r\nUniqueid: 1.2",  # a repeated header: panoramisk joins it
        "Event: Hangup\r\nuniqueid: 1.1\r\nUniqueid: 1.2",  # repeated in another case
        "Event: OriginateResponse\r\nActionID: 42\r\nResponse: Success",  # a reply to an action
        "Event: Shutdown\r\nShutdown: Uncleanly",
        "Event: AGIExecEnd\r\nResult: 200%20result%3D1",  # panoramisk unquotes Result
        "event: Hangup\r\nUniqueid: 1.1",  # no 'Event' header as panoramisk reads it
        "Response: Success\r\nMessage: Pong",
        "Event: Newchannel\r\nContent: x",
        "Event: Event\r\nEvent: Event",
    ],
)
def test_anything_but_a_plain_event_is_left_to_panoramisk(block):
    assert parse_event(block) is None


def test_control_characters_are_dropped_as_to_dict_drops_them():
    block = "Event: Newchannel\r\nCallerIDName: Bob\x00by\x07\r\nCaller\x1bIDNum: 2025550123\r"
    assert (
        parse_event(block)
        == old_path(block)
        == {
            "Event": "Newchannel",
            "CallerIDName": "Bobby",
            "CallerIDNum": "2025550123",
        }
    )


class Manager:
    """What SafeAmiProtocol calls back, as panoramisk's Manager and AmiClient wire it."""

    forgetable_actions: tuple[str, ...] = ()

    def __init__(self, fast: bool, wanted: Any = None) -> None:
        self.events: list[dict[str, str]] = []
        self.wanted = wanted
        self.dropped = 0
        if fast:
            self.on_plain_event = self.events.append

    def dispatch(self, message: Any) -> None:  # panoramisk's path, then AmiClient._dispatch
        self.events.append(to_dict(message))

    def connection_lost(self, exc: object) -> None:
        pass


class Transport:
    def close(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass


def received(stream: bytes, fast: bool, seed: int, wanted: Any = None) -> list[dict[str, str]]:
    protocol = SafeAmiProtocol()
    protocol.connection_made(Transport())
    manager = Manager(fast, wanted)
    protocol.factory = manager
    rnd = random.Random(seed)
    protocol.data_received(b"Asterisk Call Manager/9.0.0\r\n")
    at = 0
    while at < len(stream):
        step = rnd.choice([1, 7, 100, 1500, 65536])
        protocol.data_received(stream[at : at + step])
        at += step
    return manager.events


@pytest.mark.parametrize("name", sorted(TRACE_BLOCKS))
def test_the_protocol_delivers_the_same_events_either_way_however_the_bytes_are_cut(name):
    blocks = TRACE_BLOCKS[name]
    odd = [
        "Event: Hangup\r\nUniqueid: 9.1\r\nUniqueid: 9.2",
        "Event: Newchannel\r\nCallerIDName: A\x01B",
        "garbage without a colon",
    ]
    stream = (EOM.join(blocks + odd) + EOM).encode()
    for seed in range(3):
        slow = received(stream, fast=False, seed=seed)
        assert received(stream, fast=True, seed=seed) == slow
        assert len(slow) >= len(blocks)


@pytest.mark.parametrize("name", sorted(TRACE_BLOCKS))
def test_events_the_daemon_does_not_route_are_dropped_unparsed_and_nothing_else(name):
    blocks = TRACE_BLOCKS[name]
    for block in blocks:
        if unwanted(block, AMI_ROUTES):
            event = parse_event(block)
            assert event is not None and event["Event"] not in AMI_ROUTES, block
    stream = (EOM.join(blocks) + EOM).encode()
    kept = (EOM.join(b for b in blocks if not unwanted(b, AMI_ROUTES)) + EOM).encode()
    for seed in range(3):
        # on_event is given what it was given before, in order, less the unrouted plain events.
        assert received(stream, fast=True, seed=seed, wanted=AMI_ROUTES) == received(kept, True, seed)
    if name == BENCH_TRACE.name:
        assert 0 < sum(unwanted(b, AMI_ROUTES) for b in blocks) < len(blocks)


@pytest.mark.parametrize(
    "block",
    [
        "Event: Hangup\r\nUniqueid: 1.1",  # routed
        "Event: DeviceStateChange\r\nActionID: 7\r\nState: INUSE",  # an action's list: panoramisk's
        "Event: DeviceStateChange\r\nactionid: 7\r\nState: INUSE",  # the same, in another case
        "Event: CoreShowChannel\r\nCommandID: 3",
        "Event: AGIExecEnd\r\nResult: 200",
        "Event: Newexten\r\nContent: x",
        "Event: Shutdown\r\nShutdown: Uncleanly",
        "Event: shutdown",
        "Event: Hang\x01up\r\nUniqueid: 1.1",  # parse_event drops the control character: Hangup
        "Event: Hangup \r\nUniqueid: 1.1",
        "event: DeviceStateChange\r\nState: INUSE",  # not as Asterisk writes it
        "Response: Success\r\nMessage: Pong",
    ],
)
def test_never_dropped_unparsed(block):
    assert not unwanted(block, AMI_ROUTES)


def test_a_plain_event_outside_the_routes_is_dropped_and_counted():
    hangup, state = "Event: Hangup\r\nUniqueid: 1.1", "Event: DeviceStateChange\r\nDevice: PJSIP/op1"
    protocol = SafeAmiProtocol()
    protocol.connection_made(Transport())
    manager = protocol.factory = Manager(True, AMI_ROUTES)
    protocol.data_received(b"Asterisk Call Manager/9.0.0\r\n")
    protocol.data_received((EOM.join([hangup, state, state, hangup]) + EOM).encode())
    assert manager.events == [{"Event": "Hangup", "Uniqueid": "1.1"}] * 2
    assert manager.dropped == 2
