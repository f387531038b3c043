"""Injection through every input that needs no PBX: the HTTP form, MQTT (the real Mosquitto), the
AGI keypad route (Asterisk's side of the AGI session played by a script), AMI caller ID (panoramisk's
parser into the real detector), and the Originate the dialer builds.

Nothing that could add a channel, an argument, a dialplan expression or an AMI header may
be stored as a request, and whatever is stored or sent is E.164 and sanitised names only.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from types import SimpleNamespace
from typing import Any

import aiomqtt
import httpx
import pytest
from daemonkit import RecordingAmi, built_daemon, daemon_config
from leadkit import NOW, RULES, TOKEN, counts
from panoramisk.message import Message
from sqlalchemy import select, update
from structlog.testing import capture_logs

from callbackd.adapters import models as m
from callbackd.adapters.agi import CallbackAgi, _digit, _reason
from callbackd.adapters.ami import to_dict
from callbackd.adapters.http import build_app
from callbackd.adapters.mqtt import MqttIntake
from callbackd.adapters.store import Store
from callbackd.app import Daemon
from callbackd.config import Config, ConfigError, DialerConfig
from callbackd.dialer import Dialer, originate_fields
from callbackd.domain.errors import InvalidNumber
from callbackd.domain.intake import Contact, Source, decide
from callbackd.domain.operators import OperatorPool
from callbackd.domain.phone import E164, sanitize_caller_name

E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")
DIAL_RE = re.compile(r"^[A-Za-z0-9_./@:+-]+$")
UNSAFE_IN_NAMES = set('"<>;&${}\r\n')

# Each would add a channel (&, PJSIP/), an argument (, |), a dialplan expression (${...}), a
# second AMI header (newlines) or a number we did not mean (other scripts' digits) if it
# reached a dial string; the last is too long for any number.
NUMBERS = [
    "+1202555&PJSIP/evil",
    "2025550123&PJSIP/x",
    "2025550123/PJSIP/x",
    "PJSIP/2025550123",
    "123,456",
    "2025550123,20",
    "${EXEC(rm -rf /)}",
    "${SHELL(id)}2025550123",
    "2025550123|PJSIP/x",
    "2025550123;x",
    "2025550123\nChannel: PJSIP/evil",
    "2025550123\r\nAction: Originate",
    "\u0662\u0660\u0662\u0665\u0665\u0665\u0660\u0661\u0662\u0663",  # Arabic-Indic digits
    "\uff12\uff10\uff12\uff15\uff15\uff15\uff10\uff11\uff12\uff13",  # full-width digits
    "2025550123" * 7,
]
NAMES = [
    '"Evil" <+19005550100>',
    "Bob; Dial(PJSIP/x)",
    "${SHELL(rm -rf /)}",
    "Ada & Co {x}",
    "Eve\r\nAction: Originate",
    "Zoë <script>",
]
VALID = "2025550123"


@pytest.fixture
async def daemon(tmp_path):
    """The daemon's own intake on a real SQLite store, under the leadkit RULES; AMI never connected."""
    numbers = {
        "blacklist": sorted(RULES.numbers.blacklist),
        "blocked_prefixes": list(RULES.numbers.blocked_prefixes),
    }
    cfg = daemon_config(tmp_path, numbers=numbers, schedule={"hours": {"mon-sun": "00:00-24:00"}})
    async with built_daemon(cfg) as d:
        assert d.rules == RULES
        yield d


async def stored_rows(store: Store) -> tuple[list[Any], list[Any]]:
    async with store.session() as s:
        contacts = list((await s.execute(select(m.Contact))).scalars())
        requests = list((await s.execute(select(m.Request))).scalars())
    return contacts, requests


def assert_clean(contacts: list[Any], requests: list[Any]) -> None:
    for row in [*contacts, *requests]:
        assert row.number is None or E164_RE.match(row.number), row.number
        assert not UNSAFE_IN_NAMES & set(row.name), row.name


# -- HTTP ------------------------------------------------------------------------------------


