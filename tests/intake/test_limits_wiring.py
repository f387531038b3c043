"""The abuse limits as the daemon applies them: Daemon.submit on a real SQLite store, the AGI, HTTP
and MQTT answers (MQTT through the real Mosquitto), and the dialer's hourly attempt cap."""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import httpx
import pytest
from daemonkit import RecordingAmi, built_daemon, daemon_config
from leadkit import TOKEN, counts, free_port
from sqlalchemy import select
from structlog.testing import capture_logs

from callbackd.adapters import models as m
from callbackd.adapters.agi import CallbackAgi
from callbackd.adapters.http import build_app
from callbackd.adapters.mqtt import MqttIntake
from callbackd.app import Daemon
from callbackd.config import Config
from callbackd.dialer import Dialer
from callbackd.domain.intake import Contact, Disposition, IntakeRules, Source, decide
from callbackd.domain.limits import GLOBAL_RATE, NUMBER_RATE, AbuseGuard, AbuseLimits
from callbackd.domain.operators import OperatorPool
from callbackd.domain.states import RequestEvent

NUMBER = "+12025550123"
ALWAYS = {"hours": {"mon-sun": "00:00-24:00"}}
AT = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
async def daemon_factory(tmp_path):
    """Daemons built as the service builds them, on one SQLite file, dialling through RecordingAmi."""
    async with AsyncExitStack() as stack:

        async def factory(limits: dict[str, Any], **cfg: Any) -> Daemon:
            config = daemon_config(tmp_path, limits=limits, schedule=ALWAYS, **cfg)
            return await stack.enter_async_context(built_daemon(config, ami=RecordingAmi()))

        yield factory


def call(ref: str, number: str = NUMBER, source: Source = Source.AMI) -> Contact:
    return Contact(source=source, source_ref=ref, raw_number=number, reason="queue_abandon", at=AT, waited=30)


async def close(d: Daemon, request_id: int | None) -> None:
    assert request_id is not None
    await d.store.admin_event(request_id, RequestEvent.CANCEL, AT)


async def test_per_number_limit_counts_new_requests_not_merges(daemon_factory):
    d = await daemon_factory({"new_requests_per_number": 2})
    first = await d.submit(call("c1"))
    assert first.created and first.disposition is Disposition.SCHEDULE
    for i in range(5):  # merges into the open request are never refused
        assert (await d.submit(call(f"m{i}"))).merged
    await close(d, first.request_id)
    second = await d.submit(call("c2"))
    assert second.created
    await close(d, second.request_id)

    with capture_logs() as logs:
        third = await d.submit(call("c3"))
        web = await d.submit(call("w1", source=Source.HTTP))
    assert third.disposition is Disposition.RATE_LIMITED and third.request_id is None
    assert third.contact_id is not None  # a call is kept for the record
    assert web.disposition is Disposition.RATE_LIMITED and web.contact_id is None  # a web lead is not
    assert d.refusals == {NUMBER_RATE: 2}
    refused = [e for e in logs if e["event"] == "contact.refused"]
    assert [(e["reason"], e["source"]) for e in refused] == [(NUMBER_RATE, "ami"), (NUMBER_RATE, "http")]
    async with d.store.session() as s:
        row = (await s.execute(select(m.Contact).where(m.Contact.source_ref == "c3"))).scalar_one()
    assert (row.disposition, row.detail, row.request_id) == ("rate_limited", NUMBER_RATE, None)
    # Another number is not affected; a duplicate is still answered as one.
    assert (await d.submit(call("o1", number="+13125550188"))).created
    assert (await d.submit(call("c1"))).duplicate


async def test_global_limit_and_admin_requests_are_exempt(daemon_factory):
    d = await daemon_factory({"new_requests_global": 2, "new_requests_per_number": 0})
    assert (await d.submit(call("a", "+12025550123"))).created
    assert (await d.submit(call("b", "+13125550188"))).created
    assert (await d.submit(call("c", "+14155550100"))).disposition is Disposition.RATE_LIMITED
    assert (await d.submit(call("a2", "+12025550123"))).merged
    assert (await d.submit(call("d", "+14155550100", source=Source.ADMIN))).created
    assert d.refusals == {GLOBAL_RATE: 1}


