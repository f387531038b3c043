"""Nothing lost on the way in, on the real lab: abandons Asterisk raises while PostgreSQL refuses
connections, a kill -9 in the middle of such an outage, and a SIGTERM whose drain meets new abandons
and a locked SQLite file. The independent AMI watcher says which abandons happened; the database must
hold each of them exactly once."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path

import asyncpg
import pytest
from dbfaults import SqliteLock, pg_outage
from labdaemon import DaemonProcess, cli, lab_config

pytestmark = pytest.mark.lab


async def abandon(lab, number: str, after: float = 7) -> None:
    await asyncio.to_thread(lab.call, number, after)


async def until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.2)


def abandoned(watch, numbers: list[str]) -> set[str]:
    """Linkedids of the calls from *numbers* that Asterisk reported abandoned in the queue."""
    callers = {e["Linkedid"] for e in watch.of("Newchannel") if e.get("CallerIDNum") in numbers}
    return {e["Linkedid"] for e in watch.of("QueueCallerAbandon") if e.get("Linkedid") in callers}


async def pg_stored(url: str) -> tuple[list[str], list[str]]:
    """AMI contacts' Linkedids (with repeats) and call rows' Linkedids."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        contacts = [r[0] for r in await conn.fetch("SELECT source_ref FROM contacts WHERE source = 'ami'")]
        calls = [r[0] for r in await conn.fetch("SELECT linkedid FROM calls")]
    finally:
        await conn.close()
    return contacts, calls


def sqlite_stored(path: Path) -> tuple[list[str], list[str]]:
    con = sqlite3.connect(path)
    try:
        contacts = [r[0] for r in con.execute("SELECT source_ref FROM contacts WHERE source = 'ami'")]
        calls = [r[0] for r in con.execute("SELECT linkedid FROM calls")]
    finally:
        con.close()
    return contacts, calls


def intake_status(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "status.json").read_text())["intake"]


def spool_lines(tmp_path: Path) -> list[dict]:
    path = tmp_path / "spool.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_abandons_while_postgresql_refuses_connections_end_in_the_database(
    lab, paused, watch, tmp_path, pg_url, daemon_factory
):
    config = lab_config(tmp_path, db_url=pg_url)
    daemon = daemon_factory(config)
    numbers = ["2025550161", "2025550162", "2025550163"]
    async with pg_outage(pg_url):
        await asyncio.gather(*(abandon(lab, n) for n in numbers))
        await until(lambda: len(daemon.events("contact.spooled")) == 3, 20, "three contacts spooled")
        await until(lambda: len(spool_lines(tmp_path)) == 6, 20, "three contacts and three calls spooled")
        await until(lambda: intake_status(tmp_path)["spooled"] == 6, 5, "status file rewritten")
        status = intake_status(tmp_path)
        assert status["database"] == "down" and status["oldest_age_s"] >= 0
        shown = cli(config, "status", check=False).stdout
        assert "database link    DOWN" in shown and "intake backlog   6 item(s) (6 spooled)" in shown, shown
    await asyncio.to_thread(daemon.wait_for, "spool.replayed", 30)
    lost = abandoned(watch, numbers)
    assert len(lost) == 3
    contacts, calls = await pg_stored(pg_url)
    assert sorted(contacts) == sorted(lost) and sorted(calls) == sorted(lost)
    assert spool_lines(tmp_path) == []


async def test_kill_9_during_an_outage_then_restart_replays_the_spool_exactly_once(
    lab, paused, watch, tmp_path, pg_url
):
    config = lab_config(tmp_path, db_url=pg_url)
    numbers = ["2025550171", "2025550172"]
    first = DaemonProcess(config)
    try:
        await asyncio.to_thread(first.wait_for, "ami.resynced", 30)
        async with pg_outage(pg_url):
            await asyncio.gather(*(abandon(lab, n) for n in numbers))
            await until(lambda: len(spool_lines(tmp_path)) == 4, 20, "two contacts and two calls spooled")
            first.kill()  # SIGKILL: no exit path at all
    finally:
        if first.proc.poll() is None:
            first.kill()
    second = DaemonProcess(config)
    try:
        found = await asyncio.to_thread(second.wait_for, "spool.found", 30)
        assert found["items"] == 4
        await asyncio.to_thread(second.wait_for, "spool.replayed", 30)
        await asyncio.to_thread(second.wait_for, "ami.resynced", 30)
    finally:
        assert second.stop() == 0
    lost = abandoned(watch, numbers)
    assert len(lost) == 2
    contacts, calls = await pg_stored(pg_url)
    assert sorted(contacts) == sorted(lost) and sorted(calls) == sorted(lost)  # each exactly once
    assert spool_lines(tmp_path) == []


async def test_sigterm_drain_meets_new_abandons_and_a_locked_database_then_all_are_stored(
    lab, fresh, watch, tmp_path
):
    """A callback is in progress, so the first SIGTERM's drain lasts; abandons arrive meanwhile while
    SQLite is locked for 40 s. AMI is closed before the queue is flushed, the queue goes to the spool
    (the lock outlasts the drain and the flush), and the next start stores every abandon."""
    lab.pstn("--talk", "12")
    lab.pause("op2")
    try:
        await sigterm_drain(lab, watch, tmp_path)
    finally:
        lab.pstn("--talk", "3")


async def sigterm_drain(lab, watch, tmp_path: Path) -> None:
    # The drain (15 s) and the flush (5 s) end while the lock (40 s) still holds: the queue is spooled.
    config = lab_config(tmp_path, extra='drain_grace = "15s"\nflush_timeout = "5s"\n')
    numbers = ["2025550182", "2025550183"]
    daemon = DaemonProcess(config)
    try:
        await asyncio.to_thread(daemon.wait_for, "ami.resynced", 30)
        cli(config, "requests", "add", "+12025550181")
        await asyncio.to_thread(daemon.wait_for, "client.ringing", 30, number="+12025550181")
        await asyncio.sleep(2)  # answered: a call in flight for the drain to wait for
        daemon.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(daemon.wait_for, "daemon.stopping", 10)
        with SqliteLock(tmp_path / "callbackd.db", 40).held():
            await asyncio.gather(*(abandon(lab, n) for n in numbers))
            await asyncio.to_thread(daemon.proc.wait, 90)
    finally:
        code = daemon.stop()
    assert code == 0
    names = [e.get("event") for e in daemon.lines]
    closed = names.index("daemon.inputs_closed")
    assert "call.missed" not in names[closed:] and closed < names.index("daemon.stopped"), names[-15:]
    assert names.count("call.missed") == 2 and "intake.spooled_at_exit" in names[closed:]
    second = DaemonProcess(config)
    try:
        await asyncio.to_thread(second.wait_for, "ami.resynced", 30)
        await until(lambda: spool_lines(tmp_path) == [], 30, "spool replayed")
    finally:
        assert second.stop() == 0
    lost = abandoned(watch, numbers)
    assert len(lost) == 2
    contacts, calls = sqlite_stored(tmp_path / "callbackd.db")
    assert sorted(contacts) == sorted(lost) and set(lost) <= set(calls)
