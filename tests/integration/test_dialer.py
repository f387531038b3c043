"""The operator-first dialer on the real lab: operator failover, the ladder, invalid numbers, the cap,
live callers first, and a kill -9 mid-call without a second dial."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import datetime
from pathlib import Path

import pytest
from labdaemon import DaemonProcess, cli, lab_config, requests_json

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("profile")]


async def wait(daemon, name, timeout=30, **match):
    return await asyncio.to_thread(daemon.wait_for, name, timeout, **match)


def add(config, number: str) -> None:
    out = cli(config, "requests", "add", number, "--name", "Test Client")
    assert "created" in out.stdout, out.stdout + out.stderr


def ts(event: dict) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


def show(config, number: str) -> dict:
    [req] = [r for r in requests_json(config, "list", "--json") if r["number"] == number]
    return requests_json(config, "show", str(req["id"]))


async def test_operator_who_does_not_answer_then_one_who_does(lab, fresh, daemon_factory, tmp_path):
    lab.operator("op1", "noanswer")
    lab.pause("op2")  # only op1 is free at first
    daemon = daemon_factory()
    add(daemon.config, "+12025550201")
    first = await wait(daemon, "operator.ringing", 15)
    assert first["operator"] == lab.member("op1")
    lab.pause("op2", on=False)
    out1 = await wait(daemon, "attempt.outcome", 30, attempt_id=first["attempt_id"])
    assert out1["outcome"] == "operator_no_answer" and out1["counted"] is False
    second = await wait(daemon, "operator.ringing", 15, operator=lab.member("op2"))
    out2 = await wait(daemon, "attempt.outcome", 40, attempt_id=second["attempt_id"])
    assert out2["outcome"] == "answered" and out2["request_status"] == "reached"
    req = show(daemon.config, "+12025550201")
    assert req["attempts"] == 1  # the operator's failure did not use a client try
    assert [(a["operator"], a["outcome"], a["try"]) for a in req["attempts_detail"]] == [
        (lab.member("op1"), "operator_no_answer", 1),
        (lab.member("op2"), "answered", 1),
    ]


async def test_client_busy_on_try_one_answers_on_try_two(lab, fresh, daemon_factory, tmp_path):
    lab.pstn("+12025550202", "busy,answer")
    # After a busy line the wait is schedule.outcome_delays.busy (10 min by default), not the rung.
    config = lab_config(
        tmp_path, replace={'delays = ["1h", "3h", "6h"]': 'delays = ["4s"]\noutcome_delays = { busy = "4s" }'}
    )
    daemon = daemon_factory(config)
    add(config, "+12025550202")
    o1 = await wait(daemon, "attempt.outcome", 40, number="+12025550202", try_no=1)
    assert o1["outcome"] == "client_busy" and o1["counted"] and o1["request_status"] == "open"
    o2 = await wait(daemon, "attempt.outcome", 60, number="+12025550202", try_no=2)
    assert o2["outcome"] == "answered" and o2["request_status"] == "reached"
    r1 = await wait(daemon, "operator.ringing", 1, try_no=1)
    r2 = await wait(daemon, "operator.ringing", 1, try_no=2)
    gap = (ts(r2) - ts(r1)).total_seconds()
    assert gap >= 4, gap  # the ladder's delay counts from the previous try's start
    req = show(config, "+12025550202")
    assert req["attempts"] == 2 and [a["outcome"] for a in req["attempts_detail"]] == [
        "client_busy",
        "answered",
    ]
    assert req["attempts_detail"][0]["hangup_cause"] == 17


async def test_invalid_number_is_closed_without_more_tries(lab, fresh, daemon_factory, tmp_path):
    config = lab_config(tmp_path, replace={'delays = ["1h", "3h", "6h"]': 'delays = ["2s"]'})
    daemon = daemon_factory(config)
    add(config, "+12025550210")  # the lab's PSTN answers ...0 with 404: Q.850 cause 1
    out = await wait(daemon, "attempt.outcome", 40, number="+12025550210")
    assert out["outcome"] == "invalid_number" and out["request_status"] == "failed"
    assert out["close_reason"] == "invalid_number"
    await asyncio.sleep(4)  # longer than the ladder's delay: nothing more is dialled
    assert len(daemon.events("operator.ringing", number="+12025550210")) == 1
    req = show(config, "+12025550210")
    assert req["attempts_detail"][0]["hangup_cause"] == 1


async def test_never_more_calls_at_once_than_the_cap(lab, fresh, daemon_factory, watch, tmp_path):
    config = lab_config(tmp_path, replace={"max_concurrent = 2": "max_concurrent = 1"})
    daemon = daemon_factory(config)
    for n in ("+12025550221", "+12025550222", "+12025550223"):
        add(config, n)
    for n in ("+12025550221", "+12025550222", "+12025550223"):
        out = await wait(daemon, "attempt.outcome", 60, number=n)
        assert out["outcome"] == "answered"
    # At no moment were two callback channels alive, though two operators were free.
    live: set[str] = set()
    peak = 0
    for e in watch.events:
        uid = e.get("Uniqueid", "")
        # One callback is one root channel; a Local operator adds its ;2 half (cbd-<id>-2).
        if not uid.startswith("cbd-") or e.get("Linkedid") != uid:
            continue
        if e.get("Event") == "Newchannel":
            live.add(uid)
            peak = max(peak, len(live))
        elif e.get("Event") == "Hangup":
            live.discard(uid)
    assert peak == 1


async def test_live_callers_waiting_hold_callbacks_back(lab, fresh, daemon_factory, tmp_path):
    # The sales queue rings op2 (away) first; op1 stays free the whole time.
    lab.operator("op2", "noanswer")
    config = lab_config(tmp_path, replace={'queues = ["support"]': 'queues = ["support", "sales"]'})
    daemon = daemon_factory(config)
    await no_callback_while_a_sales_caller_waits(lab, daemon, config, "2025550231", "+12025550232")


async def no_callback_while_a_sales_caller_waits(lab, daemon, config, caller: str, lead: str) -> None:
    """A sales caller waits 8 s and hangs up; a request added meanwhile rings only after."""
    call = asyncio.create_task(asyncio.to_thread(lab.call, caller, 8, "101"))
    await asyncio.sleep(2)
    add(config, lead)
    abandon = await wait(daemon, "call.missed", 20, number=caller)
    await call
    ringing = await wait(daemon, "operator.ringing", 20)
    assert ts(ringing) > ts(abandon), "a callback took an operator a live caller was waiting for"


async def test_a_caller_waiting_in_a_queue_the_dialer_does_not_serve_holds_the_operators_it_shares(
    lab, fresh, daemon_factory, tmp_path
):
    """The dialer serves support only; op1 and op2 answer sales too. While a sales caller waits
    (op2 rung first and not answering, op1 next in line), no callback takes op1."""
    lab.operator("op2", "noanswer")
    config = lab_config(tmp_path)  # queues = ["support"]
    daemon = daemon_factory(config)
    await no_callback_while_a_sales_caller_waits(lab, daemon, config, "2025550233", "+12025550234")


async def test_a_sales_abandon_is_called_back_by_a_sales_member_with_the_sales_caller_id(
    lab, fresh, daemon_factory, tmp_path
):
    """Callbacks per queue: op1 is paused in sales only, op2 in sales while the caller waits (an
    abandon). The callback waits for a sales member though op1 is free for support all along,
    rings op2 once unpaused in sales, and goes out with sales' own caller ID; op1 still takes
    support's work."""
    lab.pause("op1", "sales")
    lab.pause("op2", "sales")
    config = lab_config(
        tmp_path,
        replace={'queues = ["support"]': 'queues = ["support", "sales"]'},
        extra='[dialer.by_queue.sales]\noutbound_callerid = "+12025550177"\n',
    )
    daemon = daemon_factory(config)
    await asyncio.to_thread(lab.call, "2025550261", 8, "101")
    missed = await wait(daemon, "call.missed", 20, number="2025550261")
    assert missed["queue"] == "sales"
    await asyncio.sleep(3)
    assert daemon.events("operator.ringing") == [], "a support member took a sales callback"
    lab.pause("op2", "sales", on=False)
    ringing = await wait(daemon, "operator.ringing", 30, number="+12025550261")
    assert ringing["operator"] == lab.member("op2")
    out = await wait(daemon, "attempt.outcome", 40, attempt_id=ringing["attempt_id"])
    assert out["outcome"] == "answered"
    [invite] = [json.loads(line) for line in pstn_invites(lab, "2025550261")[-1:]]
    # On the FreePBX shape the outbound route's own caller ID wins, as a route's does there.
    assert invite["caller"] == ("+12025550199" if lab.profile.name == "freepbx" else "+12025550177")
    # Pause is per queue: op1, paused in sales only, takes the next request of no queue.
    add(config, "+12025550262")
    other = await wait(daemon, "operator.ringing", 30, number="+12025550262")
    assert other["operator"] == lab.member("op1")