async def test_blocked_numbers_are_counted_as_refusals_too(daemon_factory):
    d = await daemon_factory({}, numbers={"blocked_prefixes": ["+1900"]})
    res = await d.submit(call("p", "+19005550123"))
    assert res.disposition is Disposition.BLOCKED and res.request_id is None
    assert d.refusals == {"prefix_blocked": 1}


async def test_zero_turns_the_limits_off(daemon_factory):
    d = await daemon_factory({"new_requests_per_number": 0, "new_requests_global": 0})
    for i in range(6):
        res = await d.submit(call(f"c{i}"))
        assert res.created
        await close(d, res.request_id)
    assert not d.refusals


async def test_http_answers_429_and_stores_nothing(daemon_factory):
    d = await daemon_factory({"new_requests_per_number": 1})
    app = build_app(d.submit, TOKEN, d.rules)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://callbackd", headers=auth) as client:
        ok = await client.post("/v1/callbacks", json={"phone": "2025550123"})
        assert ok.status_code == 202
        await close(d, ok.json()["request_id"])
        before = await counts(d.store)
        refused = await client.post("/v1/callbacks", json={"phone": "2025550123", "id": "x1"})
        assert refused.status_code == 429, refused.text
        assert refused.json() == {"detail": "too many callback requests; try again later"}
        assert await counts(d.store) == before
        spec = (await client.get("/openapi.json")).json()
    assert "429" in spec["paths"]["/v1/callbacks"]["post"]["responses"]


async def test_mqtt_replies_rate_limited_over_the_broker(daemon_factory):
    d = await daemon_factory({"new_requests_global": 1})
    base = f"callbackd-test/{uuid.uuid4().hex}"
    cfg = Config.model_validate({"mqtt": {"topic": f"{base}/leads", "reply_topic": f"{base}/reply"}}).mqtt
    intake = MqttIntake(cfg, d.submit, d.rules, backoff_initial=0.05)
    intake.start()
    try:
        async with asyncio.timeout(10):
            await intake.connected.wait()
        async with aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5) as peer:
            await peer.subscribe(cfg.reply_topic, qos=1)
            replies = []
            for lead in ({"phone": "2025550123", "id": "a"}, {"phone": "3125550188", "id": "b"}):
                await peer.publish(cfg.topic, json.dumps(lead), qos=1)
                async with asyncio.timeout(10):
                    replies.append(json.loads((await anext(aiter(peer.messages))).payload))
    finally:
        await intake.stop()
    assert replies[0]["ok"] and replies[0]["status"] == "created"
    assert replies[1] == {"ok": False, "code": "rate_limited", "error": replies[1]["error"], "id": "b"}
    assert await counts(d.store) == (1, 1)


async def tick(dialer: Dialer) -> None:
    """One dialer round, then let the attempts it launched send their Originate."""
    await dialer.tick()
    for _ in range(20):
        await asyncio.sleep(0)


