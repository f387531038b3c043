#!/usr/bin/env python3
"""Idle RSS of ``callbackd run`` without the lab: the lab's configuration against a stand-in AMI.

The stand-in (a small asyncio server in this process) answers what the daemon sends from its
login to its idle state: the banner, Login, CoreSettings (a supported Asterisk), QueueStatus and
CoreShowChannels (empty lists, properly completed), Ping, and a plain Success to anything else.
The daemon runs with asterisk/callbackd-lab.toml (its own database, status and spool files, a
free FastAGI port). Once ``daemon.ready`` and ``ami.resynced`` are logged and SETTLE seconds have
passed (past the first housekeeping turn), VmRSS, RssAnon and RssFile (/proc/PID/status) are
read every second, as bench_footprint.py reads them on the lab; the maximum of each is printed.
``--current`` migrates the database first (``callbackd db upgrade``), so the daemon starts on a
schema already at the head, as on every start but the first one.

    python bench/footprint_standin.py [--python PY] [--current] [--seconds N] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from labdaemon import DaemonProcess  # noqa: E402

from bench.benchlib import bench_config  # noqa: E402

SETTLE = 65.0  # past the second malloc_trim (15 s after ready) and the first housekeeping (60 s)
SEP = b"\r\n\r\n"


def _block(fields: dict[str, str]) -> bytes:
    return ("".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n").encode()


def _parse(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.decode().split("\r\n"):
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


async def _client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"Asterisk Call Manager/9.0.0\r\n")
    try:
        while True:
            action = _parse(await reader.readuntil(SEP))
            name = action.get("Action", "").lower()
            aid = action.get("ActionID", "")
            ok = {"Response": "Success", "ActionID": aid}
            if name == "login":
                writer.write(_block({**ok, "Message": "Authentication accepted"}))
            elif name == "coresettings":
                writer.write(_block({**ok, "AMIversion": "9.0.0", "AsteriskVersion": "20.9.0"}))
            elif name == "ping":
                writer.write(_block({**ok, "Ping": "Pong", "Timestamp": f"{time.time():.6f}"}))
            elif name in ("queuestatus", "coreshowchannels"):
                writer.write(_block({**ok, "EventList": "start", "Message": "list will follow"}))
                done = "QueueStatusComplete" if name == "queuestatus" else "CoreShowChannelsComplete"
                end = {"Event": done, "ActionID": aid, "EventList": "Complete", "ListItems": "0"}
                writer.write(_block(end))
            else:
                writer.write(_block(ok))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def start_standin() -> int:
    """Serve in a thread of this process; the port it listens on."""
    ready: list[int] = []
    got = threading.Event()

    async def serve() -> None:
        server = await asyncio.start_server(_client, "127.0.0.1", 0)
        ready.append(server.sockets[0].getsockname()[1])
        got.set()
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    got.wait(10)
    return ready[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def one_run(python: str, current: bool, seconds: float, settle: float) -> dict[str, object]:
    port = start_standin()
    with tempfile.TemporaryDirectory(prefix="callbackd-rss-") as tmp_s:
        tmp = Path(tmp_s)
        config = bench_config(
            tmp,
            replace={
                "port = 5038": f"port = {port}",
                "port = 4574": f"port = {free_port()}",
                "/tmp/callbackd-lab/spool.jsonl": f"{tmp}/spool.jsonl",
            },
        )
        if current:
            subprocess.run(
                [python, "-m", "callbackd", "--config", str(config), "db", "upgrade"],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
        daemon = DaemonProcess(config, python=python)
        try:
            daemon.wait_for("daemon.ready", 60)
            daemon.wait_for("ami.resynced", 30)
            migrated = daemon.wait_for("db.migrated", 1).get("upgraded")
            time.sleep(settle)
            samples = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                samples.append(status_mb(daemon.proc.pid))
                time.sleep(1.0)
            problems = [e for e in daemon.lines if e.get("level") in ("warning", "error")]
        finally:
            daemon.stop()
    res: dict[str, object] = {
        key: round(max(s[key] for s in samples), 1) for key in ("VmRSS", "RssAnon", "RssFile")
    }
    res["migrated"] = migrated
    res["warnings"] = [e.get("event") for e in problems][:5]
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", default=sys.executable, help="the daemon's interpreter")
    p.add_argument("--current", action="store_true", help="start on a database already at the head")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--settle", type=float, default=SETTLE, help="seconds from ready to the first sample")
    args = p.parse_args()
    runs = [one_run(args.python, args.current, args.seconds, args.settle) for _ in range(args.runs)]
    for r in runs:
        print(json.dumps(r), flush=True)
    if len(runs) > 1:
        med = {k: round(statistics.median(r[k] for r in runs), 1) for k in ("VmRSS", "RssAnon", "RssFile")}
        print(json.dumps({"median": med}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