async def test_http_form_refuses_every_injected_number_and_cleans_names(daemon):
    app = build_app(daemon.submit, TOKEN, RULES, clock=lambda: NOW)
    transport = httpx.ASGITransport(app=app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://cbd", headers=auth) as client:
        for phone in NUMBERS:
            r = await client.post("/v1/callbacks", json={"phone": phone, "name": "Ada"})
            assert r.status_code == 422, (phone, r.text)
        assert await counts(daemon.store) == (0, 0)
        for field, value in (("source", "a;b"), ("id", "${x}"), ("source", "x/y"), ("id", "a\nb")):
            r = await client.post("/v1/callbacks", json={"phone": VALID, field: value})
            assert r.status_code == 422, (field, value)
        for i, name in enumerate(NAMES):
            r = await client.post("/v1/callbacks", json={"phone": VALID, "name": name, "id": f"n{i}"})
            assert r.status_code == 202, r.text
    contacts, requests = await stored_rows(daemon.store)
    assert len(requests) == 1 and requests[0].number == "+12025550123"
    assert [c.name for c in contacts] == [sanitize_caller_name(n) for n in NAMES]
    assert_clean(contacts, requests)


# -- MQTT ------------------------------------------------------------------------------------


async def test_mqtt_refuses_every_injected_number_over_the_broker(daemon):
    base = f"callbackd-test/{uuid.uuid4().hex}"
    cfg = Config.model_validate({"mqtt": {"topic": f"{base}/leads", "reply_topic": f"{base}/reply"}}).mqtt
    intake = MqttIntake(cfg, daemon.submit, RULES, backoff_initial=0.05)
    intake.start()
    replies = []
    try:
        async with asyncio.timeout(10):
            await intake.connected.wait()
        async with aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5) as peer:
            await peer.subscribe(cfg.reply_topic, qos=1)
            leads = [{"phone": p, "id": f"p{i}"} for i, p in enumerate(NUMBERS)]
            leads += [{"phone": VALID, "name": n, "id": f"n{i}"} for i, n in enumerate(NAMES)]
            for lead in leads:
                await peer.publish(cfg.topic, json.dumps(lead), qos=1)
                async with asyncio.timeout(10):
                    replies.append(json.loads((await anext(aiter(peer.messages))).payload))
    finally:
        await intake.stop()
    refused, accepted = replies[: len(NUMBERS)], replies[len(NUMBERS) :]
    assert all(not r["ok"] and r["code"] in ("invalid", "malformed") for r in refused), refused
    assert all(r["ok"] for r in accepted), accepted
    contacts, requests = await stored_rows(daemon.store)
    assert len(contacts) == len(NAMES) and len(requests) == 1
    assert_clean(contacts, requests)


# -- AGI keypad ------------------------------------------------------------------------------


class AgiSession:
    """Asterisk's side of one AGI session: answers each command from a script, records them all."""

    def __init__(self, headers: dict[str, str], typed: list[str], confirm: str = "1") -> None:
        self.headers = headers
        self.typed = list(typed)
        self.confirm = confirm
        self.sent: list[str] = []

    async def send_command(self, command: str) -> dict[str, Any]:
        self.sent.append(command)
        if command.startswith("GET DATA"):
            return {"result": (self.typed.pop(0) if self.typed else "", "")}
        if command.startswith("WAIT FOR DIGIT"):
            return {"result": (str(ord(self.confirm)), "")}
        return {"result": ("0", "")}


def agi_headers(offered: str, name: str = "") -> dict[str, str]:
    return {"agi_arg_1": offered, "agi_calleridname": name, "agi_uniqueid": uuid.uuid4().hex}


def assert_commands_safe(session: AgiSession) -> None:
    for cmd in session.sent:
        assert "\n" not in cmd and "\r" not in cmd, cmd
        if cmd.startswith("SAY DIGITS"):
            assert re.fullmatch(r'SAY DIGITS [0-9]+ "12"', cmd), cmd


