"""Engine set-up and migrations for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
# The newest Alembic revision (the head of callbackd/migrations). Start-up compares it with the
# database's alembic_version and only imports Alembic when they differ; a unit test keeps it
# equal to what Alembic itself finds, so a new migration cannot be forgotten here.
HEAD = "0008"


class DatabaseProblem(Exception):
    """The database is missing, not migrated to this version, or cannot be used; the text says which."""


def make_engine(
    url: str, *, read_only: bool = False, create: bool = True, lock_timeout: float = 30.0
) -> AsyncEngine:
    """An engine for ``url``. ``read_only`` (reports, exports, the console's figures): on SQLite
    its transactions are deferred snapshots that never take the write lock, so a long report
    does not hold up the daemon's writes for its whole length.

    ``create=False`` (admin commands other than ``db upgrade``): a missing SQLite file is a
    :class:`DatabaseProblem`, never created, nor its directory. ``lock_timeout``: how long a
    statement waits for another process's lock on SQLite before "database is locked"."""
    if url.startswith("sqlite"):
        if create:
            _ensure_parent(url)
        else:
            _require_file(url)
        engine = create_async_engine(url, connect_args={"timeout": lock_timeout})
        busy_ms = max(int(lock_timeout * 1000), 0)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            # The driver's own deferred BEGIN would let a read run outside the write that
            # follows it; _begin below starts every transaction instead.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn) -> None:
            # IMMEDIATE takes the write lock at the start, so a read-modify-write (cancel,
            # recover, finish) is one transaction and never overwrites another. WAL readers
            # are not blocked by it, and a read-only engine's snapshot does not block writers.
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    return create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)


def sqlite_path(url: str) -> Path | None:
    """The file a SQLite URL names (None for an in-memory database)."""
    path = url.split(":///", 1)[-1].split("?", 1)[0] if ":///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def _ensure_parent(url: str) -> None:
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def _require_file(url: str) -> None:
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise DatabaseProblem(f"no database at {path} (create it with: callbackd db upgrade)")


async def check_migrated(engine: AsyncEngine) -> None:
    """DatabaseProblem unless the database is at this version's head revision."""
    have, want = await current_revision(engine), head_revision()
    if have is None:
        raise DatabaseProblem("the database is not migrated (run: callbackd db upgrade)")
    if have != want:
        raise DatabaseProblem(
            f"the database is at revision {have}, this callbackd needs {want} (run: callbackd db upgrade, "
            "or use the callbackd version that migrated it)"
        )


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config(url: str):
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the database the engine points at, in one transaction."""
    from alembic import command

    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))

    def _do(connection) -> None:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_do)


async def current_revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def _get(connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(_get)


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


async def stored_revision(engine: AsyncEngine) -> str | None:
    """The database's alembic_version, read without Alembic; None when there is none (a new database)."""

    def _get(connection) -> str | None:
        from sqlalchemy import inspect, text

        if not inspect(connection).has_table("alembic_version"):
            return None
        rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        return rows[0] if len(rows) == 1 else None

    async with engine.connect() as conn:
        return await conn.run_sync(_get)


async def ensure_current(engine: AsyncEngine, *, apart: bool = False) -> tuple[str | None, bool]:
    """Migrate to the head unless the database is already there: (its revision, migrated or not).

    Alembic (and its Mako templates) are imported only when there is something to do, which is
    rare once installed and costs the daemon about 5 MB for its whole life. ``apart`` (the
    daemon): even then, the migration runs in a child interpreter (:func:`upgrade_apart`)."""
    found = await stored_revision(engine)
    if found == HEAD:
        return found, False
    if apart:
        await upgrade_apart(engine)
        return await stored_revision(engine), True
    await upgrade(engine)
    return await current_revision(engine), True


class DatabaseAway(ConnectionError):
    """The migration's child interpreter could not reach the database (see :func:`database_away`)."""


async def upgrade_apart(engine: AsyncEngine) -> None:
    """:func:`upgrade` in a child interpreter (``python -m callbackd.adapters.migrate``).

    Alembic, Mako and the migration scripts, once imported, stay for the life of the process that
    imported them: a daemon started on a new or older database would keep them (about 5 MB of its
    idle RSS). The child migrates in one transaction, as :func:`upgrade` does, and exits. The URL
    (with its password) reaches it on its standard input, not its command line. A failure comes
    back as :class:`DatabaseAway` when the database did not answer (start-up waits for it), else as
    :class:`DatabaseProblem` with the child's error."""
    import asyncio
    import json
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callbackd.adapters.migrate",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C meant for the daemon does not cut the migration short
    )
    out, err = await proc.communicate(engine.url.render_as_string(hide_password=False).encode())
    if proc.returncode == 0:
        return
    try:
        report = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        lines = err.decode(errors="replace").strip().splitlines()
        report = {"away": False, "error": lines[-1] if lines else f"exit status {proc.returncode}"}
    if report.get("away"):
        raise DatabaseAway(report.get("error"))
    raise DatabaseProblem(f"migration failed: {report.get('error')}")


def transient(exc: BaseException) -> bool:
    """For a write: a database that is away (refused, killed, locked, timed out), as opposed to one
    refusing the data. Wide on purpose: the intake spools on anything but a refusal, and replays."""
    from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

    if isinstance(exc, IntegrityError | DataError):
        return False
    # asyncpg's data and constraint errors reach SQLAlchemy as a bare DBAPIError: their SQLSTATE
    # class tells them (22: data exception, 23: integrity constraint violation).
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if isinstance(state, str) and state[:2] in ("22", "23"):
        return False
    return isinstance(exc, DBAPIError | OSError | TimeoutError | ConnectionError)


# At start-up, narrower than transient(): only what waiting can cure. SQLSTATE classes of a server
# that is there but not taking us now: 08 connection exception,
# 53 insufficient resources (too many connections), 57 operator intervention (shutting down,
# starting up), 55 object not in prerequisite state ("not currently accepting connections"),
# 3D invalid catalog name (the database is not created yet).
AWAY_SQLSTATE_CLASSES = ("08", "53", "57", "55", "3D")


def database_away(exc: BaseException) -> bool:
    """Is this a database that does not answer (worth waiting for), not one refusing our SQL?"""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError):
        return True
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(exc, DBAPIError) and isinstance(state, str) and state[:2] in AWAY_SQLSTATE_CLASSES
