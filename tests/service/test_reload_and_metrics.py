"""Daemon.reload (what SIGHUP runs) and GET /metrics, in process on a real SQLite database and a real
HTTP listener; AMI is never connected. The lab tests (tests/integration/test_service.py) run the same
through a real process and a real Asterisk."""

from __future__ import annotations

import socket
import time
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from daemonkit import built_daemon
from structlog.testing import capture_logs

from callbackd.adapters.store import Finished
from callbackd.app import Daemon
from callbackd.config import load
from callbackd.domain.detection import Answered, CallEnded, CallTrack, MissReason
from callbackd.domain.intake import Contact, Disposition, Source
from callbackd.domain.outcomes import Outcome

TOKEN = "service-test-token-0123456789"


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def write(path: Path, *, blacklist: str, delays: str, max_concurrent: int, port: int = 5038, extra: str = ""):
    secret = path.parent / "ami-secret"  # never used: AMI is not connected here
    secret.write_text("unused\n")
    secret.chmod(0o600)
    path.write_text(
        f'node = "t"\n[ami]\nport = {port}\nsecret_file = "{secret}"\n'
        f'[database]\nurl = "sqlite+aiosqlite:///{path.parent}/cb.db"\n'
        f'[numbers]\nblacklist = ["{blacklist}"]\n'
        f"[dialer]\nmax_concurrent = {max_concurrent}\n"
        f'[service]\nspool_file = "{path.parent}/spool.jsonl"\nstatus_file = "{path.parent}/status.json"\n'
        f'[schedule]\ndelays = [{delays}]\n[schedule.hours]\n"mon-sun" = "00:00-24:00"\n' + extra
    )
    path.chmod(0o600)


def daemon_for(path: Path):
    return built_daemon(load(path), path)


def contact(number: str) -> Contact:
    return Contact(
        source=Source.HTTP, source_ref=uuid.uuid4().hex, raw_number=number, reason="web", at=datetime.now(UTC)
    )


async def test_reload_swaps_the_live_parts_and_reports_the_rest(tmp_path):
    path = tmp_path / "callbackd.toml"
    write(path, blacklist="+12025550101", delays='"1h", "3h"', max_concurrent=2)
    async with daemon_for(path) as d:
        assert (await d.submit(contact("+12025550101"))).disposition is Disposition.BLOCKED
        write(
            path,
            blacklist="+12025550102",
            delays='"7m"',
            max_concurrent=1,
            port=5039,
            extra="[limits]\nattempts_per_hour = 50\n",
        )
        with capture_logs() as logs:
            assert d.reload() is True
        [done] = [e for e in logs if e["event"] == "config.reloaded"]
        assert done["changed"] == [
            "dialer.max_concurrent",
            "limits.attempts_per_hour",
            "numbers.blacklist",
            "schedule.delays",
        ]
        [restart] = [e for e in logs if e["event"] == "config.restart_needed"]
        assert restart["keys"] == ["ami.port"]
        assert d.store.schedule.ladder.delays == (timedelta(minutes=7),)
        assert d.dialer.cfg.max_concurrent == 1 and d.dialer.wake.is_set()
        assert d.guard.limits.attempts_per_hour == 50
        assert d.cfg.ami.port == 5038  # kept until a restart
        assert d.reloaded_at is not None
        # The intake decides with the new rules.
        assert (await d.submit(contact("+12025550102"))).disposition is Disposition.BLOCKED
        assert (await d.submit(contact("+12025550101"))).created

        # A file that does not validate: nothing changes, the reason names the key.
        path.write_text(path.read_text().replace("max_concurrent = 1", "max_concurrent = 0"))
        with capture_logs() as logs:
            assert d.reload() is False
        [failed] = [e for e in logs if e["event"] == "config.reload_failed"]
        assert failed["log_level"] == "error"
        assert failed["errors"] == ["dialer.max_concurrent: Input should be greater than or equal to 1"]
        assert d.dialer.cfg.max_concurrent == 1

        # A secret in a file others can read is refused on reload too, and its value never logged.
        write(path, blacklist="+12025550102", delays='"7m"', max_concurrent=3, extra="")
        path.write_text(path.read_text().replace("[ami]\n", '[ami]\nsecret = "reload-secret-value"\n'))
        path.chmod(0o644)
        with capture_logs() as logs:
            assert d.reload() is False
        [failed] = [e for e in logs if e["event"] == "config.reload_failed"]
        assert "chmod o-rwx" in failed["errors"][0]
        assert "reload-secret-value" not in repr(logs)
        assert d.dialer.cfg.max_concurrent == 1


