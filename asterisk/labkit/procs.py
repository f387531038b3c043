"""Small helpers (locks, pids, ports) and the state of the lab's running processes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from labkit.layout import LOCALHOST, OPERATORS, PSTN_PORT, SIP_PORT, STATE_DIR, LabError, warn


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def proc_root(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/root")
    except OSError:
        return None


def proc_is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def reap_if_child(pid: int) -> None:
    """Reap pid if this process started it (a failed "up" stops its own children)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    reap_if_child(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not proc_is_zombie(pid)


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def stop_pid(pid: int, what: str, grace: float = 5.0) -> bool:
    """SIGTERM, wait, SIGKILL. Returns True when the process is gone."""
    if not pid_alive(pid):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    warn(f"{what} (pid {pid}) ignored SIGTERM, sending SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def wait_reaped(pids: list[int], timeout: float = 6.0) -> list[int]:
    """Give the parent (usually init) a moment to reap exited processes; return the zombies left."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if Path(f"/proc/{p}").exists()]
        if left:
            time.sleep(0.05)
    return left


def port_owner(port: int, proto: str) -> str:
    flag = "-lntp" if proto == "tcp" else "-lnup"
    try:
        out = subprocess.run(
            ["ss", "-H", flag, f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    m = re.search(r'users:\(\("([^"]+)",pid=(\d+)', out)
    return f"{m.group(1)} (pid {m.group(2)})" if m else (out.splitlines()[0] if out else "")


def port_free(port: int, proto: str) -> bool:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if proto == "tcp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def udp_port_bound(port: int) -> bool:
    return not port_free(port, "udp")


def free_udp_port() -> int:
    """A free UDP port on 127.0.0.1 outside the lab's fixed ports."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LOCALHOST, 0))
            port = s.getsockname()[1]
        if port not in (SIP_PORT, PSTN_PORT, *OPERATORS.values()):
            return port
    raise LabError("could not find a free UDP port")


def fmt_secs(s: float) -> str:
    return f"{s:.1f} s"


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (debootstrap, chroot); run it with sudo or as root", 2)


def state_path(*parts: str) -> Path:
    return STATE_DIR.joinpath(*parts)


def asterisk_pid() -> int | None:
    info = read_json(state_path("asterisk.json"), {})
    pid = info.get("pid")
    if pid and pid_alive(pid) and is_our_asterisk(pid, info.get("root")):
        return pid
    return None


def is_our_asterisk(pid: int, root: str | None) -> bool:
    if not root:
        return False
    cmd = proc_cmdline(pid)
    return bool(cmd) and cmd[0].endswith("asterisk") and proc_root(pid) == root


# The lab's processes are recognised whichever checkout of the repository started them (several
# worktrees share one lab): a sipp running one of asterisk/sipp/*.xml, an asterisk/lab _pstn-serve.
_SCENARIO = re.compile(r".*/asterisk/sipp/[\w.-]+\.xml")


def is_our_sipp(pid: int) -> bool:
    cmd = proc_cmdline(pid)
    return bool(cmd) and Path(cmd[0]).name == "sipp" and any(_SCENARIO.fullmatch(a) for a in cmd)


def is_our_pstn(pid: int) -> bool:
    cmd = proc_cmdline(pid)
    return "_pstn-serve" in cmd and any(a.endswith("/asterisk/lab") for a in cmd)


def operator_info(name: str) -> dict:
    return read_json(state_path("phones", f"{name}.json"), {})


def operator_running(name: str) -> tuple[bool, dict]:
    info = operator_info(name)
    pid = info.get("pid")
    return bool(pid and pid_alive(pid) and is_our_sipp(pid)), info


def pstn_pid() -> int | None:
    info = read_json(state_path("pstn-server.json"), {})
    pid = info.get("pid")
    if pid and pid_alive(pid) and is_our_pstn(pid):
        return pid
    return None


def running_calls() -> list[dict]:
    calls = []
    for f in sorted(state_path("calls").glob("*.json")):
        info = read_json(f, {})
        pid = info.get("pid")
        if pid and pid_alive(pid) and is_our_sipp(pid):
            calls.append(info)
    return calls
