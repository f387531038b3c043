"""No secret in any output: the AMI secret, the HTTP token and the MQTT password are set from every
source (config file, secret file, environment), the daemon is run as far as it goes without a
PBX at debug level, and everything it printed is searched for them.

Runs: ``callbackd check-config`` (good and bad files), ``callbackd run`` against an AMI port
nobody listens on and one that hangs up after reading the login, and in process the HTTP and
MQTT intakes (the real Mosquitto) taking leads with right and wrong tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiomqtt
import httpx
import pytest
import structlog
from daemonkit import built_daemon

from callbackd import logs
from callbackd.adapters.ami import AmiClient, AmiNotConnected
from callbackd.config import HTTP_TOKEN_ENV, Config

AMI_SECRET = "ami-secret-7Hq2ZsQ0vXw9"
AMI_FILE_SECRET = "ami-file-secret-Lp3Nb8Rt"
HTTP_TOKEN = "http-token-Uy6Kd1Fm4Jc5Ge2A"
HTTP_FILE_TOKEN = "http-file-token-Wa9Xe3Qs7Bn"
MQTT_PASSWORD = "mqtt-password-Ri5Ot8Pv2Mz"
SECRETS = [AMI_SECRET, AMI_FILE_SECRET, HTTP_TOKEN, HTTP_FILE_TOKEN, MQTT_PASSWORD]
ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def assert_no_secret(text: str) -> None:
    assert text.strip(), "nothing was captured"
    for secret in SECRETS:
        # Fragments too: a secret cut to fit a column is still a leak.
        for part in {secret, secret[:12], secret[-12:]}:
            assert part not in text, f"{part!r} appears in the output:\n{text[:2000]}"


@contextlib.contextmanager
def hang_up_peer() -> Iterator[int]:
    """A TCP port that accepts, reads what is sent (panoramisk's Login) and hangs up: not an AMI."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    conn.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def write_config(tmp_path: Path, ami_port: int, *, extra: str = "") -> Path:
    secret_file = tmp_path / "ami_secret"
    secret_file.write_text(AMI_FILE_SECRET + "\n")
    secret_file.chmod(0o600)  # a secret file readable by others is refused, like such a config
    token_file = tmp_path / "http_token"
    token_file.write_text(HTTP_FILE_TOKEN + "\n")
    token_file.chmod(0o600)
    path = tmp_path / "callbackd.toml"
    path.write_text(
        f"""
[ami]
port = {ami_port}
connect_timeout = "2s"
secret = "{AMI_SECRET}"
secret_file = "{secret_file}"
[database]
url = "sqlite+aiosqlite:///{tmp_path}/callbackd.db"
[agi]
enabled = false
[http]
enabled = true
port = {free_port()}
token = "{HTTP_TOKEN}"
token_file = "{token_file}"
[mqtt]
enabled = true
username = "callbackd"
password = "{MQTT_PASSWORD}"
topic = "callbackd-test/{uuid.uuid4().hex}/leads"
[log]
level = "debug"
format = "json"
{extra}
"""
    )
    path.chmod(0o600)
    return path


def callbackd(config: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBACKD_")}
    env |= {HTTP_TOKEN_ENV: HTTP_TOKEN, "CALLBACKD_AMI_SECRET": AMI_SECRET}
    return subprocess.run(
        [sys.executable, "-m", "callbackd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_check_config_prints_no_secret(tmp_path):
    ok = callbackd(write_config(tmp_path, free_port()), "check-config")
    assert ok.returncode == 0, ok.stderr
    assert_no_secret(ok.stdout + ok.stderr)
    for bad in ('bogus = "x"', "[limits]\nattempts_per_hour = -1", f'broken "{AMI_SECRET}'):
        wrong = callbackd(write_config(tmp_path, free_port(), extra=bad), "check-config")
        assert wrong.returncode == 3 and wrong.stderr.startswith(str(tmp_path)), wrong.stderr
        assert_no_secret(wrong.stdout + wrong.stderr)
    readable = write_config(tmp_path, free_port())
    readable.chmod(0o644)
    refused = callbackd(readable, "check-config")
    assert refused.returncode == 3 and "readable by others" in refused.stderr
    assert_no_secret(refused.stdout + refused.stderr)


@pytest.mark.parametrize("peer", ["nobody_listens", "hangs_up"])
def test_run_without_a_pbx_keeps_waiting_and_logs_no_secret(tmp_path, peer):
    """No AMI at start: the daemon retries with back-off instead of exiting, and says why, secret-free."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBACKD_")}
    env |= {HTTP_TOKEN_ENV: HTTP_TOKEN, "CALLBACKD_AMI_SECRET": AMI_SECRET}
    with contextlib.ExitStack() as stack:
        port = free_port() if peer == "nobody_listens" else stack.enter_context(hang_up_peer())
        config = write_config(tmp_path, port)
        config.write_text(config.read_text().replace('connect_timeout = "2s"', 'reconnect_max = "2s"'))
        # Files, not pipes: the debug log fills a pipe nobody reads before the end.
        out_file, err_file = stack.enter_context((tmp_path / "out").open("w+")), (tmp_path / "err")
        proc = subprocess.Popen(
            [sys.executable, "-m", "callbackd", "--config", str(config), "run"],
            stdout=out_file,
            stderr=stack.enter_context(err_file.open("w")),
            env=env,
            cwd=ROOT,
        )
        try:
            time.sleep(8)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(30)
        out, err = (tmp_path / "out").read_text(), err_file.read_text()
    assert alive, out + err
    waiting = [line for line in out.splitlines() if '"ami.waiting"' in line]
    assert waiting, out + err
    assert f"127.0.0.1:{port}" in waiting[0]
    if peer == "nobody_listens":
        assert "Connection refused" in waiting[0]
        assert len(waiting) >= 3, out  # 1 s, 2 s, 2 s ... apart: ami.reconnect_max caps the back-off
    assert "Traceback" not in err
    assert_no_secret(out + err)


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The daemon's own logging set-up at debug level, with its standard output kept here."""
    out = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("panoramisk").level)
    monkeypatch.setattr(sys, "stdout", out)
    logs.setup("debug", "json")
    # The test's own HTTP and MQTT clients are not the daemon: keep their debug lines out.
    clients = [logging.getLogger(name) for name in ("httpx", "httpcore", "mqtt")]
    levels = [c.level for c in clients]
    for c in clients:
        c.setLevel(logging.WARNING)
    try:
        yield out
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("panoramisk").setLevel(saved[2])
        for c, level in zip(clients, levels, strict=True):
            c.setLevel(level)


async def test_intake_and_ami_login_at_debug_level_log_no_secret(tmp_path, monkeypatch, json_logs):
    monkeypatch.setenv(HTTP_TOKEN_ENV, HTTP_TOKEN)
    monkeypatch.setenv("CALLBACKD_AMI_SECRET", AMI_SECRET)
    with hang_up_peer() as ami_port:
        cfg = Config.model_validate(
            {
                "ami": {"port": ami_port, "secret": AMI_SECRET},
                "database": {"url": f"sqlite+aiosqlite:///{tmp_path}/cb.db"},
                "service": {
                    "spool_file": f"{tmp_path}/spool.jsonl",
                    "status_file": f"{tmp_path}/status.json",
                },
                "http": {"enabled": True, "port": free_port(), "token": HTTP_TOKEN},
                "mqtt": {
                    "enabled": True,
                    "username": "callbackd",
                    "password": MQTT_PASSWORD,
                    "topic": f"callbackd-test/{uuid.uuid4().hex}/leads",
                    "reply_topic": f"callbackd-test/{uuid.uuid4().hex}/reply",
                    # Its own session: the default id (from the node name) is shared by every daemon
                    # on this host, and a broker drops one of two clients that use one id.
                    "client_id": f"callbackd-test-{uuid.uuid4().hex[:8]}",
                },
            }
        )
        async with built_daemon(cfg) as d:
            d.ami = AmiClient(
                host="127.0.0.1",
                port=ami_port,
                username="callbackd",
                secret=cfg.ami_secret(),
                on_event=d.on_event,
                reconnect_delay=0.2,
            )
            try:
                with pytest.raises(AmiNotConnected):
                    await d.ami.start(1.5)  # logs in, is hung up on, reconnects: all at debug level
            finally:
                await d.ami.close()
            async with AsyncExitStack() as stack:
                await d._start_lead_intake(stack)
                base = f"http://{cfg.http.host}:{cfg.http.port}"
                async with httpx.AsyncClient(base_url=base) as client:
                    for token in (HTTP_TOKEN, HTTP_TOKEN[:-1], HTTP_TOKEN + "x", None):
                        r = await client.post(
                            "/v1/callbacks",
                            json={"phone": "2025550123"},
                            headers={"Authorization": f"Bearer {token}"} if token else {},
                        )
                        assert r.status_code == (202 if token == HTTP_TOKEN else 401)
                async with aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5) as peer:
                    await peer.subscribe(cfg.mqtt.reply_topic, qos=1)
                    async with asyncio.timeout(10):
                        while True:  # the intake may still be connecting
                            await peer.publish(cfg.mqtt.topic, b'{"phone": "2025550123", "id": "s1"}', qos=1)
                            try:
                                async with asyncio.timeout(0.5):
                                    await anext(aiter(peer.messages))
                                break
                            except TimeoutError:
                                continue
    text = json_logs.getvalue()
    for event in ("ami.disconnected", "http.listening", "mqtt.subscribed", "request.stored"):
        assert f'"event": "{event}"' in text, event
    assert_no_secret(text)
