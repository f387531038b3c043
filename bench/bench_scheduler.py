#!/usr/bin/env python3
"""Scheduler scale: claiming due requests with 100,000 open ones in the database.

- claim: ``Store.claim_due(now, 2)`` (what the dialer runs on every wake-up), timed many
  times on SQLite and on PostgreSQL; each claimed request is given back with its due time
  (``Store.unclaim``), so every claim sees the same 100,000 open requests, half of them due;
- query plans: every statement a claim and an unclaim send is captured and EXPLAINed; a full
  scan of ``requests`` counts as a miss (the claim must use ``ix_requests_status_due``);
- wake-up jitter: the real ``Dialer.run`` loop over the same database, with a clock set back
  so that only a few test requests are due, one every couple of seconds: how late each due
  request is claimed (bounded by ``dialer.poll_interval`` by design), and how much later
  than the poll interval the loop's timer fires;
- the database's size.

    python bench/bench_scheduler.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib
import itertools

from sqlalchemy import event, insert, text

from bench.benchlib import OUT, figure, result, say, write_result
from callbackd.adapters import db
from callbackd.adapters import models as m
from callbackd.adapters.store import Store
from callbackd.app import CLAIM_LEASE
from callbackd.config import Config
from callbackd.dialer import Dialer
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.ladder import Schedule
from callbackd.domain.operators import OperatorPool
from callbackd.domain.states import RequestEvent

OPEN_REQUESTS = 100_000
# Due times over five days, centred on now: half are due, and none is past the default max_age (3
# days, counted from its creation up to 10 hours before its due time). The daemon's housekeeping
# expires such requests every minute, so a claim never meets thousands of them: a week's spread left
# about 10,000 of them open, which the claim (max_age at claim) stepped over one by one.
SPREAD = timedelta(days=5)
BATCH = 2  # the lab's dialer.max_concurrent, so the most one claim takes
CLAIM_TARGET_MS = 10.0
INDEX = "ix_requests_status_due"
# The jitter run's clock is this far behind, so none of the 100,000 requests is due for it.
SHIFT = timedelta(days=8)
PG_ADMIN_DSN_DEFAULT = "postgresql://callbackd_test:callbackd_test@127.0.0.1:5432/postgres"


def utcnow() -> datetime:
    return datetime.now(UTC)


def schedule() -> Schedule:
    return Schedule(calendar=BusinessCalendar.always_open("UTC"))


async def fill(engine, n: int, now: datetime, seed: int = 7) -> float:
    """n open requests, each with its own number, due over SPREAD around now. Returns seconds."""
    rnd = random.Random(seed)
    t0 = time.perf_counter()
    rows = []
    for i in range(n):
        due = now - SPREAD / 2 + SPREAD * rnd.random()
        created = min(now, due) - timedelta(minutes=rnd.randrange(1, 600))
        rows.append(
            {
                "number": f"+1{2020000000 + i}",
                "name": "",
                "reason": "queue_abandon",
                "sources": ["ami"],
                "contact_count": 1,
                "status": "open",
                "created_at": created,
                "updated_at": created,
                "due_at": due,
                "attempts_made": 0,
                "operator_tries": 0,
                "note": "",
            }
        )
    oldest = min(r["created_at"] for r in rows)
    if now - oldest >= schedule().max_age:
        raise RuntimeError(f"a request created {now - oldest} ago is past max_age")
    async with engine.begin() as conn:
        for i in range(0, n, 10_000):
            await conn.execute(insert(m.Request), rows[i : i + 10_000])
    return time.perf_counter() - t0


class Capture:
    """Every statement the engine sends while active, with its parameters."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.active = False
        self.statements: list[tuple[str, Any]] = []
        event.listen(engine.sync_engine, "before_cursor_execute", self._on)

    def _on(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.active:
            self.statements.append((statement, parameters))


async def timed_claims(store: Store, n: int, exclude: list[str]) -> list[float]:
    times = []
    for i in range(n + 5):
        now = utcnow()
        t0 = time.perf_counter()
        claimed = await store.claim_due(now, BATCH, exclude_numbers=exclude)
        dt = (time.perf_counter() - t0) * 1000
        if len(claimed) != BATCH:
            raise RuntimeError(f"claim {i} took {len(claimed)} requests, not {BATCH}")
        for req in claimed:
            await store.unclaim(req.id, now, due_at=req.due_at, token=req.claim_token)
        if i >= 5:  # the first few warm the caches and the connection pool
            times.append(dt)
    return times


async def plans(store: Store, capture: Capture, dialect: str) -> list[dict[str, Any]]:
    """EXPLAIN every statement of one claim (with a number excluded, as when a call is in
    flight) and one unclaim."""
    capture.statements.clear()
    capture.active = True
    now = utcnow()
    claimed = await store.claim_due(now, BATCH, exclude_numbers=["+12020000001"])
    for req in claimed:
        await store.unclaim(req.id, now, due_at=req.due_at, token=req.claim_token)
    capture.active = False
    out, seen = [], set()
    for statement, params in capture.statements:
        words = statement.split(None, 1)
        if not words or words[0].upper() not in ("SELECT", "UPDATE") or statement in seen:
            continue
        seen.add(statement)
        async with store.engine.connect() as conn:
            if dialect == "sqlite":
                rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)).all()
                plan = [str(r[-1]) for r in rows]
                full_scans = [p for p in plan if p.startswith("SCAN ") and "requests" in p]
            else:
                # ANALYZE really runs it (and takes the row locks), so in a transaction rolled back.
                trans = await conn.begin()
                rows = (await conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF) " + statement, params)).all()
                await trans.rollback()
                plan = [str(r[0]) for r in rows]
                full_scans = [p.strip() for p in plan if "Seq Scan on requests" in p]
        out.append(
            {
                "statement": " ".join(statement.split()),
                "plan": plan,
                "full_scans": full_scans,
                "uses_index": any(INDEX in p for p in plan),
            }
        )
    return out