@pytest.mark.parametrize("offered", NUMBERS)
async def test_agi_never_offers_or_stores_an_injected_caller_id(daemon, offered):
    agi = CallbackAgi(daemon.submit, RULES)
    # The offered caller ID is refused, so the caller is asked: first junk, then a real number.
    session = AgiSession(agi_headers(offered, NAMES[0]), typed=["*123#", VALID])
    await agi.callback_request(session)  # type: ignore[arg-type]
    assert_commands_safe(session)
    assert "SAY DIGITS 12025550123" in " ".join(session.sent)
    assert session.sent[-2] == "SET VARIABLE CB_RESULT stored"
    contacts, requests = await stored_rows(daemon.store)
    assert [r.number for r in requests] == ["+12025550123"]
    assert [c.raw_number for c in contacts] == ["+12025550123"]  # never the offered string
    assert_clean(contacts, requests)


@pytest.mark.parametrize(
    "typed",
    [
        ["*123#", "#"],
        ["\u0662\u0660\u0662\u0665\u0665\u0665\u0660\u0661\u0662\u0663", "\u00b2" * 10],  # isdigit() is True
        ["2025550123&1", "1" * 40],
    ],
)
async def test_agi_keypad_junk_stores_nothing(daemon, typed):
    agi = CallbackAgi(daemon.submit, RULES)
    session = AgiSession(agi_headers("anonymous"), typed=typed)
    await agi.callback_request(session)  # type: ignore[arg-type]
    assert_commands_safe(session)
    assert "SET VARIABLE CB_RESULT cancelled" in session.sent
    assert await counts(daemon.store) == (0, 0)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("2025550123", "+12025550123"),
        ("12025550123", "+12025550123"),
        ("0012025550123", "+12025550123"),
        ("+12025550123", "+12025550123"),
        ("*123#", None),
        ("#", None),
        ("", None),
        ("123", None),
        ("1" * 40, None),
    ],
)
def test_keypad_strings_parse_to_e164_or_nothing(keys, expected):
    if expected is None:
        with pytest.raises(InvalidNumber):
            E164.parse(keys, "US")
    else:
        assert E164.parse(keys, "US") == expected


def test_agi_result_helpers_take_only_digits_and_known_reasons():
    assert _digit({"result": ("49", "")}) == "1"
    assert [_digit({"result": (v, "")}) for v in ("35", "42", "-1", "x", "0")] == ["", "", "", "", ""]
    assert _digit({}) == ""
    assert _reason(" After_Hours ") == "after_hours"
    assert _reason("${SHELL(id)}") == "ivr_request"


# -- AMI caller ID ---------------------------------------------------------------------------


def ami_event(*lines: str) -> dict[str, str]:
    """Through panoramisk's own message parser and our adapter, as a socket would deliver it."""
    message = Message.from_line("\r\n".join(lines))
    assert message is not None
    return to_dict(message)


async def feed_call(d: Daemon, linkedid: str, number: str, name: str) -> None:
    ids = (f"Uniqueid: {linkedid}", f"Linkedid: {linkedid}")
    for ev in (
        ami_event(
            "Event: Newchannel",
            *ids,
            "Context: from-pstn",
            "Exten: 100",
            f"CallerIDNum: {number}",
            f"CallerIDName: {name}",
        ),
        ami_event("Event: QueueCallerJoin", *ids, "Queue: support"),
        ami_event("Event: HangupRequest", *ids),
        ami_event("Event: QueueCallerAbandon", *ids, "Queue: support", "HoldTime: 30"),
        ami_event("Event: Hangup", *ids),
    ):
        d.on_event(ev)
    await d.intake.idle()


