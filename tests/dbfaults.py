"""Database faults injected for real: a PostgreSQL database that refuses connections, a SQLite lock."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

PG_ADMIN_DSN = os.environ.get(
    "CALLBACKD_TEST_PG", "postgresql://callbackd_test:callbackd_test@127.0.0.1:5432/postgres"
)


@contextlib.asynccontextmanager
async def pg_database():
    """A new, empty PostgreSQL database, dropped afterwards."""
    name = f"callbackd_t_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN_DSN} (see README set-up): {exc}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def pg_refuse(url: str, refuse: bool = True) -> None:
    """``ALTER DATABASE ... ALLOW_CONNECTIONS false`` and end its sessions (or allow them again)."""
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(not refuse).lower()}')
        if refuse:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def pg_outage(url: str) -> AsyncIterator[None]:
    await pg_refuse(url)
    try:
        yield
    finally:
        await pg_refuse(url, refuse=False)


class SqliteLock:
    """``BEGIN EXCLUSIVE`` on the daemon's SQLite file from another connection, held for *seconds*."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.path = path
        self.seconds = seconds
        self.taken = threading.Event()
        self.released = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("BEGIN EXCLUSIVE")
            self.taken.set()
            time.sleep(self.seconds)
            con.execute("ROLLBACK")
        finally:
            con.close()
            self.released.set()

    @contextlib.contextmanager
    def held(self) -> Iterator[SqliteLock]:
        self.thread.start()
        assert self.taken.wait(30), f"could not lock {self.path}"
        try:
            yield self
        finally:
            self.thread.join(self.seconds + 60)