def pstn_invites(lab, number: str) -> list[str]:
    return [line for line in lab.pstn("--log").splitlines() if number in line and '"invite"' in line]


async def test_kill_9_while_ringing_then_restart_never_dials_twice(lab, fresh, watch, tmp_path):
    lab.pstn("--ring", "6")  # the client rings for 6 s before answering
    before = len(pstn_invites(lab, "2025550241"))
    config = lab_config(tmp_path)
    daemon = DaemonProcess(config)
    try:
        await wait(daemon, "ami.resynced", 30)
        add(config, "+12025550241")
        ringing = await wait(daemon, "client.ringing", 30, number="+12025550241")
        os.kill(daemon.proc.pid, signal.SIGKILL)
        daemon.kill()
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
    restarted = DaemonProcess(config)
    try:
        again = await wait(restarted, "attempt.reattached", 30, attempt_id=ringing["attempt_id"])
        assert again["status"] in ("operator_up", "client_ringing", "bridged")
        out = await wait(restarted, "attempt.outcome", 40, attempt_id=ringing["attempt_id"])
        assert out["outcome"] == "answered" and out["request_status"] == "reached"
        await asyncio.sleep(2)
        assert restarted.events("operator.ringing") == []  # nothing new was dialled
    finally:
        assert restarted.stop() == 0
    originates = [e for e in watch.of("DialBegin") if e.get("DestUniqueid", "").startswith("cbd-")]
    assert len(originates) == 1, originates
    req = show(config, "+12025550241")
    assert req["status"] == "reached" and len(req["attempts_detail"]) == 1
    # The PSTN side received exactly one call for this client.
    assert len(pstn_invites(lab, "2025550241")) == before + 1


