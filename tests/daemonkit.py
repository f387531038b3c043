"""The one way tests build a daemon: ``Daemon.build``, as ``run`` does, minus AMI login and listeners."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from callbackd.app import Daemon
from callbackd.config import Config


def daemon_config(tmp_path: Path, url: str | None = None, **sections: Any) -> Config:
    """A config whose spool and status file live under *tmp_path* (and its SQLite file, unless *url*)."""
    service = {
        "spool_file": str(tmp_path / "spool.jsonl"),
        "status_file": str(tmp_path / "status.json"),
        **sections.pop("service", {}),
    }
    database = {"url": url or f"sqlite+aiosqlite:///{tmp_path}/callbackd.db", **sections.pop("database", {})}
    # Never connected (tests feed AMI events by hand), so any address and secret do.
    ami = {"host": "127.0.0.1", "port": 1, "secret": "unused", **sections.pop("ami", {})}
    return Config.model_validate({"database": database, "service": service, "ami": ami, **sections})


@contextlib.asynccontextmanager
async def built_daemon(
    cfg: Config, config_path: Path | None = None, *, ami: Any = None
) -> AsyncIterator[Daemon]:
    """A daemon with its store, spool, intake writer and dialer; everything closed on exit (queue spooled)."""
    d = Daemon(cfg, config_path)
    async with AsyncExitStack() as stack:
        await d.build(stack, ami=ami)
        yield d


class RecordingAmi:
    """Stands in for the AMI adapter in dialer tests: records each Originate, never answers it."""

    connected = True

    def __init__(self) -> None:
        self.originates: list[dict[str, Any]] = []

    def originate(self, fields: dict[str, Any]) -> asyncio.Future[Any]:
        self.originates.append(dict(fields))
        return asyncio.get_running_loop().create_future()


class NotifySocket:
    """The service manager's side of sd_notify: an AF_UNIX datagram socket, every message timed."""

    def __init__(self) -> None:
        import os
        import socket
        import tempfile
        import threading

        self.dir = tempfile.mkdtemp(prefix="cbd-notify-")  # short: sun_path holds 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import time

        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.time(), line))

    def lines(self, prefix: str = "") -> list[str]:
        return [m for _, m in list(self.messages) if m.startswith(prefix)]

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The first message starting with *prefix*; AssertionError with all messages when none comes."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.lines(prefix)
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {prefix}... on the notify socket within {timeout} s; got {self.lines()}")

    def times(self, line: str) -> list[float]:
        """When each message equal to *line* came (seconds since the epoch)."""
        return [t for t, m in list(self.messages) if m == line]

    async def arrival(self, line: str, timeout: float, after: float = 0.0) -> float:
        """When *line* first came at or after *after*, waiting up to *timeout* without blocking the loop."""
        import asyncio
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [t for t in self.times(line) if t >= after]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {line} on the notify socket within {timeout} s; got {self.lines()}")

    def close(self) -> None:
        import shutil

        self._stop = True
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_callbackd(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    """``python -m callbackd ARGS`` from the repository, without the caller's CALLBACKD_* variables."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    clean = {k: v for k, v in os.environ.items() if not k.startswith("CALLBACKD_")}
    return subprocess.run(
        [sys.executable, "-m", "callbackd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[1],
        env={**clean, **(env or {})},
    )
