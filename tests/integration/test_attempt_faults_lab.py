"""Attempts under faults on the real lab: the AMI link cut right after the Originate's ack while
the operator's channel ends unseen; two daemons on one PostgreSQL with cancel and retry while a
call rings; an old request at start."""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from amiproxy import AmiProxy
from labdaemon import DaemonProcess, cli, lab_config, requests_json

from callbackd.adapters import db
from callbackd.adapters import models as m

pytestmark = pytest.mark.lab

OPERATOR_RING = 10  # the lab config's operator_ring, seconds
GRACE = 5


def number() -> str:
    """A client not seen before in the PSTN log (it outlives a run) that answers: the lab's PSTN
    gives numbers ending in 0, 6, 7 and 8 a 404, busy, no answer and congestion."""
    return f"+1202{random.randint(600, 699)}{random.randint(0, 999):03d}{random.choice('123459')}"


def pstn_invites(lab, num: str) -> int:
    return sum(1 for line in lab.pstn("--log").splitlines() if num[1:] in line and '"invite"' in line)


def show(config: Path, num: str) -> dict:
    [req] = [r for r in requests_json(config, "list", "--json") if r["number"] == num]
    return requests_json(config, "show", str(req["id"]))


def status(config: Path) -> dict:
    return json.loads((config.parent / "status.json").read_text())


async def wait(daemon: DaemonProcess, name: str, timeout: float = 30, **match):
    return await asyncio.to_thread(daemon.wait_for, name, timeout, **match)


async def test_ami_cut_after_the_ack_with_the_operator_gone_never_leaves_a_request_dialling(
    lab, fresh, tmp_path
):
    """Before the fix the request stayed `dialling` and the operator reserved until a restart."""
    lab.operator("op1", "answer:1")  # the operator answers and hangs up a second later
    lab.run("cli", "queue pause member PJSIP/op2 queue support")
    proxy = await AmiProxy().start()
    config = lab_config(tmp_path, replace={"port = 5038": f"port = {proxy.port}"})
    daemon = DaemonProcess(config)
    try:
        await wait(daemon, "ami.resynced", 30)
        proxy.cut_after(b"Originate successfully queued")
        num = number()
        out = cli(config, "requests", "add", num, "--name", "Cut Client")
        assert "created" in out.stdout, out.stdout + out.stderr
        ringing = await wait(daemon, "operator.ringing", 20, number=num)
        for _ in range(100):
            if proxy.down:
                break
            await asyncio.sleep(0.1)
        assert proxy.down, "the Originate's ack never came through the proxy"
        await asyncio.sleep(8)  # the operator answers and hangs up while the link is down
        proxy.heal()
        healed = time.monotonic()
        done = await wait(
            daemon, "attempt.outcome", OPERATOR_RING + GRACE + 15, attempt_id=ringing["attempt_id"]
        )
        took = time.monotonic() - healed
        assert took <= OPERATOR_RING + GRACE, f"left dialling {took:.1f} s after the link came back"
        assert done["outcome"] == "result_lost" and done["counted"] is True
        assert done["request_status"] == "open"  # the next rung
        req = show(config, num)
        assert req["status"] == "open"
        for _ in range(30):  # the status file is rewritten every second
            free = [op["interface"] for op in status(config)["operators"]["free"]]
            if "PJSIP/op1" in free:
                break
            await asyncio.sleep(0.5)
        assert "PJSIP/op1" in free, "the operator stayed reserved"
        print(f"dialling after the link healed: {took:.1f} s")
    finally:
        daemon.stop()
        await proxy.close()
        lab.operator("op1", "answer")
        lab.run("cli", "queue unpause member PJSIP/op2 queue support")


def node_config(tmp_path: Path, name: str, pg_url: str, *, agi: bool) -> Path:
    home = tmp_path / name
    home.mkdir()
    replace = {'node = "lab"': f'node = "{name}"\npbx = "lab"'}  # one Asterisk, one identity
    if not agi:  # only one daemon can own the FastAGI port
        replace["[agi]\nenabled = true"] = "[agi]\nenabled = false"
    return lab_config(home, db_url=pg_url, replace=replace)


async def test_two_daemons_with_cancel_and_retry_while_ringing_dial_each_number_once(
    lab, fresh, tmp_path, pg_url
):
    """Before the fix: cancel and retry while A rang let B dial too, and A's stale outcome
    reopened B's claim so that A dialled a third time."""
    lab.pstn("--ring", "8")  # every client rings 8 s before answering
    a = DaemonProcess(node_config(tmp_path, "node-a", pg_url, agi=True))
    b: DaemonProcess | None = None
    nums = [number() for _ in range(2)]
    before = {n: pstn_invites(lab, n) for n in nums}
    try:
        await wait(a, "ami.resynced", 40)  # a migrates the new database first
        b = DaemonProcess(node_config(tmp_path, "node-b", pg_url, agi=False))
        await wait(b, "ami.resynced", 40)
        for num in nums:
            out = cli(a.config, "requests", "add", num, "--name", "Two Nodes")
            assert "created" in out.stdout, out.stdout + out.stderr
        for num in nums:
            ringing = None
            for _ in range(100):
                found = a.events("client.ringing", number=num) + b.events("client.ringing", number=num)
                if found:
                    ringing = found[0]
                    break
                await asyncio.sleep(0.2)
            assert ringing is not None, f"{num} was never rung"
            rid = str(ringing["request_id"])
            assert "cancelled" in cli(b.config, "requests", "cancel", rid).stdout
            cli(b.config, "requests", "retry", rid)
        await asyncio.sleep(30)  # long enough for any second dial to happen
        for num in nums:
            req = show(a.config, num)
            assert req["status"] == "reached", req
            # Two daemons may pick the same free operator at one moment (README); that
            # attempt fails at the operator and never reaches the client.
            reached_client = [a for a in req["attempts_detail"] if a["outcome"] != "operator_no_answer"]
            assert len(reached_client) == 1, req["attempts_detail"]
            assert pstn_invites(lab, num) == before[num] + 1, f"{num} was dialled more than once"
    finally:
        a.stop()
        if b is not None:
            b.stop()
        lab.pstn("--ring", "0.5")


async def test_an_eight_day_old_open_request_is_never_dialled_at_start(lab, fresh, tmp_path):
    config = lab_config(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path}/callbackd.db"
    engine = db.make_engine(url)
    num = number()
    old = datetime.now(UTC) - timedelta(days=8)
    try:
        await db.upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(
                m.Request.__table__.insert().values(
                    number=num,
                    name="",
                    reason="queue_abandon",
                    sources=["ami"],
                    contact_count=1,
                    status="open",
                    created_at=old,
                    updated_at=old,
                    due_at=old,
                    attempts_made=0,
                    operator_tries=0,
                    note="",
                )
            )
    finally:
        await engine.dispose()
    daemon = DaemonProcess(config)
    try:
        await wait(daemon, "ami.resynced", 30)
        await asyncio.sleep(5)  # several polls
        assert daemon.events("operator.ringing") == []
    finally:
        daemon.stop()
    assert pstn_invites(lab, num) == 0
