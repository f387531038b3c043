"""`callbackd status` reads the daemon's status file and the database, and says plainly when the
daemon is not running: no file, a dead pid, a file nobody rewrote, or a clean stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from callbackd.adapters import status
from callbackd.app import Daemon
from callbackd.config import load

ROOT = Path(__file__).resolve().parents[2]


def callbackd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callbackd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "callbackd.toml"
    path.write_text(
        f'node = "box1"\n[database]\nurl = "sqlite+aiosqlite:///{tmp_path}/cb.db"\n'
        f'[service]\nstatus_file = "{tmp_path}/run/status.json"\nstatus_interval = "5s"\n'
        '[schedule.hours]\n"mon-sun" = "00:00-24:00"\n'
        # "due now" must not depend on the hour the test runs at in the client's zone.
        "[schedule.client]\nenabled = false\n"
    )
    path.chmod(0o600)
    assert callbackd(path, "db", "upgrade").returncode == 0
    out = callbackd(path, "requests", "add", "+12025550123")
    assert "created" in out.stdout, out.stderr
    return path


def write_status(config: Path, pid: int, age: timedelta = timedelta(0), **changes) -> dict:
    """The status file as the daemon writes it, from a real Daemon's snapshot."""
    cfg = load(config)
    snap = Daemon(cfg).status_snapshot()
    snap.update({"pid": pid, "state": "running", **changes})
    snap["written_at"] = (datetime.now(UTC) - age).isoformat()
    status.write(cfg.service.status_file, snap)
    return snap


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_no_status_file_means_not_running_but_the_database_is_still_shown(config, tmp_path):
    res = callbackd(config, "status")
    assert res.returncode == 3
    lines = res.stdout.splitlines()
    assert lines[0] == f"callbackd: NOT RUNNING: no status file at {tmp_path}/run/status.json"
    assert "  open requests    1 (open 1)" in lines
    assert any(line.startswith("  next due         ") and "due now" in line for line in lines)


def test_a_running_daemon_is_summarised(config):
    write_status(
        config,
        os.getpid(),
        ami={"address": "127.0.0.1:5038", "connected": True, "reconnects": 2, "last_error": None},
        operators={"members": 3, "free": [{"interface": "PJSIP/op1", "name": "Operator One"}]},
        in_flight=[
            {
                "request_id": 7,
                "attempt_id": "a1",
                "try_no": 2,
                "operator": "PJSIP/op2",
                "number": "+1202***23",
            }
        ],
        last_error={
            "at": "2026-03-02T10:00:00Z",
            "level": "warning",
            "event": "ami.disconnected",
            "detail": "EOF",
        },
    )
    res = callbackd(config, "status")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("callbackd ") and " on box1: running (pid " in lines[0]
    assert "  AMI              connected to 127.0.0.1:5038, 2 reconnect(s)" in lines
    assert "  operators free   1 of 3: Operator One (PJSIP/op1)" in lines
    assert "  calls in flight  1" in lines
    assert "    request 7 try 2: PJSIP/op2 -> +1202***23" in lines
    assert "  last error       2026-03-02T10:00:00+00:00 ami.disconnected: EOF" in lines
    assert "  open requests    1 (open 1)" in lines

    rep = json.loads(callbackd(config, "status", "--json").stdout)
    assert rep["running"] is True and rep["reason"] is None
    assert rep["daemon"]["node"] == "box1" and rep["daemon"]["operators"]["members"] == 3
    assert rep["database"]["open_requests"] == 1 and rep["database"]["by_status"] == {"open": 1}
    assert rep["database"]["next_due"] is not None


def test_a_dead_pid_or_a_file_not_rewritten_means_not_running(config):
    pid = dead_pid()
    write_status(config, pid)
    res = callbackd(config, "status")
    assert res.returncode == 3
    assert res.stdout.startswith(f"callbackd: NOT RUNNING: pid {pid} is gone (status last written ")

    write_status(config, os.getpid(), age=timedelta(seconds=60))
    res = callbackd(config, "status")
    assert res.returncode == 3
    assert "has not written" in res.stdout.splitlines()[0] and "hung?" in res.stdout

    write_status(config, os.getpid(), state="stopped")
    res = callbackd(config, "status", "--json")
    assert res.returncode == 3
    rep = json.loads(res.stdout)
    assert rep["running"] is False and rep["reason"].startswith("stopped at ")


def test_a_database_that_cannot_be_read_is_an_error(tmp_path):
    path = tmp_path / "callbackd.toml"
    path.write_text(
        '[database]\nurl = "postgresql+asyncpg://nobody:x@127.0.0.1:1/none"\n'
        f'[service]\nstatus_file = "{tmp_path}/status.json"\n'
    )
    path.chmod(0o600)  # the URL holds a password
    write_status(path, os.getpid())
    res = callbackd(path, "status")
    assert res.returncode == 4  # the database exit code (LSB: status unknown)
    assert any(line.startswith("  database         ERROR: ") for line in res.stdout.splitlines())


def test_the_status_file_is_replaced_atomically_and_not_world_readable(tmp_path):
    path = tmp_path / "a" / "status.json"
    status.write(path, {"pid": 1})
    status.write(path, {"pid": 2})
    assert status.read(path) == {"pid": 2}
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]
    assert status.read(tmp_path / "none.json") is None
