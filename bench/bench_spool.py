#!/usr/bin/env python3
"""The intake spool: appending while the database is away, and replaying 10,000 spooled contacts.

- append: ``Spool.append`` (one JSON line, written and fsync'd) for each contact, as the intake
  does while the database refuses; per-append latency;
- replay: a spool of 10,000 missed-call contacts (and their call records, as AMI gives them)
  left by a previous process, replayed by the daemon's own ``IntakeService`` into an empty
  database, SQLite and PostgreSQL: seconds from start to an empty spool, each contact stored
  exactly once (checked).

    python bench/bench_spool.py [--items 10000] [--runs 3] [--no-pg] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import figure, result, say, write_result

from callbackd.adapters import db
from callbackd.adapters.spool import Spool, Spooled, encode
from callbackd.adapters.store import Store
from callbackd.app import CLAIM_LEASE
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.detection import CallTrack, MissReason
from callbackd.domain.intake import Contact, IntakeRules, Source
from callbackd.domain.ladder import Schedule
from callbackd.domain.limits import AbuseGuard, AbuseLimits
from callbackd.intake import IntakeService

PG_ADMIN_DSN = os.environ.get(
    "CALLBACKD_TEST_PG", "postgresql://callbackd_test:callbackd_test@127.0.0.1:5432/postgres"
)


def entries(n: int) -> list[Spooled]:
    """n missed calls from 2,000 numbers (repeat callers merge), each with its call record."""
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    out: list[Spooled] = []
    for i in range(n // 2):
        at = t0 + timedelta(seconds=i)
        lid = f"1772442000.{i}"
        number = f"+1202555{i % 2000:04d}"
        out.append(
            Spooled(
                Contact(
                    Source.AMI,
                    lid,
                    number,
                    "queue_abandon",
                    at,
                    name="Caller",
                    waited=30,
                    caller_gave_up=True,
                ),
                None,
                at,
            )
        )
        call = CallTrack(
            lid, number, "Caller", "100", "from-pstn", at - timedelta(seconds=30), queue="support"
        )
        call.ended_at, call.missed = at, MissReason.QUEUE_ABANDON
        out.append(Spooled(call, None, at))
    return out


def write_spool(path: Path, items: list[Spooled]) -> None:
    import json

    with path.open("w") as f:
        for e in items:
            f.write(json.dumps(encode(e), separators=(",", ":")) + "\n")


async def bench_append(tmp: Path, n: int) -> list[float]:
    spool = Spool(tmp / "append.jsonl", n + 1)
    spool.open()
    times = []
    for e in entries(n):
        t = time.perf_counter()
        spool.append(e)
        times.append((time.perf_counter() - t) * 1000)
    spool.close()
    return times


async def replay(url: str, tmp: Path, n: int) -> tuple[float, int, int]:
    engine = db.make_engine(url)
    await db.upgrade(engine)
    store = Store(
        engine,
        node="bench",
        schedule=Schedule(calendar=BusinessCalendar.always_open("UTC")),
        claim_lease=CLAIM_LEASE,
    )
    path = tmp / f"spool-{uuid.uuid4().hex[:6]}.jsonl"
    write_spool(path, entries(n))
    spool = Spool(path, 10 * n)
    started = time.perf_counter()
    spool.open()
    limits = AbuseLimits(new_requests_per_number=0, new_requests_global=0)
    intake = IntakeService(store, spool, IntakeRules(), AbuseGuard(limits), mask_numbers=True)
    intake.start()
    while intake.backlog().items:  # noqa: ASYNC110 - read as status and /metrics read it
        await asyncio.sleep(0.02)
    seconds = time.perf_counter() - started
    await intake.close(5)
    async with engine.connect() as conn:
        from sqlalchemy import text

        contacts = (
            await conn.execute(text("SELECT count(DISTINCT source_ref), count(*) FROM contacts"))
        ).one()
        calls = (await conn.execute(text("SELECT count(*) FROM calls"))).scalar_one()
    await engine.dispose()
    assert contacts[0] == contacts[1] == n // 2, contacts
    assert calls == n // 2, calls
    return seconds, contacts[1], calls


async def pg_url() -> tuple[str, str]:
    import asyncpg

    name = f"callbackd_b_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}", name


async def pg_drop(name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN_DSN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def main_async(args: argparse.Namespace) -> dict:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    figures = []
    with tempfile.TemporaryDirectory(prefix="cbd-spool-") as d:
        tmp = Path(d)
        say("append (fsync each)")
        appends = await bench_append(tmp, 2000)
        figures.append(figure("append_ms", "spool append, fsync'd", "ms", appends, p99=True, over="appends"))
        sq = []
        for run in range(args.runs):
            secs, _, _ = await replay(f"sqlite+aiosqlite:///{tmp}/replay-{run}.db", tmp, args.items)
            say(f"replay sqlite run {run + 1}: {secs:.1f} s")
            sq.append(secs)
        figures.append(
            figure(
                "replay_sqlite_s",
                f"replay {args.items:,} spooled items (SQLite)",
                "s",
                sq,
                over="runs",
            )
        )
        if not args.no_pg:
            pg = []
            for run in range(args.runs):
                url, name = await pg_url()
                try:
                    secs, _, _ = await replay(url, tmp, args.items)
                finally:
                    await pg_drop(name)
                say(f"replay postgresql run {run + 1}: {secs:.1f} s")
                pg.append(secs)
            figures.append(
                figure(
                    "replay_pg_s",
                    f"replay {args.items:,} spooled items (PostgreSQL)",
                    "s",
                    pg,
                    over="runs",
                )
            )
    res = result("spool", "Intake spool: append and replay", figures, items=args.items)
    res["notes"].append(
        f"{args.items:,} spooled items = {args.items // 2:,} missed-call contacts from 2,000 numbers"
        f" and their {args.items // 2:,} call records; each contact checked stored exactly once"
    )
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=10_000, help="spooled items (contacts + call records)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-pg", action="store_true")
    p.add_argument("--quick", action="store_true", help="2,000 items, one run")
    p.add_argument("--json", metavar="FILE", help="write the result here")
    args = p.parse_args()
    if args.quick:
        args.items, args.runs = 2000, 1
    res = asyncio.run(main_async(args))
    write_result(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
