"""Integration fixtures: the Asterisk lab (asterisk/lab, see asterisk/README.md)."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import labdaemon
import pytest
from labdaemon import PROFILES, DaemonProcess, Profile, lab_config

from callbackd.adapters.ami import AmiClient

LAB_TOOL = Path(__file__).resolve().parents[2] / "asterisk" / "lab"


class Lab:
    """Drives asterisk/lab. Any failure fails the test with the tool's own message."""

    profile: Profile = PROFILES["default"]

    def run(self, *args: str, timeout: float = 600) -> str:
        if args and args[0] == "up" and "--profile" not in args:
            args = (*args, "--profile", self.profile.name)  # a restart keeps the profile
        cmd = [sys.executable, str(LAB_TOOL), *args]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"asterisk/lab {' '.join(args)} did not finish within {timeout:.0f} s: {exc}")
        if res.returncode != 0:
            pytest.fail(
                f"asterisk/lab {' '.join(args)} failed (exit {res.returncode}):\n{res.stdout}{res.stderr}"
            )
        return res.stdout

    def status(self) -> dict:
        res = subprocess.run(
            [sys.executable, str(LAB_TOOL), "status", "--json"], capture_output=True, text=True
        )
        return json.loads(res.stdout) if res.stdout.strip() else {"up": False}

    def call(self, number: str, hangup_after: float | None = None, to: str = "100", *extra: str) -> str:
        """An inbound call from number; blocks until the call ends."""
        args = ["call", "--from", number, "--to", to]
        if hangup_after is not None:
            args += ["--hangup-after", str(hangup_after)]
        return self.run(*args, *extra, timeout=300)

    def operator(self, name: str, behaviour: str) -> str:
        """name: op1, op2, op1,op2 or all; behaviour: answer, answer:SECONDS, busy, noanswer, reject, off."""
        return self.run("operator", name, behaviour)

    def use(self, profile: Profile) -> None:
        """Switch the running lab to a profile (a reload, a second or two)."""
        if profile != self.profile:
            self.run("up", "--profile", profile.name)
            self.profile = profile
            labdaemon.ACTIVE["profile"] = profile

    def member(self, op: str) -> str:
        return self.profile.member(op)

    def pause(self, op: str, queue: str = "support", on: bool = True) -> None:
        self.run("cli", f"queue {'pause' if on else 'unpause'} member {self.member(op)} queue {queue}")

    def pstn(self, *args: str) -> str:
        """e.g. pstn("+15551230002", "busy,answer"), pstn("--reset"), pstn("--talk", "3")."""
        return self.run("pstn", *args)


LOCK_PATH = Path("/run/callbackd-lab.tests.lock")


@pytest.fixture(scope="session")
def lab():
    """The lab, started once per session; stopped at the end unless it was already running.

    There is one PBX per machine: a second test run waits on a lock instead of sharing it.
    """
    lock = LOCK_PATH.open("a")
    deadline = time.monotonic() + 3600
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"another test run held {LOCK_PATH} for an hour")
            time.sleep(1)
    helper = Lab()
    was_up = helper.status().get("up", False)
    print(helper.run("up", timeout=900))
    try:
        yield helper
        # Other developers' lab tests expect the default profile: always leave it so.
        helper.use(PROFILES["default"])
        if not was_up:
            helper.run("down")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@pytest.fixture(scope="session", params=list(PROFILES))
def profile(request) -> Profile:
    """Tests that take this run once per lab profile (default, then freepbx)."""
    return PROFILES[request.param]


@pytest.fixture(autouse=True)
def _lab_profile(request):
    """Every lab test runs on its profile: ``profile``'s when it asks for one, else default."""
    if "lab" in request.fixturenames:
        lab = request.getfixturevalue("lab")
        wanted = (
            request.getfixturevalue("profile") if "profile" in request.fixturenames else PROFILES["default"]
        )
        lab.use(wanted)
    yield


class Watch:
    """An independent AMI connection (the lab's admin user) recording every event."""

    def __init__(self) -> None:
        self.events: list[dict[str, str]] = []

    def __call__(self, ev: dict[str, str]) -> None:
        self.events.append(ev)

    def of(self, name: str, **match: str) -> list[dict[str, str]]:
        return [
            e for e in self.events if e.get("Event") == name and all(e.get(k) == v for k, v in match.items())
        ]


@pytest.fixture
async def watch(lab):
    w = Watch()
    client = AmiClient(host="127.0.0.1", port=5038, username="lab", secret="lab-admin-secret", on_event=w)
    await client.start()
    yield w
    await client.close()


@pytest.fixture
def daemon_factory(tmp_path):
    started: list[DaemonProcess] = []

    def start(config=None) -> DaemonProcess:
        d = DaemonProcess(config or lab_config(tmp_path))
        started.append(d)
        d.wait_for("daemon.ready", timeout=30)
        d.wait_for("ami.resynced", timeout=30)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def fresh(lab):
    """The lab's default state: every phone answers, no PSTN scripts, nobody paused."""
    lab.operator("op1,op2", "answer")
    lab.pstn("--reset")
    lab.pstn("--ring", "0.5")
    lab.pstn("--talk", "3")
    for op in ("op1", "op2"):
        for queue in ("support", "sales"):
            lab.pause(op, queue, on=False)
    yield
    lab.operator("op1,op2", "answer")
    lab.pstn("--ring", "0.5")
    for op in ("op1", "op2"):
        for queue in ("support", "sales"):
            lab.pause(op, queue, on=False)


@pytest.fixture
def paused(lab):
    """Operators paused in the support queue: every inbound call there is missed, nobody is dialled."""
    lab.operator("op1,op2", "answer")
    lab.pstn("--reset")
    for op in ("op1", "op2"):
        lab.pause(op)
    yield
    for op in ("op1", "op2"):
        lab.pause(op, on=False)
