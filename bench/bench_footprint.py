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
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from labdaemon import DaemonProcess, unit_environment

from bench.benchlib import (
    ROOT,
    bench_config,
    figure,
    lab_session,
    proc_cpu_seconds,
    proc_rss_mb,
    result,
    say,
    write_result,
)

# The daemon's imports, roughly in the order `callbackd run` loads them (callbackd.app pulls in
# the database, AMI and metrics modules; Daemon.run the FastAGI). FastAPI and APScheduler are
# imported only when the HTTP listener or scheduled reports need them, the report renderers
# (openpyxl) only by a report, and Alembic never: a migration runs in a child interpreter.
# Without the lab: bench/footprint_standin.py runs the same daemon against a stand-in AMI.
IMPORT_STEPS = [
    "structlog",
    "pydantic",
    "sqlalchemy.ext.asyncio",
    "aiosqlite",
    "panoramisk",
    "phonenumbers",
    "prometheus_client",
    "callbackd.app",
    "callbackd.adapters.agi",
]
# Run in a fresh interpreter: VmRSS after each import, then after a migration as at start-up.
IMPORT_SCRIPT = r"""
import asyncio, importlib, json, sys, tempfile
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
steps = [("python", rss())]
for name in sys.argv[1:]:
    importlib.import_module(name)
    steps.append((name, rss()))
from callbackd.adapters import db
async def migrate():
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite+aiosqlite:///{tmp}/m.db")
        await db.ensure_current(engine, apart=True)  # as `callbackd run`: Alembic in a child
        await engine.dispose()
asyncio.run(migrate())
steps.append(("database migration at start", rss()))
optional = [m for m in ("rich", "pygments", "mako", "alembic", "openpyxl", "fastapi") if m in sys.modules]
print(json.dumps({"steps": steps, "modules": len(sys.modules), "optional": optional}))
"""
TARGET_RSS_MB = 64.0
# A production install: callbackd's dependencies without the test extras (which bring rich and
# pygments, which structlog imports when they are there). The daemon runs from this source tree.
PROD_VENV = Path("/var/cache/callbackd-bench/prod-venv")


def production_python() -> str:
    py = PROD_VENV / "bin" / "python"
    if not py.exists():
        say(f"  making a production install in {PROD_VENV} (dependencies only, no test extras)")
        subprocess.run([sys.executable, "-m", "venv", str(PROD_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)], check=True)
    return str(py)


TARGET_CPU_PCT = 1.0  # "near 0 %"
WINDOW = 5.0
SETTLE = 5.0


def memory_map(pid: int) -> dict[str, object]:
    """Anonymous and file-backed resident memory, and the largest file mappings."""
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            status[key] = round(int(value.split()[0]) / 1024, 1)
    files: dict[str, int] = {}
    path = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            path = head[5] if len(head) >= 6 else None
        elif head and head[0] == "Rss:" and path and path.startswith("/"):
            files[path] = files.get(path, 0) + int(head[1])
    top = sorted(files.items(), key=lambda kv: kv[1], reverse=True)[:8]
    return {"mb": status, "top_files_mb": [(Path(p).name, round(kb / 1024, 1)) for p, kb in top]}


def import_profile(python: str = sys.executable) -> dict[str, object]:
    """What each import adds to a fresh interpreter's RSS, then the start-up migration."""
    res = subprocess.run(
        [python, "-c", IMPORT_SCRIPT, *IMPORT_STEPS],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, **unit_environment()},  # as the daemon runs (PYTHONOPTIMIZE)
    )
    data = json.loads(res.stdout)
    steps = data["steps"]
    added = [(name, round(mb - steps[i][1], 1)) for i, (name, mb) in enumerate(steps[1:])]
    return {
        "python_mb": round(steps[0][1], 1),
        "added_mb": added,
        "total_mb": round(steps[-1][1], 1),
        "modules": data["modules"],
        "optional_loaded": data["optional"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="30 s instead of 60 s")
    p.add_argument("--seconds", type=float, help="how long to watch the idle daemon")
    p.add_argument("--json", metavar="FILE", help="write the result here")
    p.add_argument(
        "--test-venv", action="store_true", help="run the daemon in this interpreter, not a production one"
    )
    args = p.parse_args()
    seconds = args.seconds or (30.0 if args.quick else 60.0)
    with lab_session() as status, tempfile.TemporaryDirectory(prefix="callbackd-footprint-") as tmp:
        python = sys.executable if args.test_venv else production_python()
        daemon = DaemonProcess(bench_config(Path(tmp)), python=python)  # with the unit's environment
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
            mem = memory_map(pid)
            problems = [e for e in daemon.lines if e.get("level") in ("warning", "error")]
        finally:
            code = daemon.stop()
    figs = [
        figure(
            "idle_rss_mb",
            "idle RSS of callbackd run attached to the lab (production install)",
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
        memory=mem,
        python=python,
    )
    if figs[0].get("met") is False:
        say("  the RSS target is missed: measuring what each import adds")
        prof = import_profile(python)
        res["profile"] = {"tool": "VmRSS after each import in a fresh interpreter; /proc/PID/smaps", **prof}
        biggest = sorted(prof["added_mb"], key=lambda kv: kv[1], reverse=True)[:6]
        m = mem["mb"]
        res["notes"].append(
            f"idle RSS {max(rss):.1f} MB (target under {TARGET_RSS_MB:g} MB): {m.get('RssAnon')} MB anonymous"
            f" (the Python heap: modules, objects) and {m.get('RssFile')} MB file-backed (the interpreter"
            f" and extension libraries' code). It is bound by what the daemon imports, not by what it holds:"
            f" a fresh interpreter takes {prof['python_mb']} MB and {prof['total_mb']} MB once it has"
            f" imported the daemon's modules ({prof['modules']} modules) and run the start-up migration;"
            " largest additions (in import order, a shared dependency counts for the first importer): "
            + ", ".join(f"{name} +{mb} MB" for name, mb in biggest)
            + ". Largest file mappings: "
            + ", ".join(f"{name} {mb} MB" for name, mb in mem["top_files_mb"][:5])
            + "."
            + (
                f" Optional or feature-only modules loaded: {', '.join(prof['optional_loaded'])}"
                " (structlog's console renderer imports rich and its pygments when present; the test"
                " extras bring them)."
                if prof["optional_loaded"]
                else ""
            )
        )
    res["notes"].append(
        "The lab's configuration: AMI ping every 5 s, dialer poll every 1 s (the shipped default is 2 s),"
        " FastAGI listening, status file checked every second. 'Near 0 %' is read as under 1 %."
    )
    write_result(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
