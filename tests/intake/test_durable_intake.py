"""Nothing lost on the way in: the daemon's intake against a SQLite file locked for 40 s and a PostgreSQL
database that refuses connections, with AMI misses, web leads and "press 1" callers arriving meanwhile.
Real databases and real faults; AMI events are fed through panoramisk's parser, the AGI side is scripted."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from daemonkit import built_daemon, daemon_config
from dbfaults import SqliteLock, pg_outage, pg_refuse
from panoramisk.message import Message
from sqlalchemy import func, select
from structlog.testing import capture_logs

from callbackd.adapters import models as m
from callbackd.adapters.agi import CallbackAgi
from callbackd.adapters.ami import to_dict
from callbackd.adapters.spool import Spool
from callbackd.app import Daemon
from callbackd.domain.intake import Contact, Source

ALWAYS = {"hours": {"mon-sun": "00:00-24:00"}}


def ami_event(*lines: str) -> dict[str, str]:
    message = Message.from_line("\r\n".join(lines))
    assert message is not None
    return to_dict(message)


def abandon(d: Daemon, linkedid: str, number: str) -> None:
    """A caller who gave up after 30 s in the support queue, as AMI reports it."""
    ids = (f"Uniqueid: {linkedid}", f"Linkedid: {linkedid}")
    for ev in (
        ami_event("Event: Newchannel", *ids, "Context: from-pstn", "Exten: 100", f"CallerIDNum: {number}"),
        ami_event("Event: QueueCallerJoin", *ids, "Queue: support"),
        ami_event("Event: HangupRequest", *ids),
        ami_event("Event: QueueCallerAbandon", *ids, "Queue: support", "HoldTime: 30"),
        ami_event("Event: Hangup", *ids),
    ):
        d.on_event(ev)


def lead(ref: str, number: str) -> Contact:
    return Contact(source=Source.HTTP, source_ref=ref, raw_number=number, reason="web_form", at=_now())


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


class KeypadSession:
    """Asterisk's side of a "press 1" AGI session: no key pressed, so the caller's own number is kept."""

    def __init__(self, number: str) -> None:
        self.headers = {"agi_arg_1": number, "agi_uniqueid": uuid.uuid4().hex}
        self.sent: list[str] = []

    async def send_command(self, command: str) -> dict[str, Any]:
        self.sent.append(command)
        return {"result": ("0", "")}


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.1)


async def rows(d: Daemon) -> tuple[dict[str, list[Any]], int, int]:
    """Contacts by source (their source refs), calls and requests stored."""
    async with d.store.session() as s:
        contacts = (
            await s.execute(select(m.Contact.source, m.Contact.source_ref, m.Contact.request_id))
        ).all()
        calls = (await s.execute(select(func.count()).select_from(m.Call))).scalar_one()
        requests = (await s.execute(select(func.count()).select_from(m.Request))).scalar_one()
    by_source: dict[str, list[Any]] = {}
    for c in contacts:
        by_source.setdefault(c.source, []).append(c.source_ref)
        assert c.request_id is not None, c
    return {k: sorted(v) for k, v in by_source.items()}, calls, requests


async def test_a_sqlite_lock_held_40_s_loses_nothing(tmp_path):
    """Misses, web leads and a "press 1" caller while another connection holds BEGIN EXCLUSIVE for 40 s
    (longer than the 30 s busy timeout): spooled, then replayed in order once the lock is gone."""
    cfg = daemon_config(tmp_path, schedule=ALWAYS)
    async with built_daemon(cfg) as d:
        with SqliteLock(tmp_path / "callbackd.db", 40).held() as lock:
            for i in range(5):
                abandon(d, f"1700000000.{i}", f"20255501{i:02d}")
            leads = [asyncio.create_task(d.submit(lead(f"w{i}", f"31255501{i:02d}"))) for i in range(3)]
            session = KeypadSession("4155550100")
            await CallbackAgi(d.submit, d.rules).callback_request(session)  # type: ignore[arg-type]
            assert not lock.released.is_set(), "the AGI caller was answered only after the lock"
            assert "SET VARIABLE CB_RESULT stored" in session.sent
            assert 'STREAM FILE auth-thankyou ""' in session.sent
            answers = await asyncio.gather(*leads)
            assert all(a.spooled and a.request_id is None for a in answers), answers
            assert d.intake.link.up is False
            assert d.status_snapshot()["intake"]["spooled"] == 5 + 5 + 3 + 1  # misses, calls, leads, AGI
        await until(lambda: d.intake.backlog().items == 0, 60, "spool replayed")
        by_source, calls, requests = await rows(d)
    assert by_source["ami"] == [f"1700000000.{i}" for i in range(5)]
    assert by_source["http"] == ["w0", "w1", "w2"]
    assert len(by_source["agi"]) == 1
    assert (calls, requests) == (5, 9)
    assert not Spool(tmp_path / "spool.jsonl", 10).open()  # nothing left on disk


async def test_press_1_during_a_postgresql_outage_is_confirmed_from_the_spool(tmp_path, pg_url):
    """Connections refused and backends killed: the caller hears the thank-you once the request is
    spooled; with the spool full the next caller hears an apology, and status and /metrics say why."""
    # The figures are counted when /metrics can serve them (the HTTP listener, not started here).
    cfg = daemon_config(
        tmp_path, url=pg_url, schedule=ALWAYS, service={"spool_max_items": 3}, http={"enabled": True}
    )
    async with built_daemon(cfg) as d:
        agi = CallbackAgi(d.submit, d.rules)
        assert (await d.submit(lead("before", "3125550100"))).created
        async with pg_outage(pg_url):
            first = KeypadSession("2025550123")
            await agi.callback_request(first)  # type: ignore[arg-type]
            assert first.sent[-2:] == ["SET VARIABLE CB_RESULT stored", 'STREAM FILE auth-thankyou ""']
            status = d.status_snapshot()["intake"]
            assert status["database"] == "down" and status["spooled"] == 1
            assert status["oldest_age_s"] is not None and status["oldest_age_s"] >= 0
            assert (await d.submit(lead("w1", "3125550101"))).spooled
            assert (await d.submit(lead("w2", "3125550102"))).spooled
            with capture_logs() as logs:
                late = KeypadSession("2025550124")
                await agi.callback_request(late)  # type: ignore[arg-type]
            assert late.sent[-3:] == [
                "SET VARIABLE CB_RESULT failed",
                'STREAM FILE im-sorry ""',
                'STREAM FILE please-try-call-later ""',
            ]
            assert "spool.full" in [e["event"] for e in logs]
            metrics = samples(d.metrics.render())
            assert metrics["callbackd_database_up"] == 0 and metrics["callbackd_spool_full"] == 1
            assert metrics["callbackd_intake_backlog"] == 3 and metrics["callbackd_intake_spooled"] == 3
            assert metrics["callbackd_intake_backlog_oldest_seconds"] >= 0
            assert d.status_snapshot()["intake"]["spool_full"] is True
        await until(lambda: d.intake.backlog().items == 0, 30, "spool replayed")
        by_source, _, requests = await rows(d)
        assert d.status_snapshot()["intake"]["database"] == "up"
        assert samples(d.metrics.render())["callbackd_database_up"] == 1
    assert by_source == {"agi": by_source["agi"], "http": ["before", "w1", "w2"]}
    assert len(by_source["agi"]) == 1 and requests == 4


async def test_a_refused_database_keeps_the_arrival_order_and_the_limits(tmp_path, pg_url):
    """A number's miss then its recovery (the client called in and was answered) during an outage:
    replayed in that order, so the request ends recovered, not open; a lead over the limit is refused
    without waiting for the database."""
    cfg = daemon_config(
        tmp_path, url=pg_url, schedule=ALWAYS, limits={"new_requests_global": 1, "new_requests_per_number": 0}
    )
    async with built_daemon(cfg) as d:
        await pg_refuse(pg_url)
        try:
            abandon(d, "1700000100.1", "2025550100")
            ids = ("Uniqueid: 1700000101.1", "Linkedid: 1700000101.1")
            for ev in (
                ami_event(
                    "Event: Newchannel", *ids, "Context: from-pstn", "Exten: 100", "CallerIDNum: 2025550100"
                ),
                ami_event("Event: QueueCallerJoin", *ids, "Queue: support"),
                ami_event("Event: AgentConnect", *ids, "Queue: support", "MemberName: op1", "HoldTime: 3"),
                ami_event("Event: Hangup", *ids),
            ):
                d.on_event(ev)
            over = await d.submit(lead("w-over", "3125550199"))
            assert over.disposition is not None and over.disposition.value == "rate_limited"
            await until(lambda: d.intake.backlog().spooled >= 4, 30, "spooled")
        finally:
            await pg_refuse(pg_url, refuse=False)
        await until(lambda: d.intake.backlog().items == 0, 30, "spool replayed")
        async with d.store.session() as s:
            statuses = (await s.execute(select(m.Request.status, m.Request.close_reason))).all()
    assert statuses == [("recovered", "client_called_in")]


def samples(text: bytes) -> dict[str, float]:
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def test_a_daemon_stopped_during_an_outage_spools_its_queue_and_the_next_one_replays_it(
    tmp_path, pg_url
):
    """The exit path: what is queued at a stop goes to the spool; the next start replays it, once."""
    cfg = daemon_config(tmp_path, url=pg_url, schedule=ALWAYS, service={"flush_timeout": "1s"})
    async with built_daemon(cfg) as d:
        await pg_refuse(pg_url)
        for i in range(3):
            abandon(d, f"1700000200.{i}", f"20255502{i:02d}")
    lines = (tmp_path / "spool.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["kind"] for line in lines) == ["call"] * 3 + ["contact"] * 3
    await pg_refuse(pg_url, refuse=False)
    async with built_daemon(cfg) as again:
        await until(lambda: again.intake.backlog().items == 0, 30, "spool replayed")
        by_source, calls, requests = await rows(again)
    assert by_source == {"ami": [f"1700000200.{i}" for i in range(3)]} and (calls, requests) == (3, 3)
    assert (tmp_path / "spool.jsonl").read_text() == ""


async def test_a_stored_request_is_logged_with_its_e164_number(tmp_path):
    cfg = daemon_config(tmp_path, schedule=ALWAYS, log={"mask_numbers": False})
    async with built_daemon(cfg) as d:
        with capture_logs() as logs:
            await d.submit(lead("n1", "(202) 555-0123"))
    [stored] = [e for e in logs if e["event"] == "request.stored"]
    assert stored["number"] == "+12025550123"