@pytest.mark.parametrize("profile", ["freepbx"], indirect=True)
async def test_freepbx_callback_rings_the_local_member_and_goes_out_through_the_route(
    lab, profile, fresh, daemon_factory, watch, tmp_path
):
    """The FreePBX shape end to end: the Local member rings, the client leg takes the outbound
    route (the route's caller ID reaches the PSTN) and the route's MixMonitor records it."""
    lab.pause("op2")
    daemon = daemon_factory()
    add(daemon.config, "+12025550251")
    ringing = await wait(daemon, "operator.ringing", 15)
    assert ringing["operator"] == "Local/201@from-queue/n"
    out = await wait(daemon, "attempt.outcome", 40, attempt_id=ringing["attempt_id"])
    assert out["outcome"] == "answered" and out["request_status"] == "reached"
    [invite] = [json.loads(line) for line in pstn_invites(lab, "2025550251")[-1:]]
    assert invite["caller"] == "+12025550199"  # the route's caller ID, not the operator's or the client's
    lid = f"cbd-{ringing['attempt_id']}"
    trunk = [e for e in watch.of("DialBegin", Context="macro-dialout-trunk") if e["Linkedid"] == lid]
    assert [e["DialString"] for e in trunk] == ["+12025550251@pstn"]
    mixmonitor = [e for e in watch.of("Newexten", Application="MixMonitor") if e["Linkedid"] == lid]
    assert mixmonitor, "the outbound route's recording hook did not run"
    path = mixmonitor[-1]["AppData"].split(",")[0]
    assert "/out-2025550251-" in path
    recording = Path(lab.status()["asterisk"]["root"]) / path.lstrip("/")
    for _ in range(50):
        if recording.exists():
            break
        await asyncio.sleep(0.1)
    # The lab's phones send no audio, so the file holds a WAV header only: its existence is the proof.
    assert recording.exists(), recording
