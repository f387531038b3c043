"""A minimal AMI client, for readiness checks, status, profile switches and traces."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from pathlib import Path

from labkit.layout import AMI_ADMIN, AMI_PORT, ASTERISK_BOOT_TIMEOUT, LOCALHOST, STATE_DIR, LabError
from labkit.procs import pid_alive


class Ami:
    def __init__(self, host: str = LOCALHOST, port: int = AMI_PORT, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.banner = self._readline()
        if not self.banner.startswith("Asterisk Call Manager"):
            raise LabError(f"unexpected AMI banner on port {port}: {self.banner!r}")
        self.pending: list[dict] = []
        self._id = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("AMI connection closed")
        self.buf += chunk

    def _readline(self) -> str:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def read_raw(self) -> str:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        block, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return block.decode(errors="replace")

    @staticmethod
    def parse(block: str) -> dict:
        msg: dict = {}
        for line in block.split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                k, v = k.strip(), v.strip()
                if k in msg:
                    if not isinstance(msg[k], list):
                        msg[k] = [msg[k]]
                    msg[k].append(v)
                else:
                    msg[k] = v
            elif line:
                msg.setdefault("_text", []).append(line)
        return msg

    def read(self) -> dict:
        return self.parse(self.read_raw())

    def send(self, action: str, **fields) -> str:
        self._id += 1
        aid = f"lab-{os.getpid()}-{self._id}"
        lines = [f"Action: {action}", f"ActionID: {aid}"]
        for k, v in fields.items():
            for item in v if isinstance(v, list) else [v]:
                lines.append(f"{k}: {item}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return aid

    def action(self, action: str, **fields) -> dict:
        aid = self.send(action, **fields)
        while True:
            msg = self.read()
            if msg.get("ActionID") == aid and "Response" in msg:
                return msg
            self.pending.append(msg)

    def login(self, user: str, secret: str, events: str = "off") -> dict:
        resp = self.action("Login", Username=user, Secret=secret, Events=events)
        if resp.get("Response") != "Success":
            raise LabError(f"AMI login as {user!r} failed: {resp.get('Message', resp)}")
        return resp


def ami_check(user_secret=AMI_ADMIN, timeout: float = 3.0) -> tuple[bool, str]:
    try:
        ami = Ami(timeout=timeout)
    except OSError as e:
        return False, f"no AMI on {LOCALHOST}:{AMI_PORT} ({e.strerror or e})"
    try:
        ami.login(*user_secret)
        ami.action("Ping")
        return True, ami.banner
    except (LabError, OSError, ConnectionError) as e:
        return False, str(e)
    finally:
        ami.close()


REQUIRED_MODULES = [
    "chan_pjsip",
    "res_pjsip",
    "res_pjsip_session",
    "res_pjsip_sdp_rtp",
    "res_rtp_asterisk",
    "res_pjsip_endpoint_identifier_ip",
    "pbx_config",
    "app_dial",
    "app_queue",
    "app_playback",
    "app_userevent",
    "app_stack",
    "func_channel",
    "codec_ulaw",
    "codec_gsm",
    "format_gsm",
    "bridge_simple",
    "res_agi",
]


def check_modules() -> None:
    """Fail clearly when a module the lab needs is not running (ModuleCheck also says Success
    for a module that declined to load, so read "module show" instead)."""
    ami = Ami(timeout=5)
    try:
        ami.login(*AMI_ADMIN)
        resp = ami.action("Command", Command="module show")
    finally:
        ami.close()
    output = resp.get("Output", [])
    lines = output if isinstance(output, list) else [output]
    running = set()
    for line in lines:
        m = re.match(r"(\S+?)(?:\.so)?\s.*\s\d+\s+(Not Running|Running)\s", line + " ")
        if m and m.group(2) == "Running":
            running.add(m.group(1))
    missing = [m for m in REQUIRED_MODULES if m not in running]
    if missing:
        raise LabError(
            f"Asterisk started but these modules are not running: {', '.join(missing)}"
            + asterisk_failure_hint(),
            3,
        )


def wait_fully_booted(pid: int, deadline: float) -> None:
    """Connect as the lab user, log in, and wait for FullyBooted."""
    last_err = ""
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise LabError("Asterisk exited during start-up" + asterisk_failure_hint(), 3)
        try:
            ami = Ami(timeout=2)
        except OSError as e:
            last_err = str(e)
            time.sleep(0.2)
            continue
        try:
            ami.sock.settimeout(max(0.5, deadline - time.monotonic()))
            ami.login(*AMI_ADMIN, events="system")
            for msg in ami.pending:
                if msg.get("Event") == "FullyBooted":
                    return
            while time.monotonic() < deadline:
                msg = ami.read()
                if msg.get("Event") == "FullyBooted":
                    return
        except (OSError, ConnectionError) as e:
            last_err = str(e)
            time.sleep(0.2)
        finally:
            ami.close()
    raise LabError(
        f"Asterisk did not become ready (AMI login + FullyBooted) within {ASTERISK_BOOT_TIMEOUT:.0f} s"
        f" ({last_err})" + asterisk_failure_hint(),
        3,
    )


def asterisk_failure_hint() -> str:
    out = STATE_DIR / "asterisk.out"
    hint = ""
    try:
        root = Path((STATE_DIR / "chroot").read_text().strip())
        full = root / "var/log/asterisk/full"
        lines = [
            ln for ln in full.read_text(errors="replace").splitlines() if "ERROR" in ln or "WARNING" in ln
        ]
        if lines:
            hint += "\nlast errors in the Asterisk log:\n  " + "\n  ".join(lines[-10:])
    except OSError:
        pass
    with contextlib.suppress(OSError):
        text = out.read_text(errors="replace").strip()
        if text:
            hint += f"\nAsterisk output ({out}):\n  " + "\n  ".join(text.splitlines()[-10:])
    return hint
