"""The intake writer's group commit: what queued while the writer was busy is stored in one
transaction, exactly once, and an item the database refuses costs the batch its group commit,
never the other items. Real SQLite and PostgreSQL; AMI events through panoramisk's parser."""

from __future__ import annotations

import asyncio

import pytest
from daemonkit import built_daemon, daemon_config
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from test_durable_intake import ALWAYS, abandon, ami_event, rows, until

from callbackd.adapters import models as m
from callbackd.adapters.db import transient
from callbackd.adapters.spool import Spool
from callbackd.intake import WRITE_BATCH, YIELD_EVERY


async def test_a_burst_is_stored_in_batches_exactly_once_with_merges_inside_a_batch(tmp_path, db_url):
    cfg = daemon_config(tmp_path, url=db_url, schedule=ALWAYS)
    async with built_daemon(cfg) as d:
        # Queued before the writer runs: one burst. Two calls from one number merge into one
        # request inside the batch; a call seen twice (a reconnect's replay) is stored once.
        for i in range(30):
            abandon(d, f"1700000000.{i}", f"20255501{i:02d}")
        abandon(d, "1700000000.100", "2025550100")
        abandon(d, "1700000000.5", "2025550105")
        await asyncio.wait_for(d.intake.idle(), 60)
        assert d.intake.batches >= 1
        assert d.intake.batch_fallbacks == 0
        by_source, calls, requests = await rows(d)
        async with d.store.session() as s:
            merged = (
                await s.execute(select(m.Request.contact_count).where(m.Request.number == "+12025550100"))
            ).scalar_one()
    assert by_source["ami"] == sorted([f"1700000000.{i}" for i in range(30)] + ["1700000000.100"])
    assert (calls, requests, merged) == (31, 30, 2)


async def test_a_burst_longer_than_the_writer_goes_without_yielding_is_one_transaction(tmp_path, db_url):
    """600 items queued at once: one batch, though the writer lets the loop run every YIELD_EVERY
    items of it; a number's second call, hundreds of items later, merges into the request its
    first one opened in the same batch."""
    cfg = daemon_config(tmp_path, url=db_url, schedule=ALWAYS)
    async with built_daemon(cfg) as d:
        for i in range(300):
            abandon(d, f"1700000000.{i}", f"2025551{i % 150:03d}")
        assert len(d.intake._queue) == 600 > 2 * YIELD_EVERY and WRITE_BATCH >= 600
        await asyncio.wait_for(d.intake.idle(), 120)
        assert (d.intake.batches, d.intake.batch_fallbacks) == (1, 0)
        by_source, calls, requests = await rows(d)
        async with d.store.session() as s:
            counts = set((await s.execute(select(m.Request.contact_count))).scalars())
    assert by_source["ami"] == sorted(f"1700000000.{i}" for i in range(300))
    assert (calls, requests, counts) == (300, 150, {2})


async def test_the_backlog_counts_what_is_queued_and_dates_it_by_its_oldest_item(tmp_path):
    cfg = daemon_config(tmp_path, schedule=ALWAYS)
    async with built_daemon(cfg) as d:
        assert (d.intake.backlog().queued, d.intake.backlog().oldest) == (0, None)
        for i in range(5):
            abandon(d, f"1700000000.{i}", f"20255501{i:02d}")
        backlog = d.intake.backlog()  # nothing taken yet: the writer has not run
        first = d.intake._queue[0].entry.queued_at
        assert backlog.queued == 10 and backlog.oldest == first
        assert all(first <= job.entry.queued_at for job in d.intake._queue)
        await asyncio.wait_for(d.intake.idle(), 60)
        assert (d.intake.backlog().queued, d.intake.backlog().oldest) == (0, None)


async def test_an_item_the_database_refuses_costs_the_batch_nothing_but_its_group_commit(tmp_path, pg_url):
    """A queue name longer than its column (PostgreSQL refuses it) in the middle of a burst: the batch
    is rolled back and its items taken one by one: every other item is stored, the bad one set aside."""
    cfg = daemon_config(tmp_path, url=pg_url, schedule=ALWAYS)
    async with built_daemon(cfg) as d:
        for i in range(10):
            abandon(d, f"1700000000.{i}", f"20255501{i:02d}")
        ids = ("Uniqueid: 1700000000.99", "Linkedid: 1700000000.99")
        long_queue, num = "q" * 100, "2025550199"
        for ev in (
            ami_event("Event: Newchannel", *ids, "Context: from-pstn", "Exten: 100", f"CallerIDNum: {num}"),
            ami_event("Event: QueueCallerJoin", *ids, f"Queue: {long_queue}"),
            ami_event("Event: HangupRequest", *ids),
            ami_event("Event: QueueCallerAbandon", *ids, f"Queue: {long_queue}", "HoldTime: 30"),
            ami_event("Event: Hangup", *ids),
        ):
            d.on_event(ev)
        for i in range(10, 20):
            abandon(d, f"1700000000.{i}", f"20255501{i:02d}")
        await asyncio.wait_for(d.intake.idle(), 60)
        assert d.intake.batch_fallbacks >= 1
        # The refused item goes to the spool and what follows it too (order kept); the replay
        # stores those, tries the refused one again and sets it aside.
        await until(lambda: d.intake.backlog().items == 0, 60, "spool replayed")
        by_source, calls, requests = await rows(d)
        assert by_source["ami"] == sorted(f"1700000000.{i}" for i in range(20))
        assert (calls, requests) == (20, 20)
        assert d.intake.link.up is True
    assert not Spool(tmp_path / "spool.jsonl", 10).open()


async def test_a_value_postgresql_refuses_is_not_taken_for_an_outage(pg_url):
    """asyncpg's data errors reach SQLAlchemy as a bare DBAPIError: the intake took a too-long value
    for a database that is away, spooled everything after it and replayed it for ever."""
    engine = create_async_engine(pg_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v varchar(3))"))
        with pytest.raises(DBAPIError) as refused:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('abcdef')"))
    finally:
        await engine.dispose()
    assert not transient(refused.value)
    assert transient(OperationalError("SELECT 1", {}, ConnectionRefusedError("refused")))
