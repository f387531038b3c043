"""Fuzz: whatever bytes come over the AMI socket, nothing escapes, nothing unsafe is stored or dialled.

The bytes go through panoramisk's real parser (:class:`SafeAmiProtocol`) and the real
Manager dispatch into ``AmiClient._dispatch``, then ``Daemon.on_event`` (operator pool,
dialer, missed-call detector) and the intake service (decide, abuse limits, a real SQLite
store). Only the socket is missing: a recording transport stands in for it, and nothing
connects to an Asterisk.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import deque
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from daemonkit import RecordingAmi, built_daemon, daemon_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from panoramisk.ami_protocol import AMIProtocol
from sqlalchemy import select
from structlog.testing import capture_logs

from callbackd.adapters import models as m
from callbackd.adapters.ami import MAX_PENDING, AmiClient, SafeAmiProtocol, to_dict
from callbackd.app import Daemon
from callbackd.config import Config
from callbackd.dialer import Dialer
from callbackd.domain.operators import OperatorPool
from callbackd.domain.states import RequestStatus

E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")
UNSAFE_IN_NAMES = set('"<>;&${}\r\n\x00')
DIAL_RE = re.compile(r"^[A-Za-z0-9_./@:+-]+$")

# Caller IDs and names that would break out of a CallerID header, a dial string or an AMI
# message if they were passed on as they came.
EVIL = [
    "+1202555&PJSIP/evil",
    "${SHELL(rm -rf /)}",
    "123,456",
    '"; Dial(',
    "2025550123|PJSIP/x",
    "2025550123;x",
    "2025550123\rAction: Originate",
    "2025550123\nChannel: PJSIP/evil",
    "2025550123\r\n\r\nEvent: Hangup",
    "\u0662\u0660\u0662\u0665\u0665\u0665\u0660\u0661\u0662\u0663",  # Arabic-Indic digits
    "\uff0b\uff11\uff12\uff10\uff12\uff15\uff15\uff15\uff10\uff11\uff12\uff13",  # full width
    "+12025550123\x00",
    "<sip:+12025550123@evil>",
    "anonymous",
    "",
    "9" * 300,
]
GOOD = ["2025550123", "+12025550123", "12025550188", "+442079460958", "+19005550123"]
NUMBERS = st.one_of(
    st.sampled_from(GOOD), st.sampled_from(EVIL), st.from_regex(r"\+?[0-9]{1,16}", fullmatch=True)
)
NAMES = st.one_of(
    st.sampled_from(
        ['"Evil" <+19005550100>', "Bob; Dial(PJSIP/x)", "${SHELL(id)}", "Ada\r\nEvent: X", "Zoë"]
    ),
    st.sampled_from(EVIL),
    st.text(max_size=60),
)
HEADERS = [
    "Event",
    "Linkedid",
    "Uniqueid",
    "CallerIDNum",
    "CallerIDName",
    "Context",
    "Exten",
    "Queue",
    "HoldTime",
    "Interface",
    "Status",
    "Paused",
    "UserEvent",
    "Reason",
    "DialStatus",
    "ChannelState",
    "ActionID",
    "Response",
    "MemberName",
]
EVENTS = [
    "Newchannel",
    "QueueCallerJoin",
    "QueueCallerAbandon",
    "QueueCallerLeave",
    "AgentConnect",
    "DialBegin",
    "DialEnd",
    "Hangup",
    "HangupRequest",
    "UserEvent",
    "QueueMemberStatus",
    "Newstate",
    "BridgeEnter",
    "Shutdown",
]
LINKED = "{L}"  # replaced by a fresh Linkedid for every example

Message = list[tuple[str, str]]


@st.composite
def calls(draw: st.DrawFn) -> list[Message]:
    """One inbound call as Asterisk reports it, with fuzzed caller ID, hold time and ending."""
    num, name = draw(NUMBERS), draw(NAMES)
    hold = draw(st.one_of(st.integers(0, 10**7).map(str), st.text(max_size=8)))
    ids = [("Uniqueid", LINKED), ("Linkedid", LINKED)]
    out: list[Message] = [
        [
            ("Event", "Newchannel"),
            *ids,
            ("Context", "from-pstn"),
            ("Exten", "100"),
            ("CallerIDNum", num),
            ("CallerIDName", name),
        ]
    ]
    ending = draw(st.sampled_from(["abandon", "timeout", "answered", "ivr", "none"]))
    if ending in ("abandon", "timeout", "answered"):
        out.append([("Event", "QueueCallerJoin"), *ids, ("Queue", "support")])
    if ending == "abandon":  # the caller hangs up while queued
        out.append([("Event", "HangupRequest"), *ids])
        out.append([("Event", "QueueCallerAbandon"), *ids, ("Queue", "support"), ("HoldTime", hold)])
    if ending == "answered":
        out.append([("Event", "AgentConnect"), *ids, ("HoldTime", hold), ("MemberName", name)])
    if ending != "none":
        out.append([("Event", "Hangup"), *ids])
    return out


RANDOM_MESSAGE = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(HEADERS), st.text(max_size=12)),
        st.one_of(st.sampled_from(EVENTS), st.just(LINKED), NUMBERS, NAMES),
    ),
    max_size=8,
)
MUTATIONS = st.sampled_from(
    ["none", "truncate", "garbage", "non_utf8", "duplicate_header", "no_colon", "huge_header", "bytes"]
)


def serialize(messages: list[Message], linkedid: str) -> bytes:
    text = "".join(
        "".join(f"{k}: {linkedid if v == LINKED else v}\r\n" for k, v in msg) + "\r\n" for msg in messages
    )
    return text.encode("utf-8", "surrogatepass")


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Message], str]:
    messages = [msg for call in draw(st.lists(calls(), min_size=1, max_size=3)) for msg in call]
    for extra in draw(st.lists(RANDOM_MESSAGE, max_size=3)):
        messages.insert(draw(st.integers(0, len(messages))), extra)
    mutation = draw(MUTATIONS)
    if mutation == "duplicate_header" and messages:
        i = draw(st.integers(0, len(messages) - 1))
        if messages[i]:
            messages[i] = [*messages[i], draw(st.sampled_from(messages[i]))]
    if mutation == "no_colon" and messages:
        i = draw(st.integers(0, len(messages) - 1))
        messages[i] = [*messages[i], (draw(st.text(max_size=30)), "")]
    if mutation == "huge_header" and messages:
        key = draw(st.sampled_from(["CallerIDNum", "CallerIDName", "Linkedid", "Event"]))
        messages[-1] = [*messages[-1], (key, "9" * (1 << 20))]
    return messages, mutation


def mutate(data: bytes, mutation: str, draw: st.DataObject) -> bytes:
    if mutation == "truncate":
        return data[: draw.draw(st.integers(0, len(data)))]
    if mutation in ("garbage", "non_utf8"):
        junk = draw.draw(
            st.binary(min_size=1, max_size=64)
            if mutation == "garbage"
            else st.lists(st.integers(0x80, 0xFF), min_size=1, max_size=16).map(bytes)
        )
        at = draw.draw(st.integers(0, len(data)))
        return data[:at] + junk + data[at:]
    if mutation == "bytes":
        return draw.draw(st.binary(max_size=2048)) + b"\r\n\r\n"
    return data


def chunks(data: bytes, draw: st.DataObject) -> list[bytes]:
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class Transport:
    """Where the protocol would write and what it would close: the socket, not Asterisk."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def attach(client: AmiClient, protocol_class: type[AMIProtocol] = SafeAmiProtocol) -> AMIProtocol:
    """A fresh connection's protocol, wired to the client's Manager as Manager.connection_made does."""
    manager = client.manager
    protocol = protocol_class()
    protocol.connection_made(Transport())
    protocol.queue = deque()
    protocol.factory = manager
    protocol.log = manager.log
    protocol.config = manager.config
    protocol.encoding = manager.config["encoding"]
    manager.protocol = protocol
    return protocol


