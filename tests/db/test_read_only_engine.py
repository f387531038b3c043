"""On SQLite a report's long read must not hold the write lock: the daemon writes meanwhile.

Every transaction of the daemon's engine starts with BEGIN IMMEDIATE (read-modify-write in one
transaction); a report, an export or the console's figures read through a read-only engine,
whose deferred snapshot leaves the write lock to the daemon.
"""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from callbackd.adapters import db


def write_now(path: str) -> None:
    """A write that does not wait for the lock (timeout 0): it fails if anyone holds it."""
    con = sqlite3.connect(path, timeout=0)
    try:
        with con:
            con.execute("INSERT INTO t VALUES (2)")
    finally:
        con.close()


@pytest.fixture
def path(tmp_path) -> str:
    path = str(tmp_path / "callbackd.db")
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (x INTEGER)")
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    con.close()
    return path


async def test_a_read_only_engine_leaves_the_write_lock_to_the_daemon(path):
    engine = db.make_engine(f"sqlite+aiosqlite:///{path}", read_only=True)
    try:
        async with engine.begin() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1
            write_now(path)  # the daemon's write goes through while the report reads
            # the report keeps its snapshot: one consistent view for the whole pass
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1
    finally:
        await engine.dispose()


async def test_the_daemons_engine_still_takes_the_write_lock_at_begin(path):
    engine = db.make_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT count(*) FROM t"))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                write_now(path)
    finally:
        await engine.dispose()
