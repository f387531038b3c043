"""The walking skeleton end to end on the real lab: a caller abandons the queue, callbackd stores one
request, rings a free operator, dials the client and bridges them, and stores the outcome."""

from __future__ import annotations

import asyncio

import pytest
from labdaemon import requests_json

pytestmark = pytest.mark.lab


async def test_abandoned_call_is_called_back_operator_first(lab, watch, daemon_factory, tmp_path):
    lab.operator("op1,op2", "answer")
    lab.pstn("--reset")
    # Paused operators are not free: the queue cannot reach them and callbackd must wait.
    lab.run("cli", "queue pause member PJSIP/op1 queue support")
    lab.run("cli", "queue pause member PJSIP/op2 queue support")
    try:
        daemon = daemon_factory()
        caller = "2025550171"
        await asyncio.to_thread(lab.call, caller, 7)
        missed = await asyncio.to_thread(daemon.wait_for, "call.missed", 15, reason="queue_abandon")
        assert missed["number"] == caller and missed["waited"] >= 5
        stored = await asyncio.to_thread(daemon.wait_for, "request.stored", 15)
        assert stored["number"] == "+12025550171" and stored["merged"] is False
        await asyncio.sleep(2)
        assert daemon.events("operator.ringing") == [], "rang a paused operator"
        # op1 alone becomes free: op2 stays paused until the callback has rung op1 (unpausing both at
        # once would leave the choice to least-recently-used, which earlier tests decide).
        lab.run("cli", "queue unpause member PJSIP/op1 queue support")
        ringing = await asyncio.to_thread(daemon.wait_for, "operator.ringing", 15)
    finally:
        lab.run("cli", "queue unpause member PJSIP/op1 queue support")
        lab.run("cli", "queue unpause member PJSIP/op2 queue support")

    assert ringing["operator"] == "PJSIP/op1" and ringing["try_no"] == 1
    attempt_id = ringing["attempt_id"]
    await asyncio.to_thread(daemon.wait_for, "client.ringing", 30, attempt_id=attempt_id)
    await asyncio.to_thread(daemon.wait_for, "bridged", 30, attempt_id=attempt_id)
    outcome = await asyncio.to_thread(daemon.wait_for, "attempt.outcome", 40, attempt_id=attempt_id)
    assert outcome["outcome"] == "answered" and outcome["request_status"] == "reached"

    # Both legs were bridged, as an independent AMI connection saw it.
    channel_id = f"cbd-{attempt_id}"
    entered = watch.of("BridgeEnter", Linkedid=channel_id)
    assert len({e["Uniqueid"] for e in entered}) == 2, entered
    assert len({e["BridgeUniqueid"] for e in entered}) == 1
    assert {e["Channel"].split("-")[0] for e in entered} == {"PJSIP/op1", "PJSIP/pstn"}
    # The operator's phone was rung showing the client's number.
    [dial] = watch.of("DialBegin", DestUniqueid=channel_id)
    assert dial["DestCallerIDNum"] == "+12025550171"

    [req] = requests_json(daemon.config, "list", "--json")
    assert req["status"] == "reached" and req["number"] == "+12025550171" and req["contacts"] == 1
    detail = requests_json(daemon.config, "show", str(req["id"]))
    [attempt] = detail["attempts_detail"]
    assert attempt["outcome"] == "answered" and attempt["operator"] == "PJSIP/op1"
    assert attempt["dial_status"] == "ANSWER" and attempt["talk_seconds"] >= 2
    assert daemon.stop() == 0
