"""Folding the figures' touch rows: the daemon's hourly housekeeping, and after storing slices.

Apart from :mod:`.figures` so that housekeeping loads only this (SQLAlchemy and the models),
not the report machinery: a daemon nobody asks for figures stays small.
"""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callbackd.adapters import models as m


async def fold_touches(engine: AsyncEngine) -> None:
    """Fold the touch rows the triggers add (the daemon does it hourly, in case nobody looks at
    the figures: the rows a day of writes adds become 24)."""
    async with engine.begin() as conn:
        await fold_touches_in(conn)


async def fold_touches_in(conn: AsyncConnection) -> None:
    """Each hour's touch rows into one with their sum (the sums, all a stored slice compares, stay).

    In the database: a database filled in bulk (an import, a benchmark) holds a row per write, and
    fetching millions of them to add them up took gigabytes.
    """
    t = m.FiguresTouched
    many = select(t.hour).group_by(t.hour).having(func.count() > 1)
    if conn.dialect.name == "postgresql":  # one statement: the rows summed are the rows deleted
        gone = delete(t).where(t.hour.in_(many)).returning(t.hour, t.n).cte("gone")
        await conn.execute(
            insert(t).from_select(
                ["hour", "n"], select(gone.c.hour, func.sum(gone.c.n)).group_by(gone.c.hour)
            )
        )
        return
    # SQLite: this transaction holds the write lock, so no row comes in between; new rows get ids
    # above every existing one.
    top = (await conn.execute(select(func.max(t.id)))).scalar()
    if top is None:
        return
    await conn.execute(
        insert(t).from_select(
            ["hour", "n"],
            select(t.hour, func.sum(t.n)).where(t.id <= top).group_by(t.hour).having(func.count() > 1),
        )
    )
    await conn.execute(delete(t).where(t.id <= top, t.hour.in_(select(t.hour).where(t.id > top))))
