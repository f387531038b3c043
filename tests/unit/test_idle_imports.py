"""What a daemon with the lab's features loads: the report renderers (openpyxl), Alembic, FastAPI,
APScheduler and prometheus_client stay out until a feature that needs them is used. Checked in a
fresh interpreter on a real SQLite database, since import state is per process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy import inspect

from callbackd.adapters import db

TESTS = Path(__file__).resolve().parents[1]
HEAVY = (
    "openpyxl",
    "alembic",
    "mako",
    "fastapi",
    "apscheduler",
    "prometheus_client",
    "callbackd.adapters.reports.xlsx",
    "sqlalchemy.dialects.postgresql",  # on SQLite
    "callbackd.adapters.reports.figures",  # the report machinery: with a report, not housekeeping
    "callbackd.adapters.reports.queries",
    "callbackd.domain.analytics",
)


async def _migrate(url: str, revision: str = "head") -> None:
    engine = db.make_engine(url)
    await db.upgrade(engine, revision)
    await engine.dispose()


def _run(script: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_built_daemon_on_a_current_database_loads_no_renderer_nor_alembic(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/callbackd.db"
    asyncio.run(_migrate(url))
    found = _run(
        f"""
        import asyncio, json, sys
        sys.path.insert(0, {str(TESTS)!r})
        from daemonkit import built_daemon, daemon_config
        from pathlib import Path

        async def main():
            cfg = daemon_config(Path({str(tmp_path)!r}), {url!r}, agi={{"enabled": True}})
            async with built_daemon(cfg) as d:
                line = d._running_line()  # the status line: ReportSettings
                from callbackd.adapters.reports.touches import fold_touches  # housekeeping
                await fold_touches(d.store.engine)
                heavy = {list(HEAVY)!r}
                print(json.dumps({{"line": line, "loaded": [m for m in heavy if m in sys.modules]}}))

        asyncio.run(main())
        """
    )
    assert found["line"]
    assert found["loaded"] == []


def test_reports_package_names_load_on_first_use(tmp_path):
    found = _run(
        """
        import io, json, sys
        from callbackd.adapters import reports
        before = "openpyxl" in sys.modules
        from callbackd.adapters.reports import CsvOptions, ReportSettings, build_report, write_report
        names_only = "openpyxl" in sys.modules
        xlsx = reports.xlsx  # a submodule by attribute, as before
        print(json.dumps({
            "before": before,
            "names_only": names_only,
            "after": "openpyxl" in sys.modules,
            "xlsx": xlsx.__name__,
            "same": reports.build_report is build_report,
            "dir": all(n in dir(reports) for n in reports.__all__),
        }))
        """
    )
    assert found == {
        "before": False,
        "names_only": False,
        "after": True,
        "xlsx": "callbackd.adapters.reports.xlsx",
        "same": True,
        "dir": True,
    }


def test_an_older_database_is_still_migrated_to_the_head(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/old.db"
    before = f"{int(db.HEAD) - 1:04d}"
    asyncio.run(_migrate(url, before))

    async def start() -> tuple[str | None, str | None, bool]:
        engine = db.make_engine(url)
        try:
            found = await db.stored_revision(engine)
            revision, migrated = await db.ensure_current(engine)
            return found, revision, migrated
        finally:
            await engine.dispose()

    assert asyncio.run(start()) == (before, db.HEAD, True)


def test_run_migrates_a_new_or_older_database_in_a_child_interpreter(tmp_path):
    """Daemon.run's path (migrate_apart): the schema reaches the head, Alembic never loads here."""
    new = f"sqlite+aiosqlite:///{tmp_path}/new.db"
    old = f"sqlite+aiosqlite:///{tmp_path}/old.db"
    asyncio.run(_migrate(old, f"{int(db.HEAD) - 1:04d}"))
    found = _run(
        f"""
        import asyncio, json, sys
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from callbackd.adapters import db
        from callbackd.app import Daemon
        from daemonkit import daemon_config

        async def main():
            out = {{}}
            for name, url in (("new", {new!r}), ("old", {old!r}), ("again", {new!r})):
                d = Daemon(daemon_config(Path({str(tmp_path)!r}), url))
                d.migrate_apart = True
                engine = db.make_engine(url)
                try:
                    out[name] = list(await d._wait_for_database(engine))
                finally:
                    await engine.dispose()
            out["alembic"] = [m for m in sys.modules if m.split(".")[0] in ("alembic", "mako")]
            print(json.dumps(out))

        asyncio.run(main())
        """
    )
    assert found == {
        "new": [db.HEAD, True],
        "old": [db.HEAD, True],
        "again": [db.HEAD, False],
        "alembic": [],
    }

    async def tables() -> list[str]:
        engine = db.make_engine(new)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda c: inspect(c).get_table_names())
        finally:
            await engine.dispose()

    assert {"alembic_version", "requests", "contacts", "calls"} <= set(asyncio.run(tables()))


def test_a_migration_apart_that_fails_says_why(tmp_path):
    """A database that does not answer: DatabaseAway (start-up waits); one Alembic cannot migrate
    (a revision this version does not know): DatabaseProblem with Alembic's message."""
    unknown = f"sqlite+aiosqlite:///{tmp_path}/future.db"

    async def main() -> tuple[BaseException, BaseException]:
        engine = db.make_engine(unknown)
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            await conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('9999')")
        away = db.make_engine("postgresql+asyncpg://callbackd@127.0.0.1:1/none")
        errors = []
        for e in (away, engine):
            try:
                await db.upgrade_apart(e)
            except Exception as exc:  # what comes back is the point
                errors.append(exc)
            await e.dispose()
        return errors[0], errors[1]

    away, problem = asyncio.run(main())
    assert isinstance(away, db.DatabaseAway) and db.database_away(away)
    assert isinstance(problem, db.DatabaseProblem) and not db.database_away(problem)
    assert "9999" in str(problem)


def test_metrics_are_counted_only_where_the_http_listener_can_serve_them(tmp_path):
    found = _run(
        f"""
        import json, sys
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from callbackd.app import Daemon, NoMetrics
        from daemonkit import daemon_config

        tmp = Path({str(tmp_path)!r})
        off = Daemon(daemon_config(tmp))
        off.metrics.call_recorded("abandoned")  # fed as always, kept nowhere
        loaded_off = "prometheus_client" in sys.modules
        no_route = Daemon(daemon_config(tmp, http={{"enabled": True, "metrics": False}}))
        on = Daemon(daemon_config(tmp, http={{"enabled": True}}))
        on.metrics.call_recorded("abandoned")
        text = on.metrics.render().decode()
        print(json.dumps({{
            "off": type(off.metrics).__name__,
            "loaded_off": loaded_off,
            "no_route": isinstance(no_route.metrics, NoMetrics),
            "on": type(on.metrics).__name__,
            "counted": 'callbackd_calls_abandoned_total{{reason="abandoned"}} 1.0' in text,
        }}))
        """
    )
    assert found == {
        "off": "NoMetrics",
        "loaded_off": False,
        "no_route": True,
        "on": "Metrics",
        "counted": True,
    }