async def build(tmp_path: Path, stack: AsyncExitStack) -> Daemon:
    # Open around the clock for the business and for every client zone: whether the fuzzed
    # numbers get dialled must not depend on the hour the test runs at.
    cfg = daemon_config(
        tmp_path, schedule={"hours": {"mon-sun": "00:00-24:00"}, "client": {"enabled": False}}
    )
    d = await stack.enter_async_context(built_daemon(cfg, ami=RecordingAmi()))
    d.ami.manager.connect = lambda *a, **k: None  # type: ignore[method-assign]  # no Asterisk: never reconnect
    return d


async def drain(d: Daemon) -> None:
    """Until the intake's writer has handled every item; anything it failed to store is in the spool."""
    await d.intake.idle()
    assert not len(d.intake.spool), [s.item for s in d.intake.spool.items]


async def stored(d: Daemon) -> tuple[list[Any], list[Any], list[Any]]:
    async with d.store.session() as s:
        contacts = list((await s.execute(select(m.Contact))).scalars())
        requests = list((await s.execute(select(m.Request))).scalars())
        call_rows = list((await s.execute(select(m.Call))).scalars())
    return contacts, requests, call_rows


def check_stored(contacts: list[Any], requests: list[Any], call_rows: list[Any]) -> None:
    for number in [c.number for c in contacts] + [r.number for r in requests] + [c.number for c in call_rows]:
        assert number is None or E164_RE.match(number), number
    for name in [c.name for c in contacts] + [r.name for r in requests] + [c.caller_name for c in call_rows]:
        assert not UNSAFE_IN_NAMES & set(name), name
    for row in contacts:
        assert row.request_id is None or row.disposition == "schedule"


def check_originate(fields: dict[str, Any]) -> None:
    caller_id = re.fullmatch(r'"([^"]*)" <(\+[1-9]\d{6,14})>', fields["CallerID"])
    assert caller_id, fields["CallerID"]
    assert not UNSAFE_IN_NAMES & set(caller_id.group(1))
    variables = dict(v.split("=", 1) for v in fields["Variable"])
    assert DIAL_RE.match(variables["CBD_DIAL"]), variables["CBD_DIAL"]
    assert variables["CBD_DIAL"] == f"PJSIP/{caller_id.group(2)}@trunk"


