"""Every source of missed contacts, on the real lab (and real Mosquitto), each producing exactly the
right request or none. Operators are paused in the queue unless a test needs them, so callbackd stores
requests without dialling them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import aiomqtt
import httpx
import pytest
from labdaemon import cli, lab_config, requests_json

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("profile")]

TOKEN = "lab-http-token-0123456789"


def contacts(config) -> list[dict]:
    rows: list[dict] = []
    for req in requests_json(config, "list", "--json"):
        rows += requests_json(config, "show", str(req["id"]))["contacts_detail"]
    return rows


async def call(lab, number, hangup_after, to="100", *extra):
    return await asyncio.to_thread(lab.call, number, hangup_after, to, *extra)


async def wait(daemon, name, timeout=20, **match):
    return await asyncio.to_thread(daemon.wait_for, name, timeout, **match)


async def test_each_asterisk_source_gives_one_request_with_its_reason(lab, paused, daemon_factory, tmp_path):
    daemon = daemon_factory()
    cases = [
        ("2025550101", 7, "100", "queue_abandon"),
        ("2025550102", 0, "106", "queue_timeout"),  # Queue(...,8) times out, no QueueCallerAbandon
        ("2025550103", 7, "105", "ivr_hangup"),
        ("2025550104", 7, "104", "after_hours"),
    ]
    for number, after, ext, reason in cases:
        await call(lab, number, after, ext)
        missed = await wait(daemon, "call.missed", 20, number=number)
        assert missed["reason"] == reason
        await wait(daemon, "request.stored", 10, number=f"+1{number}")
    # A ring group / extension nobody answers: op1 busy on ext 102.
    lab.operator("op1", "busy")
    await call(lab, "2025550105", 5, "102")
    assert (await wait(daemon, "call.missed", 20, number="2025550105"))["reason"] == "no_answer"
    lab.operator("op1", "answer")
    await wait(daemon, "request.stored", 10, number="+12025550105")

    reqs = requests_json(daemon.config, "list", "--json")
    assert sorted((r["number"], r["reason"]) for r in reqs) == sorted(
        [(f"+1{n}", reason) for n, _, _, reason in cases] + [("+12025550105", "no_answer")]
    )
    assert all(r["status"] == "open" and r["contacts"] == 1 for r in reqs)
    assert daemon.events("operator.ringing") == []  # paused operators are never rung


async def test_press_1_in_the_queue_and_after_hours_over_fastagi(lab, paused, daemon_factory):
    daemon = daemon_factory()
    # In the queue: the caller presses 1, leaves for callbackd-queue-exit, the AGI keeps the caller's number.
    await call(lab, "2025550111", 25, "100", "--dtmf", "1", "--dtmf-after", "2")
    stored = await wait(daemon, "agi.callback_request", 30)
    assert stored["result"] == "schedule" and stored["reason"] == "queue_press1"
    # After hours: the call is marked, the caller presses 1 in the menu.
    await call(lab, "2025550112", 25, "104", "--dtmf", "1", "--dtmf-after", "1")
    stored = await wait(daemon, "agi.callback_request", 30, reason="after_hours")
    reqs = {r["number"]: r for r in requests_json(daemon.config, "list", "--json")}
    assert "agi" in reqs["+12025550111"]["sources"]
    assert "agi" in reqs["+12025550112"]["sources"]
    assert reqs["+12025550112"]["reason"] in ("after_hours",)
    # One request per number even though AMI saw the same calls end unanswered.
    assert len(reqs) == 2


async def test_merge_short_abandon_blacklist_anonymous_and_restart(lab, paused, daemon_factory, tmp_path):
    config = lab_config(
        tmp_path,
        replace={'default_region = "US"': 'default_region = "US"\nblacklist = ["+12025550166"]'},
    )
    daemon = daemon_factory(config)
    await call(lab, "2025550121", 7)
    first = await wait(daemon, "request.stored", 15, number="+12025550121")
    # Short abandon: recorded, not called back.
    await call(lab, "2025550122", 2)
    short = await wait(daemon, "contact.not_scheduled", 15, disposition="short")
    # Blacklisted and anonymous callers: recorded, not scheduled.
    await call(lab, "2025550166", 7)
    await wait(daemon, "contact.refused", 15, disposition="blocked", reason="blacklisted")
    await call(lab, "anonymous", 7)
    await wait(daemon, "contact.not_scheduled", 15, disposition="anonymous")
    assert short["detail"].startswith("waited")

    # A restart between two misses from the same number: the second merges into the first request.
    assert daemon.stop() == 0
    daemon = daemon_factory(config)
    await call(lab, "2025550121", 7)
    merged = await wait(daemon, "request.stored", 15, number="+12025550121")
    assert merged["merged"] is True and merged["request_id"] == first["request_id"]

    reqs = requests_json(daemon.config, "list", "--json")
    assert [(r["number"], r["contacts"]) for r in reqs] == [("+12025550121", 2)]
    dispositions = sorted(c["disposition"] for c in contacts(daemon.config))
    assert dispositions == ["schedule", "schedule"]  # the request's own contacts
    db = cli(daemon.config, "requests", "list", "--json")
    assert db.returncode == 0


async def test_web_forms_over_http_and_mqtt_merge_into_one_request(lab, paused, daemon_factory, tmp_path):
    topic = f"callbackd-test/{uuid.uuid4().hex}"
    extra = f"""
[http]
enabled = true
host = "127.0.0.1"
port = 18380
token = "{TOKEN}"