# CR LF ends an AMI header line, so on the wire it cannot be inside a value (see the next test).
@pytest.mark.parametrize("number", [n for n in NUMBERS if "\r\n" not in n])
async def test_ami_caller_id_injection_is_recorded_never_scheduled(daemon, number):
    await feed_call(daemon, "1700000000.1", number, NAMES[1])
    contacts, requests = await stored_rows(daemon.store)
    assert requests == []
    assert_clean(contacts, requests)
    async with daemon.store.session() as s:
        calls = list((await s.execute(select(m.Call))).scalars())
    assert [c.number for c in calls] == [None] and not UNSAFE_IN_NAMES & set(calls[0].caller_name)


def test_ami_framing_keeps_a_line_break_out_of_every_value():
    event = ami_event("Event: Newchannel", "CallerIDNum: 2025550123\r\nAction: Originate\nChannel: x\x00")
    assert event == {"Event": "Newchannel", "CallerIDNum": "2025550123", "Action": "OriginateChannel: x"}


@pytest.mark.parametrize("name", NAMES)
async def test_ami_caller_name_injection_is_sanitised(daemon, name):
    await feed_call(daemon, "1700000000.2", VALID, name)
    contacts, requests = await stored_rows(daemon.store)
    assert len(requests) == 1 and requests[0].number == "+12025550123"
    assert_clean(contacts, requests)


# -- the Originate -------------------------------------------------------------------------


RUN = SimpleNamespace(attempt_id="a1", channel_id="cbd-a1", operator="PJSIP/op1", try_no=1)


@pytest.mark.parametrize("name", [*NAMES, *NUMBERS, "", "x" * 500])
def test_originate_fields_carry_only_e164_and_a_sanitised_name(name):
    fields = originate_fields(DialerConfig(), RUN, name, E164("+12025550123"), "queue_abandon")
    shown = re.fullmatch(r'"([^"]*)" <(\+12025550123)>', fields["CallerID"])
    assert shown, fields["CallerID"]
    assert not UNSAFE_IN_NAMES & set(shown.group(1)) and len(shown.group(1)) <= 40
    variables = dict(v.split("=", 1) for v in fields["Variable"])
    assert variables["CBD_DIAL"] == "PJSIP/+12025550123@trunk" and DIAL_RE.match(variables["CBD_DIAL"])
    for value in [*fields["Variable"], *(v for k, v in fields.items() if k != "Variable")]:
        assert "\n" not in value and "\r" not in value


@pytest.mark.parametrize("number", NUMBERS)
def test_originate_fields_refuse_anything_but_e164(number):
    with pytest.raises(InvalidNumber):
        originate_fields(DialerConfig(), RUN, "Ada", number, "queue_abandon")  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", ["PJSIP/{number}@trunk&PJSIP/evil", "PJSIP/{number},20", "${X}{number}"])
def test_dial_pattern_cannot_smuggle_a_second_channel(pattern):
    with pytest.raises((ConfigError, ValueError), match="dial_pattern"):
        Config.model_validate({"dialer": {"dial_pattern": pattern}})


async def test_a_number_written_behind_our_back_is_failed_never_dialled(lead_store):
    """Even a row changed in the database by hand cannot reach an Originate."""
    contact = Contact(Source.HTTP, "t1", VALID, "web_form", NOW)
    res = await lead_store.record_contact(contact, decide(contact, RULES))
    async with lead_store.session() as s, s.begin():
        await s.execute(
            update(m.Request).where(m.Request.id == res.request_id).values(number="+1202555&PJSIP/evil")
        )
    pool = OperatorPool(["support"])
    pool.update({"Event": "QueueMemberStatus", "Queue": "support", "Interface": "PJSIP/op1", "Status": "1"})
    ami = RecordingAmi()
    dialer = Dialer(DialerConfig(), lead_store, ami, pool, clock=lambda: NOW)  # type: ignore[arg-type]
    with capture_logs() as logs:
        await dialer.tick()
        await asyncio.sleep(0)
    await dialer.close()
    assert ami.originates == [] and pool.free(NOW.timestamp()) != []  # operator not held
    req, attempts, _ = await lead_store.get_request(res.request_id)
    assert req.status == "failed" and attempts == []
    assert [e["event"] for e in logs] == ["request.bad_number"]
