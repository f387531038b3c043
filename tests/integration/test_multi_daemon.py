"""Two daemons, one PostgreSQL database, one PBX: 200 due requests are each dialled exactly once.

Each daemon claims due requests with FOR UPDATE SKIP LOCKED, so neither can take one the
other holds. Every client here is busy at the lab's PSTN (numbers ending in 6: an immediate 486)
and ``schedule.max_attempts = 1``, so each request closes after its single try.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from labdaemon import DaemonProcess, cli, lab_config
from sqlalchemy import func, select

from callbackd.adapters import db
from callbackd.adapters import models as m
from callbackd.adapters.store import Store
from callbackd.app import CLAIM_LEASE, intake_rules
from callbackd.config import load
from callbackd.domain.intake import Contact, Disposition, Source, decide

pytestmark = pytest.mark.lab

REQUESTS = 200
DEADLINE = 360.0  # seconds for all of them; about 2 s per attempt per operator pair


def daemon_config(tmp_path: Path, name: str, pg_url: str, *, agi: bool) -> Path:
    home = tmp_path / name
    home.mkdir()
    replace = {
        'node = "lab"': f'node = "{name}"',
        'operator_ring = "10s"': 'operator_ring = "5s"',
        'poll_interval = "1s"': 'poll_interval = "1s"\nwhisper_custom = ["beep"]',
        'delays = ["1h", "3h", "6h"]': 'delays = ["1h"]\nmax_attempts = 1',
    }
    if not agi:  # only one daemon can own the FastAGI port
        replace["[agi]\nenabled = true"] = "[agi]\nenabled = false"
    return lab_config(home, db_url=pg_url, replace=replace, extra="\n[limits]\nattempts_per_hour = 0\n")


def numbers() -> list[str]:
    """200 distinct clients ending in 6, in an exchange picked per run (the PSTN log outlives a run)."""
    exchange = random.randint(520, 599)
    return [f"+1202{exchange}{i:03d}6" for i in range(REQUESTS)]


async def seed(config: Path, wanted: list[str]) -> None:
    cfg = load(config)
    engine = db.make_engine(cfg.database.url)
    try:
        store = Store(engine, node="seed", schedule=cfg.schedule_rules(), claim_lease=CLAIM_LEASE)
        rules = intake_rules(cfg)
        now = datetime.now(UTC)
        for number in wanted:
            contact = Contact(
                source=Source.ADMIN, source_ref=uuid.uuid4().hex, raw_number=number, reason="admin", at=now
            )
            decision = decide(contact, rules)
            assert decision.disposition is Disposition.SCHEDULE, (number, decision)
            result = await store.record_contact(contact, decision)
            assert result.created
    finally:
        await engine.dispose()


async def open_count(url: str) -> int:
    engine = db.make_engine(url)
    try:
        async with engine.connect() as conn:
            return (
                await conn.execute(
                    select(func.count())
                    .select_from(m.Request)
                    .where(m.Request.status.in_(["open", "dialling"]))
                )
            ).scalar_one()
    finally:
        await engine.dispose()


async def attempts_by_request(url: str) -> tuple[dict[int, list[m.Attempt]], list[m.Request]]:
    engine = db.make_engine(url)
    try:
        async with db.sessionmaker(engine)() as s:
            attempts = list((await s.execute(select(m.Attempt))).scalars())
            requests = list((await s.execute(select(m.Request))).scalars())
    finally:
        await engine.dispose()
    by: dict[int, list[m.Attempt]] = {}
    for a in attempts:
        by.setdefault(a.request_id, []).append(a)
    return by, requests


async def test_two_daemons_on_one_postgresql_dial_each_request_exactly_once(lab, pg_url, tmp_path):
    lab.operator("op1,op2", "answer")
    lab.pstn("--reset")
    for op in ("op1", "op2"):
        lab.run("cli", f"queue unpause member PJSIP/{op} queue support")
    a_cfg = daemon_config(tmp_path, "node-a", pg_url, agi=True)
    b_cfg = daemon_config(tmp_path, "node-b", pg_url, agi=False)
    migrated = cli(a_cfg, "db", "upgrade")
    assert "database at revision" in migrated.stdout
    wanted = numbers()
    await seed(a_cfg, wanted)
    assert await open_count(pg_url) == REQUESTS

    since = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")  # the PSTN log's local time
    t0 = time.monotonic()
    daemons = [DaemonProcess(a_cfg), DaemonProcess(b_cfg)]
    try:
        for d in daemons:
            await asyncio.to_thread(d.wait_for, "daemon.ready", 30)
        while (left := await open_count(pg_url)) > 0:
            assert time.monotonic() - t0 < DEADLINE, f"{left} requests still open after {DEADLINE} s"
            for d in daemons:
                assert d.proc.poll() is None, "".join(d.raw[-40:])
            await asyncio.sleep(2)
        elapsed = time.monotonic() - t0
    finally:
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0]

    # The database: one attempt per request, each from one of the two nodes, and both took part.
    by_request, requests = await attempts_by_request(pg_url)
    assert len(requests) == REQUESTS
    assert {r.status for r in requests} == {"failed"}
    assert sorted(len(v) for v in by_request.values()) == [1] * REQUESTS
    attempts = [a for v in by_request.values() for a in v]
    assert {a.outcome for a in attempts} == {"client_busy"}
    per_node = Counter(a.node for a in attempts)
    assert set(per_node) == {"node-a", "node-b"}, per_node
    assert min(per_node.values()) >= REQUESTS // 10, per_node
    print(f"{REQUESTS} requests dialled in {elapsed:.1f} s: {dict(per_node)}")

    # The daemons' own logs agree: 200 operator rings in all, no number twice.
    rung = [e["number"] for d in daemons for e in d.events("operator.ringing")]
    assert sorted(rung) == sorted(wanted)

    # The PSTN saw exactly one INVITE per number, so no number was ever in two calls at once.
    invites: Counter[str] = Counter()
    for line in lab.pstn("--log").splitlines():
        entry = json.loads(line)
        number = "+1" + entry["number"][-10:]
        if entry["event"] == "invite" and number in wanted and entry["time"] >= since:
            invites[number] += 1
    assert set(invites) == set(wanted) and set(invites.values()) == {1}, invites.most_common(3)