def test_ami_bytes_never_crash_store_garbage_or_dial_a_bad_number(tmp_path):
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        d = runner.run(build(tmp_path, stack))
        seq = iter(range(10**9))

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(stream=streams(), draw=st.data())
        def check(stream: tuple[list[Message], str], draw: st.DataObject) -> None:
            messages, mutation = stream
            # Always the same length, so a replayed example draws the same cuts.
            data = mutate(serialize(messages, f"fuzz-{next(seq):09d}.1"), mutation, draw)

            async def feed() -> None:
                protocol = attach(d.ami)
                for part in chunks(data, draw):
                    protocol.data_received(part)
                await drain(d)

            runner.run(feed())
            check_stored(*runner.run(stored(d)))

        try:
            check()
            contacts, requests, _ = runner.run(stored(d))
            assert contacts and requests  # the strategies did reach the store and schedule
            later = datetime.now(UTC) + timedelta(days=1)
            # Open and due by then. The strategies draw few numbers, so now and then a call answered
            # later recovers every request and nothing is left to dial: then nothing must be.
            due = [
                r
                for r in requests
                if r.status == RequestStatus.OPEN
                and r.due_at is not None
                and r.due_at.replace(tzinfo=UTC) <= later
            ]

            async def dial_everything() -> list[dict[str, Any]]:
                # Whatever got stored is now due: let a dialer with many free operators take it.
                pool = OperatorPool(["support"])
                for i in range(50):
                    pool.update(
                        {"Event": "QueueMemberStatus", "Queue": "support", "Interface": f"PJSIP/op{i}"}
                        | {"Status": "1", "Paused": "0"}
                    )
                ami = RecordingAmi()
                cfg = Config.model_validate({"dialer": {"max_concurrent": 50}}).dialer
                dialer = Dialer(cfg, d.store, ami, pool, clock=lambda: later)  # type: ignore[arg-type]
                await dialer.tick()
                for _ in range(20):
                    await asyncio.sleep(0)
                await dialer.close()
                for req in await d.store.claim_due(later, 10_000):
                    assert E164_RE.match(req.number), req.number
                return ami.originates

            originates = runner.run(dial_everything())
            assert bool(originates) == bool(due), [(r.status, r.number) for r in requests]
            assert len(originates) <= len({r.number for r in due})  # one number once at a time
            for fields in originates:
                check_originate(fields)
        finally:
            runner.run(stack.aclose())


async def test_a_bad_message_is_dropped_not_the_connection_and_not_its_neighbours(sqlite_url):
    seen: list[dict[str, str]] = []
    client = AmiClient(host="127.0.0.1", port=1, username="u", secret="s", on_event=seen.append)
    client.manager.connect = lambda *a, **k: None  # type: ignore[method-assign]
    bad = [
        b"Event: Hangup\r\nEvent: Newchannel\r\nLinkedid: 1\r\n\r\n",  # Event twice: a list
        b"Response: Success\r\nActionID: a\r\nActionID: b\r\n\r\n",  # ActionID twice: unhashable
    ]
    good = b"Event: Newchannel\r\nLinkedid: 2\r\nCallerIDName: Ada\x00\x07\r\n\r\n"

    plain = attach(client, AMIProtocol)
    for data in bad:  # what panoramisk alone does: the exception ends the connection
        try:
            plain.data_received(data)
        except (AttributeError, TypeError):
            pass
        else:
            raise AssertionError(f"panoramisk now survives {data!r}; SafeAmiProtocol may be simplified")

    protocol = attach(client)
    with capture_logs() as logs:
        for data in bad:
            protocol.data_received(data + good)
    assert [e["Linkedid"] for e in seen] == ["2", "2"]
    assert seen[0]["CallerIDName"] == "Ada"  # control characters are dropped
    assert [e["event"] for e in logs] == ["ami.bad_data", "ami.bad_data"]
    assert not protocol.transport.closed
    await client.close()


async def test_a_message_that_never_ends_is_not_buffered_forever():
    client = AmiClient(host="127.0.0.1", port=1, username="u", secret="s", on_event=lambda ev: None)
    client.manager.connect = lambda *a, **k: None  # type: ignore[method-assign]
    protocol = attach(client)
    block = b"CallerIDName: " + b"x" * 65536 + b"\r\n"
    with capture_logs() as logs:
        for _ in range(MAX_PENDING // len(block) + 2):
            protocol.data_received(block)
            if protocol.transport.closed:
                break
    assert protocol.transport.closed and not protocol.queue
    assert [e["event"] for e in logs] == ["ami.bad_data"]
    await client.close()


def test_to_dict_joins_repeated_headers_and_keeps_no_control_characters():
    class Msg(dict):
        pass

    out = to_dict(
        Msg({"Event": "X", "Variable": ["a=1", "b=\x002"], "CallerIDNum": "+1202\r\n555", "content": "x"})
    )
    assert out == {"Event": "X", "Variable": "a=1;b=2", "CallerIDNum": "+1202555"}
