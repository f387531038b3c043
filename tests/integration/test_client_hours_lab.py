"""Client-local hours, caller ID from the DID and the busy delay on the real lab."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from labdaemon import cli, lab_config, requests_json

from callbackd import config as config_mod
from callbackd.domain.phone import E164

pytestmark = pytest.mark.lab

VLADIVOSTOK = ZoneInfo("Asia/Vladivostok")
MOSCOW = ZoneInfo("Europe/Moscow")
LAB_CLIENT_HOURS = 'hours = { "mon-sun" = "00:00-24:00" }'


async def wait(daemon, name, timeout=30, **match):
    return await asyncio.to_thread(daemon.wait_for, name, timeout, **match)


def show(config, number: str) -> dict:
    [req] = [r for r in requests_json(config, "list", "--json") if r["number"] == number]
    return requests_json(config, "show", str(req["id"]))


async def abandon(lab, caller: str, to: str = "100") -> None:
    """A call to ``to`` that nobody answers: both operators paused, the caller hangs up after 7 s."""
    for op in ("op1", "op2"):
        lab.run("cli", f"queue pause member PJSIP/{op} queue support")
    try:
        await asyncio.to_thread(lab.call, caller, 7, to)
    finally:
        for op in ("op1", "op2"):
            lab.run("cli", f"queue unpause member PJSIP/{op} queue support")


async def test_vladivostok_number_waits_for_the_clients_morning(lab, fresh, daemon_factory, tmp_path):
    # The lab desk is open round the clock; the client window is the default 09:00-21:00 local.
    config = lab_config(tmp_path, replace={LAB_CLIENT_HOURS: 'hours = { "mon-sun" = "09:00-21:00" }'})
    schedule = config_mod.load(config).schedule_rules()
    zones = schedule.zones_for(E164("+74232123456"))
    assert zones == ("Asia/Vladivostok",)
    # The daemon's own rules, at the instant: abandoned 20:00 Moscow is 03:00 in Vladivostok.
    at_20_moscow = datetime(2026, 3, 2, 20, 0, tzinfo=MOSCOW)
    due = schedule.due_at(0, None, at_20_moscow, spread_key="+74232123456", client_zones=zones)
    assert due is not None
    assert (
        datetime(2026, 3, 3, 9, 0, tzinfo=VLADIVOSTOK) <= due < datetime(2026, 3, 3, 9, 5, tzinfo=VLADIVOSTOK)
    )

    # Now for real, at whatever time this runs: a client window that is closed now and opens in 2-3 h.
    start = datetime.now(VLADIVOSTOK) + timedelta(hours=2)
    if start.hour >= 22:
        start = start.replace(hour=1, minute=0) + timedelta(days=1)
    window = f"{start:%H:%M}-{(start + timedelta(hours=1)):%H:%M}"
    config = lab_config(tmp_path, replace={LAB_CLIENT_HOURS: f'hours = {{ "mon-sun" = "{window}" }}'})
    schedule = config_mod.load(config).schedule_rules()
    daemon = daemon_factory(config)
    await abandon(lab, "74232123456")
    stored = await wait(daemon, "request.stored", 20)
    assert stored["number"] == "+74232123456"
    waits = await wait(daemon, "request.waits", 5, why="client_hours")
    req = show(config, "+74232123456")
    assert req["client_zones"] == ["Asia/Vladivostok"] and req["waits_for"] == "client_hours"
    created = datetime.fromisoformat(req["created_at"])
    expected = schedule.due_at(0, None, created, spread_key="+74232123456", client_zones=zones)
    assert datetime.fromisoformat(req["due_at"]) == expected == datetime.fromisoformat(waits["due"])
    assert expected.astimezone(VLADIVOSTOK).strftime("%H:%M") >= window[:5]
    assert expected - created > timedelta(hours=1)
    await asyncio.sleep(4)  # several dialer polls: nothing is dialled before the client's window
    assert daemon.events("operator.ringing", number="+74232123456") == []


async def test_caller_id_on_the_client_leg_is_the_did_dialled(lab, fresh, daemon_factory, tmp_path):
    config = lab_config(
        tmp_path,
        replace={
            "outbound_callerid = '\"Lab Company\" <+12025550100>'": (
                "outbound_callerid = '\"Lab Company\" <+12025550100>'\n"
                'callerid_by_did = { "100" = \'"Support" <+12025550155>\' }'
            )
        },
    )
    daemon = daemon_factory(config)
    await abandon(lab, "2025550181")
    out = await wait(daemon, "attempt.outcome", 60, number="+12025550181")
    assert out["outcome"] == "answered", show(config, "+12025550181")
    assert show(config, "+12025550181")["did"] == "100"
    invites = [line for line in lab.pstn("--log").splitlines() if "2025550181" in line and '"invite"' in line]
    assert invites and '"caller": "+12025550155"' in invites[-1], invites[-1:]


async def test_busy_client_is_retried_after_the_busy_delay(lab, fresh, daemon_factory, tmp_path):
    lab.pstn("+12025550282", "busy,answer")
    config = lab_config(
        tmp_path, replace={'delays = ["1h", "3h", "6h"]': 'delays = ["1h"]\noutcome_delays = { busy = "5s" }'}
    )
    daemon = daemon_factory(config)
    res = cli(config, "requests", "add", "+12025550282", "--name", "Busy Client")
    assert "created" in res.stdout, res.stdout + res.stderr
    o1 = await wait(daemon, "attempt.outcome", 40, number="+12025550282", try_no=1)
    assert o1["outcome"] == "client_busy" and o1["request_status"] == "open", show(config, "+12025550282")
    r1 = await wait(daemon, "operator.ringing", 1, number="+12025550282", try_no=1)
    o2 = await wait(daemon, "attempt.outcome", 60, number="+12025550282", try_no=2)
    assert o2["outcome"] == "answered" and o2["request_status"] == "reached"
    r2 = await wait(daemon, "operator.ringing", 1, number="+12025550282", try_no=2)
    gap = (datetime.fromisoformat(r2["timestamp"]) - datetime.fromisoformat(r1["timestamp"])).total_seconds()
    assert 5 <= gap < 60, gap  # the busy delay, not the ladder's hour
    waits = [e for e in daemon.events("request.waits") if e.get("why") == "outcome_delay"]
    assert len(waits) == 1
    first = show(config, "+12025550282")["attempts_detail"][0]
    # Counted from the busy try's start, like every ladder wait.
    started = datetime.fromisoformat(first["started_at"])
    assert datetime.fromisoformat(o1["next_due"]) == started + timedelta(seconds=5)


NEW_YORK = ZoneInfo("America/New_York")


async def test_a_time_keyed_in_over_the_phone_is_stored_and_honoured(lab, fresh, daemon_factory, tmp_path):
    """Press 1 in the queue, keep the number, press 2, key in HHMM, confirm with 1 (FastAGI)."""
    daemon = daemon_factory(lab_config(tmp_path))
    number = "+12025550191"  # Washington: the keyed-in time is New York time
    # One to two minutes ahead (the call itself takes 30 s), on the minute: the keypad takes HHMM.
    chosen = (datetime.now(NEW_YORK) + timedelta(minutes=2)).replace(second=0, microsecond=0)
    # 1 leaves the queue, 1 keeps the caller's number, 2 asks for another time, HHMM, 1 confirms it.
    keys = f"1@2,1@5,2@8,{chosen:%H%M}@12,1@19"
    for op in ("op1", "op2"):
        lab.pause(op)
    try:
        await asyncio.to_thread(lab.call, number[2:], 30, "100", "--keys", keys)
    finally:
        for op in ("op1", "op2"):
            lab.pause(op, on=False)
    stored = await wait(daemon, "agi.callback_request", 10)
    assert stored["chosen_time"] is True and stored["result"] == "schedule", stored
    req = show(daemon.config, number)
    assert req["time_chosen"] is True and "agi" in req["sources"], req
    # Stored as the client's own wall-clock time, kept when the queue abandon merged in.
    assert datetime.fromisoformat(req["preferred_at"]) == chosen
    assert datetime.fromisoformat(req["due_at"]) == chosen
    assert req["contacts"] >= 1
    # Honoured: nobody is dialled before the time, the callback comes right after it.
    ring = await wait(daemon, "operator.ringing", 240, number=number)
    rang_at = datetime.fromisoformat(ring["timestamp"])
    assert chosen <= rang_at < chosen + timedelta(seconds=30), (rang_at, chosen)
    out = await wait(daemon, "attempt.outcome", 60, number=number)
    assert out["outcome"] == "answered" and out["request_status"] == "reached"
