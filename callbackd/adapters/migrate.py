"""The child side of :func:`callbackd.adapters.db.upgrade_apart`: migrate, report, exit.

Reads the database URL from standard input, migrates it to the head in one transaction and
exits 0; on a failure, prints one JSON line (``{"away": ..., "error": ...}``: whether the
database did not answer, and the error's first line) and exits 1.
"""

from __future__ import annotations

import asyncio
import json
import sys

from callbackd.adapters import db


async def _migrate(url: str) -> None:
    engine = db.make_engine(url)
    try:
        await db.upgrade(engine)
    finally:
        await engine.dispose()


def main() -> int:
    url = sys.stdin.read().strip()
    try:
        asyncio.run(_migrate(url))
    except Exception as exc:
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
        print(json.dumps({"away": db.database_away(exc), "error": text[0][:300]}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
