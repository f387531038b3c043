"""Runs ``callbackd run`` as a real process against the lab and reads its JSON log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAB_CONFIG = ROOT / "asterisk" / "callbackd-lab.toml"
UNIT = ROOT / "systemd" / "callbackd.service"


def unit_environment(unit: str | None = None) -> dict[str, str]:
    """What the unit's ``Environment=`` lines give the daemon, but its config path (each caller
    passes its own): the benchmarks and the package test run the daemon as systemd does."""
    env: dict[str, str] = {}
    for line in (UNIT.read_text() if unit is None else unit).splitlines():
        if line.startswith("Environment="):
            for item in line.removeprefix("Environment=").split():
                key, _, value = item.strip('"').partition("=")
                env[key] = value
    env.pop("CALLBACKD_CONFIG", None)
    return env


@dataclass(frozen=True)
class Profile:
    """A lab profile (asterisk/lab up --profile NAME) and what the tests need to know of it."""

    name: str
    members: dict[str, str]  # lab operator -> queue member interface (the operator's identity)
    manual_context: str  # where an operator's phone dials out
    national_manual: bool  # the outbound route wants national numbers (2025550142), not +E.164
    config: dict[str, str]  # replacements in callbackd-lab.toml

    def member(self, op: str) -> str:
        return self.members[op]

    def manual_number(self, e164: str) -> str:
        return e164.removeprefix("+1") if self.national_manual else e164


PROFILES = {
    "default": Profile(
        "default",
        {"op1": "PJSIP/op1", "op2": "PJSIP/op2"},
        "from-operators",
        False,
        {},
    ),
    # FreePBX shape: Local members with hint state, the client leg and manual calls through the
    # outbound route (its caller ID, its recording); the trunk Dial runs in macro-dialout-trunk.
    "freepbx": Profile(
        "freepbx",
        {"op1": "Local/201@from-queue/n", "op2": "Local/202@from-queue/n"},
        "from-internal",
        True,
        {
            'outbound_contexts = ["from-operators"]': 'outbound_contexts = ["macro-dialout-trunk"]',
            'dial_pattern = "PJSIP/{number}@pstn"': 'client_target = "Local/{national}@from-internal"',
            "outbound_callerid = '\"Lab Company\" <+12025550100>'": 'outbound_callerid = ""',
        },
    ),
}
# The profile the lab runs now; set by the integration conftest when it switches.
ACTIVE: dict[str, Profile] = {"profile": PROFILES["default"]}


def active_profile() -> Profile:
    return ACTIVE["profile"]


def private_secret(directory: Path) -> Path:
    """A 0600 copy of asterisk/lab-ami-secret: the checkout's copy is readable by everyone (git keeps
    no finer mode), and callbackd refuses a secret file readable by others."""
    path = directory / "lab-ami-secret"
    path.write_text((ROOT / "asterisk" / "lab-ami-secret").read_text())
    path.chmod(0o600)
    return path


def lab_config(
    tmp_path: Path, db_url: str | None = None, extra: str = "", replace: dict[str, str] | None = None
) -> Path:
    """The lab's daemon config with its own database and JSON logs."""
    text = LAB_CONFIG.read_text()
    text = text.replace(
        'secret_file = "asterisk/lab-ami-secret"', f'secret_file = "{private_secret(tmp_path)}"'
    )
    text = text.replace(
        'url = "sqlite+aiosqlite:////tmp/callbackd-lab/callbackd.db"',
        f'url = "{db_url or f"sqlite+aiosqlite:///{tmp_path}/callbackd.db"}"',
    )
    text = text.replace('format = "console"', 'format = "json"')
    text = text.replace("/tmp/callbackd-lab/status.json", f"{tmp_path}/status.json")
    text = text.replace("/tmp/callbackd-lab/spool.jsonl", f"{tmp_path}/spool.jsonl")
    for old, new in {**active_profile().config, **(replace or {})}.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "callbackd.toml"
    path.write_text(text + "\n" + extra)
    path.chmod(0o600)
    return path


class DaemonProcess:
    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        log_file: Path | None = None,
        python: str | None = None,  # another interpreter (bench: a production install's)
    ) -> None:
        self.config = config
        self.log_file = log_file.open("a") if log_file else None
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [python or sys.executable, "-m", "callbackd", "--config", str(config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **unit_environment(), **(env or {})},  # as systemd runs it
            cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self.log_file:
                self.log_file.write(line)
                self.log_file.flush()
            with self._cond:
                self.raw.append(line)
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    self.lines.append({"event": "raw", "text": line.rstrip()})
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def events(self, name: str, **match: object) -> list[dict]:
        with self._cond:
            return [
                e
                for e in self.lines
                if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
            ]

    def wait_for(self, name: str, timeout: float = 30, **match: object) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.lines:
                    if e.get("event") == name and all(e.get(k) == v for k, v in match.items()):
                        return e
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._cond.wait(min(left, 0.5))
        pytest.fail(
            f"daemon logged no {name} {match or ''} within {timeout:.0f} s; log:\n{''.join(self.raw[-60:])}"
        )

    def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(5)


def cli(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``callbackd --config CONFIG ARGS...`` as an admin would type it."""
    return subprocess.run(
        [sys.executable, "-m", "callbackd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=check,
    )


def requests_json(config: Path, *args: str) -> object:
    return json.loads(cli(config, "requests", *args).stdout)
