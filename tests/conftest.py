"""Shared fixtures: real databases (a temporary SQLite file, a fresh PostgreSQL database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dbfaults import pg_database

from callbackd.adapters import db
from callbackd.adapters.store import Store
from callbackd.app import CLAIM_LEASE
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.ladder import Schedule


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path}/callbackd.db"


@pytest.fixture
async def pg_url():
    async with pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/callbackd.db"
    else:
        async with pg_database() as url:
            yield url


def always_open_schedule(**kw) -> Schedule:
    return Schedule(calendar=BusinessCalendar.always_open("UTC"), **kw)


@pytest.fixture
async def store(db_url):
    engine = db.make_engine(db_url)
    await db.upgrade(engine)
    yield Store(engine, node="test-node", schedule=always_open_schedule(), claim_lease=CLAIM_LEASE)
    await engine.dispose()


@pytest.fixture
def now():
    return datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
