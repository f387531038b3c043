"""The daemon's migration in a child interpreter (db.upgrade_apart) on both databases: a new
database reaches the head with its tables, and the next start finds nothing to do."""

from __future__ import annotations

from sqlalchemy import inspect

from callbackd.adapters import db


async def test_a_new_database_is_migrated_apart_then_found_current(db_url):
    engine = db.make_engine(db_url)
    try:
        assert await db.ensure_current(engine, apart=True) == (db.HEAD, True)
        assert await db.ensure_current(engine, apart=True) == (db.HEAD, False)
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    assert {"alembic_version", "calls", "contacts", "requests", "attempts", "figures_partials"} <= tables
