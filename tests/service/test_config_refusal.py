"""A config file that holds a secret and is readable by others is refused, by `check-config` and by
`run`, before anything connects; secrets from the environment or a file keep such a file usable."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import pytest
from daemonkit import run_callbackd

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def listener():
    """A TCP port standing in for AMI that records whether anyone connected."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield server.getsockname()[1], accepted
    stop.set()
    t.join(2)
    server.close()


def write(tmp_path: Path, port: int, secret: str | None, mode: int) -> Path:
    path = tmp_path / "callbackd.toml"
    ami = f'[ami]\nport = {port}\nconnect_timeout = "2s"\n' + (f'secret = "{secret}"\n' if secret else "")
    path.write_text(ami + f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path}/cb.db"\n')
    path.chmod(mode)
    return path


def callbackd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_callbackd(*args, env=env)


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_world_readable_config_with_a_secret_is_refused_before_connecting(tmp_path, listener, command):
    port, accepted = listener
    path = write(tmp_path, port, "ami-secret-in-the-file", 0o644)
    res = callbackd("--config", str(path), command)
    assert res.returncode != 0
    assert "holds a secret but is readable by others (mode 644)" in res.stderr
    assert f"run: chmod o-rwx {path}" in res.stderr
    assert "ami-secret-in-the-file" not in res.stdout + res.stderr
    assert accepted == [], "connected to AMI before refusing the config"
    assert not (tmp_path / "cb.db").exists()


def test_callbackd_config_environment_variable_names_the_file(tmp_path, listener):
    port, _ = listener
    path = write(tmp_path, port, "ami-secret-in-the-file", 0o644)
    res = callbackd("check-config", env={"CALLBACKD_CONFIG": str(path)})
    assert res.returncode != 0 and f"chmod o-rwx {path}" in res.stderr
    path.chmod(0o640)
    res = callbackd("check-config", env={"CALLBACKD_CONFIG": str(path)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{path}: OK"


def test_a_world_readable_file_without_secrets_is_fine_with_the_secret_from_the_environment(
    tmp_path, listener
):
    port, _ = listener
    path = write(tmp_path, port, None, 0o644)
    res = callbackd("--config", str(path), "check-config")
    assert res.returncode == 3 and "no AMI secret" in res.stderr  # a config error
    res = callbackd("--config", str(path), "check-config", env={"CALLBACKD_AMI_SECRET": "from-env"})
    assert res.returncode == 0, res.stderr
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ami_secret").write_text("from-a-credential\n")
    res = callbackd("--config", str(path), "check-config", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert res.returncode == 0, res.stderr


def test_check_config_names_each_bad_key_and_exits_non_zero(tmp_path):
    path = tmp_path / "callbackd.toml"
    path.write_text('[dialer]\nmax_concurrent = 0\nbogus = 1\n[service]\nstatus_interval = "0.1s"\n')
    res = callbackd("--config", str(path), "check-config")
    assert res.returncode == 3  # a config error (2 is a bad command line)
    lines = res.stderr.splitlines()
    assert lines[0] == f"{path}: 3 problem(s)"
    assert "  dialer.max_concurrent: Input should be greater than or equal to 1" in lines
    assert "  dialer.bogus: unknown key" in lines
    assert any(line.startswith("  service.status_interval: ") for line in lines)
    res = callbackd("--config", str(tmp_path / "missing.toml"), "check-config")
    assert res.returncode == 3 and "cannot read" in res.stderr
