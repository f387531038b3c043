"""db.HEAD, the revision start-up compares with the database's alembic_version to skip Alembic,
is the head Alembic finds in callbackd/migrations: a new migration cannot be forgotten there."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from callbackd.adapters import db


def test_head_constant_is_alembics_head():
    assert db.head_revision() == db.HEAD


def test_a_current_database_is_opened_without_importing_alembic(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/c.db"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from callbackd.adapters import db

        async def main():
            engine = db.make_engine({url!r})
            first = await db.ensure_current(engine)
            loaded_by_first = "alembic" in sys.modules
            for name in [m for m in sys.modules if m == "alembic" or m.startswith("alembic.")]:
                del sys.modules[name]
            second = await db.ensure_current(engine)
            await engine.dispose()
            print(first, loaded_by_first, second, "alembic" in sys.modules)

        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [f"('{db.HEAD}',", "True)", "True", f"('{db.HEAD}',", "False)", "False"]
