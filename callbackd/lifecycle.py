"""Signals, sd_notify and the systemd watchdog.

Signal handlers only set flags (as uvicorn's and arq's do); the composition root
notices them and runs its phases. The first SIGTERM or SIGINT asks for a drain, a
second one forces the drain's phases to end at once, still through the loop, so
the intake queue is spooled and the exit stack unwinds. SIGHUP asks for a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger("callbackd")


def notify(message: str) -> None:
    """sd_notify(3) without a dependency: one datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        sock.sendall(message.encode())


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for us."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    pid = os.environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


async def watchdog() -> None:
    """Ping systemd's watchdog at half its interval, from the event loop itself."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


class Lifecycle:
    """The flags signals set: ``should_exit`` (drain), ``force_exit`` (end the drain now)."""

    def __init__(self) -> None:
        self.should_exit = asyncio.Event()
        self.force_exit = asyncio.Event()
        self.signals = 0
        self._installed: list[int] = []

    def install_hup(self, on_hup: Callable[[], None]) -> None:
        # From the start: SIGHUP's default action would kill a daemon still connecting.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
        self._installed.append(signal.SIGHUP)

    def install_stop(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
            self._installed.append(sig)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()

    def request_stop(self) -> None:
        self.signals += 1
        if self.signals == 1:
            self.should_exit.set()
        else:
            self.force_exit.set()


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's malloc_trim(0)).

    Start-up (imports, the first queries, the resync) leaves freed arenas mapped that an idle
    daemon never reuses. False where there is no glibc (musl, macOS): nothing to do there."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
