"""`callbackd run` before the PBX or the database: it waits (back-off, STATUS=waiting ..., the start
timeout pushed on) instead of exiting, and its log lines carry journald priorities."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemonkit import NotifySocket

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def config(tmp_path: Path, ami_port: int, db_url: str | None = None) -> Path:
    path = tmp_path / "callbackd.toml"
    path.write_text(
        f"""
[ami]
port = {ami_port}
secret = "not-used-0123"
reconnect_max = "2s"
[database]
url = "{db_url or f"sqlite+aiosqlite:///{tmp_path}/cb.db"}"
[service]
spool_file = "{tmp_path}/spool.jsonl"
status_file = "{tmp_path}/status.json"
[log]
format = "json"
"""
    )
    path.chmod(0o600)
    return path


@pytest.fixture
def notify():
    sock = NotifySocket()
    yield sock
    sock.close()


def start(path: Path, notify: NotifySocket, out: Path, journal: bool = False) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLBACKD_", "JOURNAL_STREAM"))}
    env["NOTIFY_SOCKET"] = notify.path
    log = out.open("w")
    if journal:  # systemd names the stream it connected as DEVICE:INODE
        st = os.fstat(log.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    return subprocess.Popen(
        [sys.executable, "-m", "callbackd", "--config", str(path), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def test_without_ami_it_waits_with_back_off_and_tells_systemd_why(tmp_path, notify):
    port = free_port()  # nobody listens
    out = tmp_path / "out.log"
    proc = start(config(tmp_path, port), notify, out, journal=True)
    try:
        time.sleep(8)
        assert proc.poll() is None, out.read_text()
        waiting = notify.lines("STATUS=waiting for AMI")
        assert waiting, notify.lines()
        assert waiting[0].startswith(f"STATUS=waiting for AMI at 127.0.0.1:{port} (attempt 1, next in ")
        assert "Connection refused" in waiting[0]
        attempts = {int(m.split("(attempt ")[1].split(",")[0]) for m in waiting}
        assert max(attempts) >= 3, waiting  # 1 s, then at most reconnect_max (2 s) apart
        assert notify.lines("EXTEND_TIMEOUT_USEC=30000000"), notify.lines()
        assert not notify.lines("READY=1")
    finally:
        code = stop(proc)
    assert code == 0, out.read_text()  # SIGTERM while waiting: a clean stop
    # Journal priorities: "<4>" warnings, "<6>" info, each followed by one JSON object.
    lines = out.read_text().splitlines()
    assert lines and all(line[:1] == "<" for line in lines), lines[:5]
    events = {json.loads(line[3:])["event"]: line[:3] for line in lines}
    assert events["ami.waiting"] == "<4>" and events["db.migrated"] == "<6>", events
    assert "Traceback" not in out.read_text()


def test_without_the_database_it_waits_for_it(tmp_path, notify):
    db_port = free_port()  # no PostgreSQL there
    out = tmp_path / "out.log"
    url = f"postgresql+asyncpg://callbackd@127.0.0.1:{db_port}/callbackd"
    proc = start(config(tmp_path, free_port(), url), notify, out)
    try:
        first = notify.wait_for("STATUS=waiting for the database (attempt 1, next in ", 15)
        time.sleep(4)
        assert proc.poll() is None, out.read_text()
        assert len(notify.lines("STATUS=waiting for the database")) >= 2, notify.lines()
        assert notify.lines("EXTEND_TIMEOUT_USEC="), notify.lines()
        assert not notify.lines("READY=1")
        assert "refused" in first.lower() or "connect" in first.lower(), first
        # Without the journal stream: plain JSON lines.
        assert all(line.startswith("{") for line in out.read_text().splitlines())
    finally:
        code = stop(proc)
    assert code == 0, out.read_text()  # SIGTERM while waiting: a clean stop


def test_a_postgresql_database_refusing_connections_is_waited_for(tmp_path, notify):
    """``ALLOW_CONNECTIONS false`` (a fail-over, maintenance) answers with an SQL error, not a refused
    socket: still a database that is away, so the daemon waits instead of exiting."""
    import asyncio

    from dbfaults import pg_database, pg_refuse

    async def scenario() -> tuple[int, str, list[str]]:
        async with pg_database() as url:
            await pg_refuse(url)
            out = tmp_path / "out.log"
            proc = start(config(tmp_path, free_port(), url), notify, out)
            try:
                first = await asyncio.to_thread(notify.wait_for, "STATUS=waiting for the database", 15)
                await asyncio.sleep(4)
                alive = proc.poll() is None
                assert alive, out.read_text()
            finally:
                await pg_refuse(url, refuse=False)
                code = stop(proc)
            return code, first, notify.lines("STATUS=waiting for the database")

    code, first, waits = asyncio.run(scenario())
    assert "not currently accepting connections" in first, first
    assert len(waits) >= 2, waits
    assert code == 0