async def test_dialer_stops_at_the_hourly_attempt_cap_and_says_so_once_an_hour(lead_store):
    clock = [AT]
    pool = OperatorPool(["support"])
    for i in range(6):
        pool.update(
            {
                "Event": "QueueMemberStatus",
                "Queue": "support",
                "Interface": f"PJSIP/op{i}",
                "StateInterface": f"PJSIP/op{i}",
                "Status": "1",
                "Paused": "0",
            }
        )
    cfg = Config.model_validate({"dialer": {"max_concurrent": 6}}).dialer
    ami = RecordingAmi()
    guard = AbuseGuard(AbuseLimits(attempts_per_hour=2))
    dialer = Dialer(cfg, lead_store, ami, pool, clock=lambda: clock[0], guard=guard)  # type: ignore[arg-type]
    for i in range(5):
        c = call(f"r{i}", f"+1202555010{i + 1}")
        await lead_store.record_contact(c, decide(c, IntakeRules()))
    try:
        with capture_logs() as logs:
            await tick(dialer)
            assert len(ami.originates) == 2
            for minutes in (1, 2, 30):
                clock[0] = AT + timedelta(minutes=minutes)
                await tick(dialer)
            assert len(ami.originates) == 2
            assert [e["event"] for e in logs].count("dialer.capped") == 1
            clock[0] = AT + timedelta(minutes=61)
            await tick(dialer)
            assert len(ami.originates) == 4
            clock[0] = AT + timedelta(minutes=62)
            await tick(dialer)
            assert len(ami.originates) == 4
        capped = [e for e in logs if e["event"] == "dialer.capped"]
        assert len(capped) == 2 and capped[0]["attempts_per_hour"] == 2
        # Requests left waiting by the cap are still open, not claimed.
        assert len(await lead_store.list_requests(status="open")) == 1
    finally:
        await dialer.close()


class KeypadSession:
    """Asterisk's side of an AGI session: no key pressed, so the caller's own number is kept."""

    def __init__(self, uniqueid: str) -> None:
        self.headers = {"agi_arg_1": "2025550123", "agi_uniqueid": uniqueid}
        self.sent: list[str] = []

    async def send_command(self, command: str) -> dict[str, Any]:
        self.sent.append(command)
        return {"result": ("0", "")}


async def test_agi_tells_a_rate_limited_caller_blocked_and_keeps_the_contact(daemon_factory):
    d = await daemon_factory({"new_requests_per_number": 1})
    agi = CallbackAgi(d.submit, d.rules)
    first, second = KeypadSession("u1"), KeypadSession("u2")
    await agi.callback_request(first)  # type: ignore[arg-type]
    assert "SET VARIABLE CB_RESULT stored" in first.sent
    async with d.store.session() as s:
        rid = (await s.execute(select(m.Request.id))).scalar_one()
    await close(d, rid)
    await agi.callback_request(second)  # type: ignore[arg-type]
    assert "SET VARIABLE CB_RESULT blocked" in second.sent
    assert await counts(d.store) == (2, 1)
    assert d.refusals == {NUMBER_RATE: 1}


async def test_concurrent_http_leads_cannot_pass_the_global_limit_together(daemon_factory, monkeypatch):
    """100 leads at once over the real HTTP listener, global limit 5: the slots are taken before any
    await, so exactly 5 requests open and 95 get 429 (it used to be: all 100 checked, then all stored)."""
    monkeypatch.setenv("CALLBACKD_HTTP_TOKEN", TOKEN)
    port = free_port()
    d = await daemon_factory(
        {"new_requests_global": 5, "new_requests_per_number": 0}, http={"enabled": True, "port": port}
    )
    async with AsyncExitStack() as stack:
        await d._start_lead_intake(stack)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=auth, limits=limits
        ) as client:
            answers = await asyncio.gather(
                *(client.post("/v1/callbacks", json={"phone": f"20255501{i:02d}"}) for i in range(100))
            )
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * 5 + [429] * 95, codes
    assert await counts(d.store) == (5, 5)
    assert d.refusals == {GLOBAL_RATE: 95}


async def test_a_slot_not_used_is_given_back(daemon_factory):
    """A contact that merges, repeats or is not stored gives its slot back for the next new number."""
    d = await daemon_factory({"new_requests_global": 2, "new_requests_per_number": 0})
    assert (await d.submit(call("a", "+12025550123"))).created
    assert (await d.submit(call("a", "+12025550123"))).duplicate
    assert (await d.submit(call("a2", "+12025550123"))).merged
    assert (await d.submit(call("b", "+13125550188"))).created
    assert (await d.submit(call("c", "+14155550100"))).disposition is Disposition.RATE_LIMITED
    assert d.refusals == {GLOBAL_RATE: 1}
