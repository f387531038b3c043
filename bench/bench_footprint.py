#!/usr/bin/env python3
"""Footprint: memory and CPU of an idle ``callbackd run`` attached to the lab.

The daemon runs with the lab's configuration (asterisk/callbackd-lab.toml: AMI with a ping
every 5 s, FastAGI listening, the dialer polling every second, the status file checked every
second) and no calls. After it has logged in and resynced and 5 s have passed, its VmRSS
(/proc/PID/status) is read every second, and its CPU use (utime + stime of all threads, from
/proc/PID/stat) over each 5 s window. Holds the lab lock throughout.

    python bench/bench_footprint.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from labdaemon import DaemonProcess

from bench.benchlib import (
    bench_config,
    figure,
    lab_session,
    proc_cpu_seconds,
    proc_rss_mb,
    result,
    say,
    write_result,
)

TARGET_RSS_MB = 80.0
TARGET_CPU_PCT = 1.0  # "near 0 %"
WINDOW = 5.0
SETTLE = 5.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="30 s instead of 60 s")
    p.add_argument("--seconds", type=float, help="how long to watch the idle daemon")
    p.add_argument("--json", metavar="FILE", help="write the result here")
    args = p.parse_args()
    seconds = args.seconds or (30.0 if args.quick else 60.0)
    with lab_session() as status, tempfile.TemporaryDirectory(prefix="callbackd-footprint-") as tmp:
        daemon = DaemonProcess(bench_config(Path(tmp)))
        try:
            daemon.wait_for("ami.resynced", 30)
            time.sleep(SETTLE)
            pid = daemon.proc.pid
            rss: list[float] = []
            cpu: list[float] = []
            start_wall, start_cpu = time.monotonic(), proc_cpu_seconds(pid)
            win_wall, win_cpu = start_wall, start_cpu
            say(f"  watching the idle daemon (pid {pid}) for {seconds:.0f} s")
            while time.monotonic() - start_wall < seconds:
                time.sleep(1.0)
                rss.append(proc_rss_mb(pid))
                now = time.monotonic()
                if now - win_wall >= WINDOW - 1e-3:
                    c = proc_cpu_seconds(pid)
                    cpu.append((c - win_cpu) / (now - win_wall) * 100)
                    win_wall, win_cpu = now, c
            total_cpu = proc_cpu_seconds(pid) - start_cpu
            total_wall = time.monotonic() - start_wall
            problems = [e for e in daemon.lines if e.get("level") in ("warning", "error")]
        finally:
            code = daemon.stop()
    figs = [
        figure(
            "idle_rss_mb",
            "idle RSS of callbackd run attached to the lab",
            "MB",
            rss,
            target=("<", TARGET_RSS_MB),
            on="max",
            over="1 s samples",
            digits=1,
        ),
        figure(
            "idle_cpu_pct",
            f"idle CPU of callbackd run ({WINDOW:g} s windows)",
            "%",
            cpu,
            target=("<", TARGET_CPU_PCT),
            on="median",
            over=f"{WINDOW:g} s windows",
            digits=2,
        ),
    ]
    res = result(
        "footprint",
        "Footprint",
        figs,
        seconds=round(total_wall, 1),
        cpu_seconds=round(total_cpu, 3),
        cpu_pct_overall=round(total_cpu / total_wall * 100, 3),
        exit_code=code,
        warnings=[f"{e.get('event')}: {e}" for e in problems][:10],
        asterisk=status.get("asterisk", {}).get("version"),
    )
    res["notes"].append(
        "The lab's configuration: AMI ping every 5 s, dialer poll every 1 s (the shipped default is 2 s),"
        " FastAGI listening, status file checked every second. 'Near 0 %' is read as under 1 %."
    )
    write_result(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
