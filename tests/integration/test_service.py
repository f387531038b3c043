"""callbackd as a service, on the real lab: the sd_notify and watchdog protocol over a real notify
socket, SIGHUP reload without dropping AMI, the SIGTERM drain and the forced exit, `callbackd status`
and the Prometheus endpoint of a running daemon."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from daemonkit import NotifySocket
from labdaemon import DaemonProcess, cli, lab_config, requests_json

pytestmark = pytest.mark.lab

TOKEN = "lab-http-token-0123456789"


@pytest.fixture(scope="module")
def timestamped(lab):
    """manager.conf now has timestampevents = yes; a lab started before that needs a reload."""
    lab.run("reload")


@pytest.fixture
def fresh(fresh, timestamped):
    """conftest's default lab state, on a lab whose events carry timestamps."""
    return


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


async def wait(daemon: DaemonProcess, name: str, timeout: float = 30, **match: object) -> dict:
    return await asyncio.to_thread(daemon.wait_for, name, timeout, **match)


def ts(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def add(config: Path, number: str) -> int:
    out = cli(config, "requests", "add", number)
    # The output line, not a log line the store wrote on the way (`request.waits`).
    [line] = [x for x in out.stdout.splitlines() if x.startswith("request ")]
    assert "created" in line, out.stdout + out.stderr
    return int(line.split()[1])


async def exited(daemon: DaemonProcess, timeout: float) -> int:
    return await asyncio.to_thread(daemon.proc.wait, timeout)


async def test_notify_ready_after_login_and_migration_then_watchdog_reload_and_stopping(lab, fresh, tmp_path):
    notify = NotifySocket()
    daemon = DaemonProcess(
        lab_config(tmp_path), env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"}
    )
    try:
        ready_at = await notify.arrival("READY=1", 30)
        login = await wait(daemon, "ami.login", 5)
        migrated = await wait(daemon, "db.migrated", 5)
        # READY comes only once AMI is logged in and the database is migrated.
        assert ts(login) <= ready_at and ts(migrated) <= ready_at
        status = [m for m in notify.lines() if m.startswith("STATUS=")]
        assert any(m.startswith("STATUS=AMI up at 127.0.0.1:5038, database up; ") for m in status), status
        assert migrated["revision"]

        # WATCHDOG=1 every WATCHDOG_USEC / 2 = 1 s, from the running loop.
        await asyncio.sleep(4)
        pings = [t for t in notify.times("WATCHDOG=1") if ready_at <= t <= ready_at + 4]
        assert len(pings) >= 3, notify.lines()

        # SIGHUP: RELOADING=1 (with the monotonic time systemd 253+ wants), then READY=1 again.
        hup_at = time.time()
        daemon.proc.send_signal(signal.SIGHUP)
        reloading = await notify.arrival("RELOADING=1", 5, after=hup_at)
        assert any(m.startswith("MONOTONIC_USEC=") for m in notify.lines())
        again = await notify.arrival("READY=1", 5, after=reloading)
        assert again >= reloading
        await wait(daemon, "config.reloaded", 5)

        term_at = time.time()
        daemon.proc.send_signal(signal.SIGTERM)
        await notify.arrival("STOPPING=1", 10, after=term_at)
        assert await exited(daemon, 40) == 0
        assert notify.times("READY=1")[0] == ready_at  # no READY before the first one we saw
    finally:
        daemon.stop()
        notify.close()


async def test_sighup_applies_live_settings_and_keeps_ami(lab, fresh, tmp_path):
    port = free_port()
    http = f"\n[http]\nenabled = true\nport = {port}\n"

    def config(blacklist: str, delays: str, max_concurrent: int, ping: str, extra: str = "") -> Path:
        return lab_config(
            tmp_path,
            replace={
                'default_region = "US"': f'default_region = "US"\nblacklist = ["{blacklist}"]',
                # The busy client below tests the ladder itself: no shorter wait after a busy line.
                'delays = ["1h", "3h", "6h"]': f'delays = [{delays}]\noutcome_delays = {{ busy = "ladder" }}',
                "max_concurrent = 2": f"max_concurrent = {max_concurrent}",
                'ping_interval = "5s"': f'ping_interval = "{ping}"',
            },
            extra=http + extra,
        )

    path = config("+12025550366", '"1h", "3h", "6h"', 2, "5s")
    daemon = DaemonProcess(path, env={"CALLBACKD_HTTP_TOKEN": TOKEN})
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        await wait(daemon, "ami.resynced", 30)
        async with httpx.AsyncClient(base_url=base, headers=auth) as client:
            r = await client.post("/v1/callbacks", json={"phone": "+12025550366"})
            assert r.status_code == 403, r.text  # blacklisted at start

            # The new file: another blacklist, a 7 min ladder, one call at a time, [limits], and a
            # change that needs a restart (the AMI ping), so it is reported and not applied.
            config("+12025550376", '"7m"', 1, "6s", extra="\n[limits]\nattempts_per_hour = 50\n")
            daemon.proc.send_signal(signal.SIGHUP)
            reloaded = await wait(daemon, "config.reloaded", 10)
            assert set(reloaded["changed"]) == {
                "numbers.blacklist",
                "schedule.delays",
                "dialer.max_concurrent",
                "limits.attempts_per_hour",
            }, reloaded
            restart = await wait(daemon, "config.restart_needed", 5)
            assert restart["keys"] == ["ami.ping_interval"]

            r = await client.post("/v1/callbacks", json={"phone": "+12025550376"})
            assert r.status_code == 403, r.text  # the new blacklist reached the HTTP intake
            r = await client.post("/v1/callbacks", json={"phone": "+12025550366"})
            assert r.status_code == 202, r.text  # and the old one is gone
        # The ladder in force is the new one: a busy client (...6) is due again 7 min after the try.
        ringing = await wait(daemon, "operator.ringing", 20, number="+12025550366")
        out = await wait(daemon, "attempt.outcome", 30, number="+12025550366")
        assert out["outcome"] == "client_busy" and out["request_status"] == "open"
        gap = datetime.fromisoformat(out["next_due"]).timestamp() - ts(ringing)
        assert 6.5 * 60 < gap < 7.5 * 60, gap

        # A file that does not validate changes nothing and says why, naming the key.
        path.write_text(path.read_text().replace("max_concurrent = 1", "max_concurrent = 0"))
        daemon.proc.send_signal(signal.SIGHUP)
        failed = await wait(daemon, "config.reload_failed", 10)
        assert any(e.startswith("dialer.max_concurrent:") for e in failed["errors"]), failed
        assert failed["level"] == "error"
        async with httpx.AsyncClient(base_url=base, headers=auth) as client:
            r = await client.post("/v1/callbacks", json={"phone": "+12025550376"})
            assert r.status_code == 403  # still the config of the last good reload

        # AMI stayed up through both reloads: one login, no disconnect.
        assert len(daemon.events("ami.login")) == 1
        assert daemon.events("ami.disconnected") == []
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0


async def test_first_sigterm_lets_the_call_in_flight_finish_and_starts_no_new_one(lab, fresh, tmp_path):
    lab.pstn("--ring", "6")  # answering clients ring 6 s first
    config = lab_config(tmp_path, replace={"max_concurrent = 2": "max_concurrent = 1"})
    daemon = DaemonProcess(config)
    try:
        await wait(daemon, "ami.resynced", 30)
        first = add(config, "+12025550381")
        second = add(config, "+12025550382")
        ringing = await wait(daemon, "client.ringing", 30)
        assert ringing["request_id"] == first
        term_at = time.time()
        daemon.proc.send_signal(signal.SIGTERM)
        stopping = await wait(daemon, "daemon.stopping", 5)
        assert stopping["in_flight"] == 1

        status = tmp_path / "status.json"
        deadline = time.monotonic() + 5
        while json.loads(status.read_text())["state"] != "draining":
            assert time.monotonic() < deadline, status.read_text()
            await asyncio.sleep(0.2)

        assert await exited(daemon, 40) == 0
        elapsed = time.time() - term_at
    finally:
        daemon.stop()
    out = daemon.events("attempt.outcome")
    assert [(o["request_id"], o["outcome"]) for o in out] == [(first, "answered")]
    [stopped] = daemon.events("daemon.stopped")
    assert stopped["drained"] is True and stopped["in_flight"] == 0
    # The outcome was stored before the exit, and nothing was dialled after SIGTERM.
    assert ts(out[0]) <= ts(stopped)
    assert [e for e in daemon.events("operator.ringing") if ts(e) >= term_at] == []
    assert elapsed < 30
    assert requests_json(config, "show", str(first))["status"] == "reached"
    later = requests_json(config, "show", str(second))
    assert later["status"] == "open" and later["attempts_detail"] == []
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "stopped"


async def test_second_sigterm_exits_at_once_with_an_error(lab, fresh, tmp_path):
    lab.pstn("--ring", "6")
    config = lab_config(tmp_path)
    daemon = DaemonProcess(config)
    try:
        await wait(daemon, "ami.resynced", 30)
        add(config, "+12025550391")
        await wait(daemon, "client.ringing", 30)
        daemon.proc.send_signal(signal.SIGTERM)
        await wait(daemon, "daemon.stopping", 5)
        t = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = await exited(daemon, 10)
        assert time.monotonic() - t < 2
        assert code != 0
        assert daemon.wait_for("daemon.forced_exit", 1)
        assert daemon.events("daemon.stopped") == []
    finally:
        daemon.stop()


async def test_status_command_on_a_running_and_a_stopped_daemon(lab, fresh, daemon_factory, tmp_path):
    lab.run("cli", "queue pause member PJSIP/op2 queue support")
    try:
        lab.run("cli", "queue pause member PJSIP/op1 queue support")
        daemon = daemon_factory()
        add(daemon.config, "+12025550392")  # not dialled: every operator is paused
        lab.run("cli", "queue unpause member PJSIP/op1 queue support")
        await asyncio.sleep(2)  # the pause is seen, the request is now being dialled or done
        res = cli(daemon.config, "status", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        text = res.stdout
        assert ": running (pid " in text
        assert "AMI              connected to 127.0.0.1:5038, 0 reconnect(s)" in text
        assert "last error       none" in text
        assert "open requests" in text and "next due" in text
        rep = json.loads(cli(daemon.config, "status", "--json").stdout)
        assert rep["running"] is True and rep["daemon"]["ami"]["connected"] is True
        assert rep["daemon"]["pid"] == daemon.proc.pid and rep["daemon"]["node"] == "lab"
        assert rep["daemon"]["operators"]["members"] == 2
        free = {o["interface"]: o["name"] for o in rep["daemon"]["operators"]["free"]}
        assert "PJSIP/op2" not in free  # paused
        assert rep["database"]["error"] is None
    finally:
        lab.run("cli", "queue unpause member PJSIP/op1 queue support")
        lab.run("cli", "queue unpause member PJSIP/op2 queue support")
    # Free operators are listed by name once they are free.
    deadline = time.monotonic() + 30
    while True:
        rep = json.loads(cli(daemon.config, "status", "--json").stdout)
        free = {o["interface"]: o["name"] for o in rep["daemon"]["operators"]["free"]}
        if free == {"PJSIP/op1": "Operator One", "PJSIP/op2": "Operator Two"}:
            break
        assert time.monotonic() < deadline, json.dumps(rep["daemon"], indent=1)
        await asyncio.sleep(1)
    text = cli(daemon.config, "status").stdout
    [line] = [x for x in text.splitlines() if "operators free" in x]
    assert line.startswith("  operators free   2 of 2: "), text  # least recently used first
    assert "Operator One (PJSIP/op1)" in line and "Operator Two (PJSIP/op2)" in line

    assert daemon.stop() == 0
    res = cli(daemon.config, "status", check=False)
    assert res.returncode == 3
    assert res.stdout.startswith("callbackd: NOT RUNNING: stopped at ")


async def test_metrics_endpoint_of_a_running_daemon(lab, fresh, tmp_path):
    port = free_port()
    token = tmp_path / "http-token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    config = lab_config(
        tmp_path,
        extra=f'\n[http]\nenabled = true\nport = {port}\ntoken_file = "{token}"\n',
        # The next due time below is the ladder's rung, not the shorter wait after a busy line.
        replace={
            'delays = ["1h", "3h", "6h"]': 'delays = ["1h", "3h", "6h"]\noutcome_delays = { busy = "ladder" }'
        },
    )
    daemon = DaemonProcess(config)
    try:
        await wait(daemon, "ami.resynced", 30)
        req = add(config, "+12025550396")  # ...6: busy at the PSTN
        out = await wait(daemon, "attempt.outcome", 30, request_id=req)
        assert out["outcome"] == "client_busy"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/metrics")  # no token
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            r2 = await client.post("/v1/callbacks", json={"phone": "+12025550123"})
            assert r2.status_code == 401  # the rest of the listener still wants it
    finally:
        assert daemon.stop() == 0
    samples = parse(r.text)
    assert samples['callbackd_attempts_total{outcome="client_busy"}'] == 1
    assert samples['callbackd_attempts_total{outcome="answered"}'] == 0
    assert samples['callbackd_requests{status="open"}'] == 1
    assert samples['callbackd_requests{status="reached"}'] == 0
    assert samples["callbackd_ami_connected"] == 1
    assert samples["callbackd_ami_reconnects_total"] == 0
    assert samples["callbackd_operators"] == 2
    assert samples["callbackd_time_to_first_attempt_seconds_count"] == 1
    assert samples["callbackd_time_to_first_attempt_seconds_sum"] < 10
    # Asterisk stamps its events (timestampevents = yes): every one of them was measured.
    assert samples["callbackd_ami_event_lag_seconds_count"] > 10
    assert (
        samples["callbackd_ami_event_lag_seconds_sum"] / samples["callbackd_ami_event_lag_seconds_count"] < 1
    )
    assert samples['callbackd_ami_event_lag_seconds_bucket{le="1.0"}'] > 0
    due = samples["callbackd_next_due_timestamp_seconds"]
    assert abs(due - (time.time() + 3600)) < 120  # the ladder's 1 h after the busy try


def parse(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
