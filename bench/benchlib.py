"""Helpers shared by the benchmarks: statistics, figures, the lab lock, machine facts, profiles.

Each ``bench/bench_*.py`` measures one thing and, given ``--json FILE``, writes its result as

    {"name": ..., "title": ..., "figures": [figure, ...], "details": {...}, "notes": [...]}

where a figure is what :func:`figure` returns. ``bench/run`` collects them into
bench/results.json and bench/results.md.

    python bench/benchlib.py profile OUT -- -m callbackd report ...   # pyinstrument, top frames to OUT
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
OUT = BENCH / "out"
DATA = BENCH / "data"
PROFILES = BENCH / "profiles"  # call trees of the runs that missed a target
LAB_TOOL = ROOT / "asterisk" / "lab"
LAB_CONFIG = ROOT / "asterisk" / "callbackd-lab.toml"
# The lock the integration tests hold while they use the lab (tests/integration/conftest.py).
LAB_LOCK = Path("/run/callbackd-lab.tests.lock")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- statistics --------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q % of the values at or below it."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Iterable[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    if not vals:
        return {"n": 0}
    return {
        "n": len(vals),
        "min": min(vals),
        "median": statistics.median(vals),
        "p99": percentile(vals, 99),
        "max": max(vals),
    }


def figure(
    key: str,
    label: str,
    unit: str,
    values: Iterable[float],
    *,
    target: tuple[str, float] | None = None,
    on: str = "median",
    p99: bool = False,
    over: str = "",
    baseline: str | None = None,
    digits: int | None = None,
) -> dict[str, Any]:
    """One measured figure: min/median/max (and p99 if asked) of ``values``.

    ``target`` is ``("<", 500)`` or ``(">=", 20000)``, checked on the statistic ``on``
    (``median``, ``p99`` or ``max``). ``over`` says what the values are (runs, calls, samples).
    """
    s = summary(values)
    fig: dict[str, Any] = {"key": key, "label": label, "unit": unit, "over": over, **s}
    if not p99:
        fig.pop("p99", None)
    if digits is not None:
        fig["digits"] = digits
    if baseline:
        fig["baseline"] = baseline
    if target is not None:
        op, value = target
        fig["target"] = {"op": op, "value": value, "on": on}
        got = s.get(on)
        fig["met"] = None if got is None or math.isnan(got) else _compare(got, op, value)
    return fig


def figure_stats(
    key: str,
    label: str,
    unit: str,
    stats: dict[str, float],
    *,
    target: tuple[str, float] | None = None,
    on: str = "median",
    over: str = "",
    digits: int | None = None,
) -> dict[str, Any]:
    """A figure from min/median/max measured elsewhere (bench_reports.py keeps only those)."""
    fig: dict[str, Any] = {"key": key, "label": label, "unit": unit, "over": over}
    fig.update({k: float(stats[k]) for k in ("min", "median", "max") if k in stats})
    if digits is not None:
        fig["digits"] = digits
    if target is not None:
        op, value = target
        fig["target"] = {"op": op, "value": value, "on": on}
        fig["met"] = _compare(fig[on], op, value) if on in fig else None
    return fig


def _compare(got: float, op: str, value: float) -> bool:
    return {"<": got < value, "<=": got <= value, ">": got > value, ">=": got >= value}[op]


def result(name: str, title: str, figures: list[dict], **details: Any) -> dict[str, Any]:
    return {"name": name, "title": title, "figures": figures, "details": details, "notes": []}


def write_result(res: dict[str, Any], path: str | None) -> None:
    text = json.dumps(res, indent=2, default=str) + "\n"
    if path:
        Path(path).write_text(text)
    for f in res["figures"]:
        stats = " / ".join(f"{f[k]:.4g}" for k in ("min", "median", "p99", "max") if k in f)
        met = {True: "ok", False: "MISSED", None: ""}[f.get("met")] if "target" in f else ""
        say(f"  {f['label']:<58} {stats} {f['unit']} {met}")


# -- the lab -----------------------------------------------------------------------------


@contextlib.contextmanager
def lab_lock() -> Iterator[None]:
    """The tests' exclusive lock on the one lab of this machine; waits as long as it takes."""
    fh = LAB_LOCK.open("a")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"  waiting for {LAB_LOCK} (a test run is using the lab)")
            t0 = time.monotonic()
            fcntl.flock(fh, fcntl.LOCK_EX)
            say(f"  got the lab lock after {time.monotonic() - t0:.0f} s")
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def lab(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """Run asterisk/lab; only ever called with :func:`lab_lock` held."""
    res = subprocess.run(
        [sys.executable, str(LAB_TOOL), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if res.returncode != 0:
        raise RuntimeError(
            f"asterisk/lab {' '.join(args)} failed ({res.returncode}):\n{res.stdout}{res.stderr}"
        )
    return res.stdout


def lab_call(number: str, to: str, hangup_after: float, *extra: str, tries: int = 3) -> str:
    """``asterisk/lab call``, blocking until the call ends.

    The tool prunes old call logs as each call starts, so two calls starting together can
    race on a file one of them has just deleted; that call fails before it is placed, and
    is tried again.
    """
    argv = ["call", "--from", number, "--to", to, "--hangup-after", str(hangup_after), *extra]
    for attempt in range(tries):
        try:
            return lab(*argv, timeout=300)
        except RuntimeError as exc:
            if "No such file or directory" not in str(exc) or attempt == tries - 1:
                raise
            say(f"  asterisk/lab call from {number} failed before placing the call; again")
            time.sleep(0.2)
    raise AssertionError("unreachable")


def lab_status() -> dict[str, Any]:
    res = subprocess.run([sys.executable, str(LAB_TOOL), "status", "--json"], capture_output=True, text=True)
    try:
        return json.loads(res.stdout)
    except ValueError:
        return {"up": False}


@contextlib.contextmanager
def lab_session() -> Iterator[dict[str, Any]]:
    """Hold the lab lock, bring the lab up, and leave it as found: the operators' phones back to
    their behaviours (untraced), and the lab stopped again if it was down. Yields its status."""
    with lab_lock():
        before = lab_status()
        was_up = bool(before.get("up"))
        t0 = time.monotonic()
        lab("up")
        say(f"  lab up ({'already running' if was_up else f'started in {time.monotonic() - t0:.1f} s'})")
        ops = {
            name: (o.get("behaviour") or "answer") for name, o in (before.get("operators") or {}).items()
        } or {"op1": "answer", "op2": "answer"}
        try:
            yield lab_status()
        finally:
            if was_up:
                for name, behaviour in ops.items():
                    # Without CALLBACKD_LAB_SIPP_TRACE: a traced phone is restarted untraced.
                    env = {"CALLBACKD_LAB_SIPP_TRACE": ""}
                    with contextlib.suppress(Exception):
                        lab("operator", name, behaviour, env=env)
            else:
                lab("down")


def private_secret(directory: Path) -> Path:
    """A 0600 copy of asterisk/lab-ami-secret (callbackd refuses a secret file readable by others)."""
    path = directory / "lab-ami-secret"
    path.write_text((ROOT / "asterisk" / "lab-ami-secret").read_text())
    path.chmod(0o600)
    return path


def bench_config(tmp: Path, *, replace: dict[str, str] | None = None, extra: str = "") -> Path:
    """asterisk/callbackd-lab.toml with its own database, status file and JSON logs."""
    text = LAB_CONFIG.read_text()
    fixed = {
        'secret_file = "asterisk/lab-ami-secret"': f'secret_file = "{private_secret(tmp)}"',
        "sqlite+aiosqlite:////tmp/callbackd-lab/callbackd.db": f"sqlite+aiosqlite:///{tmp}/callbackd.db",
        'format = "console"': 'format = "json"',
        "/tmp/callbackd-lab/status.json": f"{tmp}/status.json",
        **(replace or {}),
    }
    for old, new in fixed.items():
        if old not in text:
            raise RuntimeError(f"{LAB_CONFIG} has no {old!r} to replace")
        text = text.replace(old, new)
    path = tmp / "callbackd.toml"
    path.write_text(text + "\n" + extra)
    path.chmod(0o600)
    return path


# -- the machine -------------------------------------------------------------------------


def _cpuinfo() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


def machine() -> dict[str, Any]:
    return {
        "cpu": _cpuinfo(),
        "cores": os.cpu_count(),
        "ram_gib": _mem_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- processes ---------------------------------------------------------------------------


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- profiles ----------------------------------------------------------------------------


def ensure_pyinstrument() -> None:
    """pyinstrument is only needed when a target is missed; install it then."""
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        say("  installing pyinstrument (for the profile of a missed target)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyinstrument>=4.6"], check=True)


IDLE = ("epoll.poll", "select.select", "poll.poll")


def top_frames(session: Any, n: int = 15) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Self time per function, and per package, over a pyinstrument session; largest first.

    A "[self]" leaf counts for the function it is in; time in a built-in counts for the
    package that called it, except the event loop's wait for I/O, which is "idle".
    """
    by_function: dict[tuple[str, str], float] = {}
    by_package: dict[str, float] = {}
    root = session.root_frame()
    stack = [root] if root is not None else []
    while stack:
        frame = stack.pop()
        if frame.children:
            stack.extend(frame.children)
            continue
        owner = frame.parent if frame.is_synthetic and frame.parent is not None else frame
        where = f"{owner.file_path_short or ''}:{owner.line_no or ''}"
        if (owner.file_path_short or "<").startswith("<"):  # a built-in: say who called it
            caller = owner.parent
            where = f"built-in, from {caller.file_path_short if caller is not None else '?'}"
        key = (owner.function or "?", where)
        by_function[key] = by_function.get(key, 0.0) + frame.time
        if owner.function in IDLE:
            package = "idle (waiting for I/O)"
        else:
            up = owner
            while up is not None and (up.file_path_short or "<built-in>").startswith("<"):
                up = up.parent
            path = (up.file_path_short if up is not None else None) or "<built-in>"
            package = path.split("/", 1)[0] if "/" in path else path
        by_package[package] = by_package.get(package, 0.0) + frame.time
    whole = sum(by_function.values()) or 1.0
    functions = [
        {"function": fn, "where": where, "self_s": round(t, 3), "share": round(t / whole, 3)}
        for (fn, where), t in sorted(by_function.items(), key=lambda kv: kv[1], reverse=True)[:n]
    ]
    packages = [
        {"package": pkg, "self_s": round(t, 3), "share": round(t / whole, 3)}
        for pkg, t in sorted(by_package.items(), key=lambda kv: kv[1], reverse=True)[:n]
    ]
    return functions, packages


def save_profile(profiler: Any, name: str) -> dict[str, Any]:
    """Write the call tree to bench/profiles/NAME.txt; return the top frames for results.json."""
    PROFILES.mkdir(parents=True, exist_ok=True)
    path = PROFILES / f"{name}.txt"
    path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    session = profiler.last_session
    functions, packages = top_frames(session)
    return {
        "tool": "pyinstrument",
        "duration_s": round(session.duration, 2),
        "cpu_s": round(session.cpu_time, 2) if getattr(session, "cpu_time", None) else None,
        "tree": str(path.relative_to(ROOT)),
        "top_self_time": functions,
        "by_package": packages,
    }


def profile_command(name: str, argv: list[str]) -> dict[str, Any]:
    """Profile ``python ARGV`` in a child process; returns what :func:`save_profile` returns."""
    ensure_pyinstrument()
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"profile-{name}.json"
    subprocess.run(
        [sys.executable, __file__, "profile", str(out), name, "--", *argv],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads(out.read_text())


def _profile_main(out: str, name: str, argv: list[str]) -> int:
    import runpy

    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001, async_mode="disabled")
    if argv[0] == "-m":
        module, rest = argv[1], argv[2:]
        sys.argv = [module, *rest]
        profiler.start()
        with contextlib.suppress(SystemExit):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        profiler.start()
        with contextlib.suppress(SystemExit):
            runpy.run_path(argv[0], run_name="__main__")
    profiler.stop()
    Path(out).write_text(json.dumps(save_profile(profiler, name), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[1] == "profile" and sys.argv[4] == "--":
        sys.exit(_profile_main(sys.argv[2], sys.argv[3], sys.argv[5:]))
    sys.exit(__doc__)