async def test_a_reload_before_the_daemon_runs_is_skipped(tmp_path):
    path = tmp_path / "callbackd.toml"
    write(path, blacklist="+12025550101", delays='"1h"', max_concurrent=2)
    d = Daemon(load(path), path)
    with capture_logs() as logs:
        d._on_hup()
    assert [e["event"] for e in logs] == ["config.reload_skipped"]


@pytest.mark.parametrize("enabled", [True, False])
async def test_metrics_are_served_without_the_token(tmp_path, monkeypatch, enabled):
    monkeypatch.setenv("CALLBACKD_HTTP_TOKEN", TOKEN)
    path = tmp_path / "callbackd.toml"
    port = free_port()
    write(
        path,
        blacklist="+12025550101",
        delays='"1h"',
        max_concurrent=2,
        extra=f"[http]\nenabled = true\nport = {port}\nmetrics = {str(enabled).lower()}\n",
    )
    async with daemon_for(path) as d:
        created = datetime.now(UTC) - timedelta(seconds=42)
        await d.submit(contact("+12025550103"))
        await d.submit(contact("+12025550101"))  # blacklisted: a refusal
        d.on_event({"Event": "Newexten", "Timestamp": f"{time.time() - 0.05:.6f}"})
        d.on_event({"Event": "Newexten"})  # no Timestamp (timestampevents = no): not measured
        req = SimpleNamespace(
            id=1, created_at=created, attempts_made=0, operator_tries=0, last_attempt_at=None
        )
        d._attempt_started(None, req)  # type: ignore[arg-type]
        d._attempt_started(None, req)  # type: ignore[arg-type]  # once per request
        d._attempt_finished(None, Finished(1, "open", Outcome.CLIENT_BUSY, True, None, None))  # type: ignore[arg-type]
        d._attempt_finished(None, Finished(2, "reached", Outcome.ANSWERED, True, None, None))  # type: ignore[arg-type]
        now = datetime.now(UTC)
        for i, missed in enumerate([None, MissReason.QUEUE_ABANDON, MissReason.QUEUE_ABANDON]):
            call = CallTrack(
                f"17000.{i}", "2025550109", "", "", "from-pstn", now, ended_at=now, missed=missed
            )
            d.intake.put(CallEnded(call))
        await d.submit(contact("+12025550105"))
        d.intake.put(Answered("17000.9", "+12025550105", None, now))  # closes that request
        await d.intake.idle()
        async with AsyncExitStack() as stack:
            await d._start_lead_intake(stack)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                r = await client.get("/metrics")
                assert (await client.post("/v1/callbacks", json={"phone": "+12025550104"})).status_code == 401
        if not enabled:
            assert r.status_code == 404
            return
        assert r.status_code == 200
        text = r.text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    assert samples['callbackd_requests{status="open"}'] == 1
    assert samples["callbackd_calls_offered_total"] == 3
    assert samples['callbackd_calls_abandoned_total{reason="queue_abandon"}'] == 2
    assert samples['callbackd_calls_recovered_total{how="callback"}'] == 1
    assert samples['callbackd_calls_recovered_total{how="client_called_in"}'] == 1
    [build] = [k for k in samples if k.startswith("callbackd_build_info{")]
    assert 'version="' in build and samples[build] == 1
    assert samples["process_resident_memory_bytes"] > 0 and samples["process_cpu_seconds_total"] > 0
    assert samples['callbackd_requests{status="reached"}'] == 0
    assert samples["callbackd_next_due_timestamp_seconds"] > 0
    assert samples['callbackd_attempts_total{outcome="client_busy"}'] == 1
    assert samples['callbackd_attempts_total{outcome="answered"}'] == 1  # the reached one
    assert samples['callbackd_refusals_total{reason="blacklisted"}'] == 1
    assert samples["callbackd_ami_connected"] == 0
    assert samples["callbackd_ami_reconnects_total"] == 0
    assert samples["callbackd_ami_event_lag_seconds_count"] == 1
    assert 0.04 < samples["callbackd_ami_event_lag_seconds_sum"] < 1
    assert samples["callbackd_time_to_first_attempt_seconds_count"] == 1
    assert 42 <= samples["callbackd_time_to_first_attempt_seconds_sum"] < 45
    assert samples['callbackd_time_to_first_attempt_seconds_bucket{le="60.0"}'] == 1
    assert samples['callbackd_time_to_first_attempt_seconds_bucket{le="30.0"}'] == 0
    # Our registry: the process collector, but not prometheus_client's global platform one.
    assert not any(k.startswith("python_") for k in samples)