[mqtt]
enabled = true
host = "127.0.0.1"
port = 1883
topic = "{topic}/leads"
reply_topic = "{topic}/reply"
"""
    daemon = daemon_factory(lab_config(tmp_path, extra=extra))
    async with httpx.AsyncClient(base_url="http://127.0.0.1:18380") as http:
        ok = await http.post(
            "/v1/callbacks",
            json={"phone": "(202) 555-0131", "name": "Web Lead", "source": "site"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert ok.status_code == 202, ok.text
        bad = await http.post(
            "/v1/callbacks", json={"phone": "+1202555&PJSIP/x"}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert bad.status_code == 422
        assert (await http.post("/v1/callbacks", json={"phone": "2025550131"})).status_code == 401
    async with aiomqtt.Client("127.0.0.1", 1883) as mqtt:
        await mqtt.subscribe(f"{topic}/reply")
        await mqtt.publish(f"{topic}/leads", b"{not json")
        await mqtt.publish(f"{topic}/leads", json.dumps({"phone": "+12025550131", "comment": "call after 3"}))
        replies = []
        async with asyncio.timeout(15):
            async for msg in mqtt.messages:
                replies.append(json.loads(msg.payload))
                if len(replies) == 2:
                    break
    assert [r["ok"] for r in replies] == [False, True]
    assert replies[1]["request_id"] == ok.json()["request_id"] and replies[1]["status"] == "merged"
    [req] = requests_json(daemon.config, "list", "--json")
    assert req["sources"] == ["http", "mqtt"] and req["contacts"] == 2 and req["name"] == "Web Lead"


async def test_self_recovery_by_a_call_in_and_by_a_manual_call(lab, paused, daemon_factory, watch):
    daemon = daemon_factory()
    await call(lab, "2025550141", 7)
    await call(lab, "2025550142", 7)
    await wait(daemon, "request.stored", 15, number="+12025550141")
    await wait(daemon, "request.stored", 15, number="+12025550142")

    # The client calls in again and waits; an operator comes back and answers the live call.
    # callbackd holds back while the caller waits, so the live call wins.
    task = asyncio.create_task(call(lab, "2025550141", 12))
    await asyncio.sleep(3)
    lab.pause("op1", on=False)
    rec = await wait(daemon, "request.recovered", 20, how="client_called_in")
    assert rec["number"] == "+12025550141"
    await task
    lab.pause("op1")

    # An operator calls the other client by hand from the phone, and the client answers.
    await watch_originate_manual(watch, "PJSIP/op2", "+12025550142", lab.profile)
    rec = await wait(daemon, "request.recovered", 20, how="operator_called")
    assert rec["number"] == "+12025550142"
    statuses = {r["number"]: r["status"] for r in requests_json(daemon.config, "list", "--json")}
    assert statuses == {"+12025550141": "recovered", "+12025550142": "recovered"}


async def watch_originate_manual(watch, operator: str, number: str, profile) -> None:
    """The lab places a call from an operator's phone to an outside number (as the phone dials it)."""
    from callbackd.adapters.ami import AmiClient

    client = AmiClient(
        host="127.0.0.1", port=5038, username="lab", secret="lab-admin-secret", on_event=lambda e: None
    )
    await client.start()
    try:
        fut = client.originate(
            {
                "Channel": operator,
                "Context": profile.manual_context,
                "Exten": profile.manual_number(number),
                "Priority": "1",
                "Timeout": "10000",
            }
        )
        replies = await asyncio.wait_for(fut, 20)
        assert replies[-1].get("Reason") == "4"
    finally:
        await client.close()


async def test_ami_reconnect_resyncs_and_never_duplicates(lab, paused, daemon_factory):
    daemon = daemon_factory()
    await call(lab, "2025550151", 7)
    await wait(daemon, "request.stored", 15, number="+12025550151")
    lab.run("up", "--restart")
    for op in ("op1", "op2"):
        lab.pause(op)
    login = await wait(daemon, "ami.login", 40, reconnects=1)
    assert login["gap_s"] > 0
    await wait(daemon, "ami.resynced", 20)
    await call(lab, "2025550151", 7)
    merged = await wait(daemon, "request.stored", 15, merged=True)
    assert merged["number"] == "+12025550151"
    assert len(requests_json(daemon.config, "list", "--json")) == 1


async def test_an_originate_into_the_inbound_context_is_neither_missed_nor_offered(
    lab, paused, daemon_factory, tmp_path
):
    """A CRM's click-to-call or another dialer: the PBX dials out, the call runs in from-pstn."""
    from callbackd.adapters.ami import AmiClient

    daemon = daemon_factory()
    start = datetime.now(UTC) - timedelta(seconds=5)
    client = AmiClient(
        host="127.0.0.1", port=5038, username="lab", secret="lab-admin-secret", on_event=lambda e: None
    )
    await client.start()
    try:
        replies = await asyncio.wait_for(
            client.originate(
                {
                    "Channel": "PJSIP/+12025550161@pstn",
                    "Context": "from-pstn",
                    "Exten": "105",
                    "Priority": "1",
                    "Timeout": "10000",
                }
            ),
            20,
        )
        assert replies[-1].get("Reason") == "4"
    finally:
        await client.close()
    await asyncio.sleep(5)  # the PSTN side hangs up after 3 s
    await call(lab, "2025550162", 7)  # a real abandon after it, as a witness that detection runs
    await wait(daemon, "call.missed", 20, number="2025550162")
    assert [e["number"] for e in daemon.events("call.missed")] == ["2025550162"]
    end = datetime.now(UTC) + timedelta(seconds=5)
    calls = cli(daemon.config, "export", "calls", "--from", start.isoformat(), "--to", end.isoformat()).stdout
    assert len(list(csv.DictReader(io.StringIO(calls)))) == 1  # only the witness was offered
