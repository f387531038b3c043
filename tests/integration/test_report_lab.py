"""A mixed lab session, then the CSV report checked against what happened: answered calls, abandons,
a short abandon, a callback reached on try 2 and a client who recovered by calling in again."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from labdaemon import cli, lab_config

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("profile")]

A, B, C, D, E = "2025550301", "2025550302", "2025550303", "2025550304", "2025550305"


async def wait(daemon, name, timeout=30, **match):
    return await asyncio.to_thread(daemon.wait_for, name, timeout, **match)


async def call(lab, number, hangup_after, to="100"):
    return await asyncio.to_thread(lab.call, number, hangup_after, to)


def pause(lab, *ops, on=True):
    for op in ops:
        lab.pause(op, on=on)


async def test_report_figures_match_a_mixed_session(lab, daemon_factory, tmp_path):
    lab.operator("op1,op2", "answer")
    lab.pstn("--reset")
    lab.pstn("--talk", "2")
    lab.pstn(f"+1{B}", "busy,answer")
    # A busy try waits schedule.outcome_delays.busy (10 min by default), not the 4 s rung.
    config = lab_config(
        tmp_path, replace={'delays = ["1h", "3h", "6h"]': 'delays = ["4s"]\noutcome_delays = { busy = "4s" }'}
    )
    start = datetime.now(UTC) - timedelta(seconds=5)
    daemon = daemon_factory(config)
    pause(lab, "op1", "op2")
    try:
        await call(lab, A, 7)  # abandon
        await call(lab, B, 7)  # abandon, reached by callback on try 2
        await call(lab, C, 2)  # short abandon
        await wait(daemon, "request.stored", 15, number=f"+1{A}")
        await wait(daemon, "request.stored", 15, number=f"+1{B}")
        await wait(daemon, "contact.not_scheduled", 15, disposition="short")
        # A calls again and waits; an operator comes back and answers the live call first.
        again = asyncio.create_task(call(lab, A, 10))
        await asyncio.sleep(3)
        pause(lab, "op1", on=False)
        await wait(daemon, "request.recovered", 20, number=f"+1{A}")
        await again
    finally:
        pause(lab, "op1", "op2", on=False)
    reached = await wait(daemon, "attempt.outcome", 60, number=f"+1{B}", outcome="answered")
    assert reached["try_no"] == 2
    await call(lab, D, 4)  # answered
    await call(lab, E, 4)  # answered
    await asyncio.sleep(2)
    end = datetime.now(UTC) + timedelta(seconds=5)

    out = cli(config, "report", "--from", start.isoformat(), "--to", end.isoformat(), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    total = next(r for r in rows if r["period"] == "TOTAL")
    expected = {
        "offered": "6",  # A, B, C, A again, D, E
        "handled": "3",  # A again, D, E
        "abandoned": "2",  # A, B (C is short)
        "short_abandoned": "1",
        "car_pct": "40.0",  # 2 / (6 - 1)
        "net_lost": "0",  # A recovered, B reached
        "requests": "2",
        "attempted": "1",  # B only: A recovered before any attempt
        "reached": "1",
        "recovered": "1",
        "failed": "0",
        "open": "0",
        "attempts_per_reached": "2.0",
    }
    assert {k: total[k] for k in expected} == expected, total

    # The calls export has one row per offered call, with ISO timestamps carrying an offset.
    calls = cli(config, "export", "calls", "--from", start.isoformat(), "--to", end.isoformat()).stdout
    exported = list(csv.DictReader(io.StringIO(calls)))
    assert len(exported) == 6
    assert all(r["started_at"].endswith("+00:00") for r in exported)

    # By operator: one row per person. Calls name the queue member (AgentConnect's Interface),
    # attempts the member the callback rang: the same key, never a caller ID number.
    out = cli(
        config,
        "report",
        "--from",
        start.isoformat(),
        "--to",
        end.isoformat(),
        "--by",
        "operator",
        "--format",
        "csv",
    )
    keys = [r["operator"] for r in csv.DictReader(io.StringIO(out.stdout)) if r["operator"] != "TOTAL"]
    people = [k for k in keys if k]
    assert (
        people and set(people) <= {lab.member("op1"), lab.member("op2")} and len(people) == len(set(people))
    ), keys