async def db_size(engine, dialect: str, path: Path | None) -> dict[str, float]:
    if dialect == "sqlite":
        assert path is not None

        def checkpointed_size() -> int:
            # Outside the engine: its connections begin every transaction IMMEDIATE, and SQLite
            # refuses a checkpoint inside one ("database table is locked").
            with contextlib.closing(sqlite3.connect(path)) as con:
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return os.path.getsize(path)

        size = await asyncio.to_thread(checkpointed_size)
        return {"file_mb": round(size / 2**20, 2)}
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT pg_table_size('requests'), pg_indexes_size('requests'),"
                    " pg_database_size(current_database())"
                )
            )
        ).one()
        return {
            "table_mb": round(row[0] / 2**20, 2),
            "indexes_mb": round(row[1] / 2**20, 2),
            "database_mb": round(row[2] / 2**20, 2),
        }


class IdleAmi:
    """The dialer's AMI in this run: connected, never asked for anything (launches are stubbed)."""

    connected = True


async def jitter(store: Store, seconds: float, poll: float, seed: int = 11) -> dict[str, list[float]]:
    """Due-to-claimed delays and poll timer overshoot of the real dialer loop, in ms."""
    rnd = random.Random(seed)
    # Enough operators that every request due in one poll interval is claimed at its end:
    # what is measured is the wake-up, not a queue of due requests.
    cfg = Config.model_validate({"dialer": {"poll_interval": f"{poll}s", "max_concurrent": 20}})
    pool = OperatorPool(["support"])
    for i in range(20):
        pool.update({"Event": "QueueMember", "Queue": "support", "Interface": f"PJSIP/op{i}", "Status": "1"})
    dialer = Dialer(cfg.dialer, store, IdleAmi(), pool, clock=lambda: utcnow() - SHIFT)  # type: ignore[arg-type]
    dialer.reconciled = True
    loop = asyncio.get_running_loop()
    start = utcnow() - SHIFT
    # Two test requests per poll interval on average, due at random times in the window.
    count = max(3, int(2 * seconds / poll))
    dues = sorted(start + timedelta(seconds=poll + rnd.uniform(0, seconds)) for _ in range(count))
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(m.Request),
            [
                {
                    "number": f"+1303{5550000 + i:07d}",
                    "name": "",
                    "reason": "queue_abandon",
                    "sources": ["ami"],
                    "status": "open",
                    "created_at": due,
                    "updated_at": due,
                    "due_at": due,
                    "note": "",
                }
                for i, due in enumerate(dues)
            ],
        )
    delays: list[float] = []
    ticks: list[tuple[float, float]] = []

    async def launch(req: Any, operator: str) -> None:
        claimed = utcnow()
        delays.append(((claimed - SHIFT) - req.due_at).total_seconds() * 1000)
        await store.admin_event(req.id, RequestEvent.CANCEL, claimed - SHIFT)

    tick = dialer.tick

    async def timed_tick() -> None:
        entered = loop.time()
        await tick()
        ticks.append((entered, loop.time()))

    dialer._launch = launch  # type: ignore[method-assign]
    dialer.tick = timed_tick  # type: ignore[method-assign]
    task = asyncio.create_task(dialer.run())
    await asyncio.sleep(seconds + 2 * poll + 1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if len(delays) != count:
        raise RuntimeError(f"the dialer claimed {len(delays)} of {count} due requests")
    overshoot = [(b[0] - a[1] - poll) * 1000 for a, b in itertools.pairwise(ticks)]
    return {"due_to_claimed_ms": delays, "poll_overshoot_ms": overshoot}


async def run_one(
    url: str, dialect: str, n_claims: int, path: Path | None, jitter_s: float, poll: float
) -> dict[str, Any]:
    engine = db.make_engine(url)
    try:
        await db.upgrade(engine)
        now = utcnow()
        load_s = await fill(engine, OPEN_REQUESTS, now)
        if dialect == "postgresql":
            async with engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE requests")  # as autovacuum would soon after a load
        say(f"  {dialect}: {OPEN_REQUESTS} open requests inserted in {load_s:.1f} s")
        store = Store(engine, node="bench", schedule=schedule(), claim_lease=CLAIM_LEASE)
        capture = Capture(engine)
        times = await timed_claims(store, n_claims, [])
        say(f"  {dialect}: {n_claims} claims timed")
        explained = await plans(store, capture, dialect)
        out: dict[str, Any] = {
            "claim_ms": times,
            "load_s": round(load_s, 1),
            "plans": explained,
            "size": await db_size(engine, dialect, path),
        }
        if jitter_s:
            say(f"  {dialect}: dialer loop for {jitter_s:.0f} s (poll_interval {poll:g} s)")
            out.update(await jitter(store, jitter_s, poll))
        return out
    finally:
        await engine.dispose()


async def postgres(n_claims: int) -> dict[str, Any] | str:
    """The same on a fresh PostgreSQL database (the test role of tests/setup-services)."""
    import os

    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed"
    dsn = os.environ.get("CALLBACKD_TEST_PG", PG_ADMIN_DSN_DEFAULT)
    name = f"callbackd_bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"no PostgreSQL at {dsn.split('@')[-1]}: {exc}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        version = await admin.fetchval("SHOW server_version")
    finally:
        await admin.close()
    base = dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        res = await run_one(f"{base}/{name}", "postgresql", n_claims, None, 0, 0)
        res["version"] = version
        return res
    finally:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def figures(sq: dict[str, Any], pg: dict[str, Any] | str, poll: float) -> list[dict[str, Any]]:
    scans = sum(len(p["full_scans"]) for p in sq["plans"])
    n_plans = len(sq["plans"]) + (len(pg["plans"]) if isinstance(pg, dict) else 0)
    claim_uses = any(p["uses_index"] for p in sq["plans"])
    figs = [
        figure(
            "claim_sqlite_ms",
            f"claim next due batch ({BATCH}), SQLite, {OPEN_REQUESTS:,} open",
            "ms",
            sq["claim_ms"],
            target=("<", CLAIM_TARGET_MS),
            p99=True,
            over="claims",
        )
    ]
    if isinstance(pg, dict):
        scans += sum(len(p["full_scans"]) for p in pg["plans"])
        claim_uses = claim_uses and any(p["uses_index"] for p in pg["plans"])
        figs.append(
            figure(
                "claim_postgresql_ms",
                f"claim next due batch ({BATCH}), PostgreSQL, {OPEN_REQUESTS:,} open",
                "ms",
                pg["claim_ms"],
                target=("<", CLAIM_TARGET_MS),
                p99=True,
                over="claims",
            )
        )
    figs.append(
        figure(
            "claim_full_scans",
            f"full scans of requests in the claim's and unclaim's statements (the claim uses {INDEX}:"
            f" {'yes' if claim_uses else 'NO'})",
            "scans",
            [scans],
            target=("<=", 0),
            over=f"{n_plans} query plans",
            digits=0,
        )
    )
    figs.append(
        figure(
            "due_to_claimed_ms",
            f"due -> claimed by the dialer loop (poll_interval {poll:g} s)",
            "ms",
            sq["due_to_claimed_ms"],
            p99=True,
            over="due requests",
        )
    )
    figs.append(
        figure(
            "poll_overshoot_ms",
            "dialer wake-up later than its poll interval",
            "ms",
            sq["poll_overshoot_ms"],
            p99=True,
            over="wake-ups",
        )
    )
    figs.append(
        figure(
            "db_sqlite_mb",
            f"SQLite database size, {OPEN_REQUESTS:,} open requests",
            "MB",
            [sq["size"]["file_mb"]],
        )
    )
    if isinstance(pg, dict):
        s = pg["size"]
        figs.append(
            figure(
                "db_postgresql_mb",
                f"PostgreSQL requests table + indexes, {OPEN_REQUESTS:,} open",
                "MB",
                [s["table_mb"] + s["indexes_mb"]],
            )
        )
    return figs


async def main_async(args, path: Path) -> dict[str, Any]:
    n_claims = 50 if args.quick else 300
    poll = Config().dialer.poll_interval.total_seconds()  # the shipped default
    jitter_s = 10.0 if args.quick else 60.0
    sq = await run_one(f"sqlite+aiosqlite:///{path}", "sqlite", n_claims, path, jitter_s, poll)
    pg = await postgres(n_claims)
    if isinstance(pg, str):
        say(f"  PostgreSQL skipped: {pg}")
    res = result(
        "scheduler",
        "Scheduler scale",
        figures(sq, pg, poll),
        open_requests=OPEN_REQUESTS,
        batch=BATCH,
        claims_timed=n_claims,
        poll_interval_s=poll,
        sqlite={
            k: v for k, v in sq.items() if k not in ("claim_ms", "due_to_claimed_ms", "poll_overshoot_ms")
        },
        postgresql=(pg if isinstance(pg, str) else {k: v for k, v in pg.items() if k != "claim_ms"}),
    )
    res["notes"].append(
        f"A request that falls due is claimed at the dialer's next poll, so it waits up to"
        f" poll_interval ({poll:g} s by default); a new request or a freed operator wakes the"
        " dialer at once instead (see the reaction benchmark)."
    )
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer claims, a 10 s dialer run")
    p.add_argument("--json", metavar="FILE", help="write the result here")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "scheduler.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    res = asyncio.run(main_async(args, path))
    write_result(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
