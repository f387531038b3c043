#!/usr/bin/env python3
"""Time and peak memory of ``callbackd report`` and ``callbackd export`` on a million offered calls.

Builds a SQLite database (schema by ``callbackd db upgrade``, rows by bulk
insert) holding N calls over 30 days with the requests, contacts and attempts
their missed calls give rise to, then runs the real command line in a child
process for each measurement, so the peak RSS (``wait4``) is that command's
alone. Prints min/median/max and writes bench/out/reports.json.

A report over whole days is merged from the days kept in ``figures_partials`` when they are
there (the console, or an earlier report, stored them): each report is measured "cold" (the
table emptied before every run, so every row is read and the days stored) and "stored" (the
days kept by the cold runs). The touch rows the triggers add while the rows are loaded are
folded after loading, as the daemon does every hour.

    python bench/bench_reports.py [--calls 1000000] [--repeat 3] [--reuse] [--only export]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
DAYS = 30
FIRST = datetime(2026, 3, 1, tzinfo=UTC)
TARGET_SECONDS_PER_MILLION = 10.0  # 100 s for 10 million calls
TARGET_RSS_MB = 200.0  # up to a million calls
TARGET_RSS_MB_LARGE = 300.0  # beyond


def ts(at: datetime) -> str:
    """SQLAlchemy's SQLite storage format for the UTC datetimes (naive, always with microseconds)."""
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")


CALL_COLUMNS = [
    "linkedid",
    "number",
    "queue",
    "started_at",
    "answered_at",
    "ended_at",
    "hold_time",
    "agent",
    "outcome",
    "miss_reason",
]
REQUEST_COLUMNS = [
    "id",
    "number",
    "reason",
    "sources",
    "status",
    "created_at",
    "updated_at",
    "attempts_made",
    "closed_at",
]
CONTACT_COLUMNS = ["source", "source_ref", "number", "at", "disposition", "request_id"]
ATTEMPT_COLUMNS = [
    "id",
    "request_id",
    "try_no",
    "operator",
    "channel_id",
    "number",
    "outcome",
    "started_at",
    "ended_at",
]


def insert(
    con: sqlite3.Connection, table: str, columns: list[str], rows: list[tuple], **fixed: object
) -> None:
    names = [*columns, *fixed]
    marks = ["?"] * len(columns) + [repr(v) if isinstance(v, int) else f"'{v}'" for v in fixed.values()]
    con.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(marks)})", rows)


def generate(path: Path, n_calls: int, seed: int = 1) -> dict[str, int]:
    """Calls over DAYS days: ~80 % answered, ~20 % missed (a fifth of those short).

    Each missed call that is not short and has a number makes a callback request
    (with its contact) and zero to three attempts, ending as the statuses mix says.
    """
    rnd = random.Random(seed)
    numbers = [f"+1202{rnd.randrange(10**6, 10**7)}" for _ in range(n_calls // 3)]
    queues = ["support", "sales", "billing", None]
    agents = [f"PJSIP/op{i:02d}" for i in range(40)]
    calls, requests, contacts, attempts = [], [], [], []
    open_numbers: set[str] = set()
    step = DAYS * 86400 / n_calls
    for i in range(n_calls):
        start = FIRST + timedelta(seconds=int(i * step))
        number = rnd.choice(numbers) if rnd.random() > 0.02 else None
        queue = queues[rnd.randrange(4)] if rnd.random() < 0.9 else None
        lid = f"{1772323200 + i}.{i}"
        if rnd.random() < 0.8:
            hold = rnd.randrange(0, 90)
            answered = start + timedelta(seconds=hold + 2)
            ended = answered + timedelta(seconds=rnd.randrange(30, 900))
            agent = rnd.choice(agents)
            held = hold if queue else None
            calls.append(
                (lid, number, queue, ts(start), ts(answered), ts(ended), held, agent, "answered", None)
            )
            continue
        short = rnd.random() < 0.2
        hold = rnd.randrange(0, 5) if short else rnd.randrange(5, 300)
        ended = start + timedelta(seconds=hold + 1)
        reason = rnd.choice(["queue_abandon", "queue_timeout"]) if queue else "no_answer"
        held = hold if reason == "queue_abandon" else None
        calls.append((lid, number, queue, ts(start), None, ts(ended), held, None, "missed", reason))
        if short or number is None:
            contacts.append(("ami", lid, number, ts(ended), "short" if short else "anonymous", None))
            continue
        rid = len(requests) + 1
        roll = rnd.random()
        status = (
            "reached"
            if roll < 0.6
            else "recovered"
            if roll < 0.75
            else "expired"
            if roll < 0.85
            else "failed"
        )
        if roll > 0.97 and number not in open_numbers:
            status = "open"
            open_numbers.add(number)
        tries = rnd.randrange(1, 4) if status == "reached" else rnd.randrange(0, 4)
        at = ended
        for t in range(tries):
            at += timedelta(seconds=rnd.randrange(60, 7200))
            last = t == tries - 1
            outcome = (
                "answered"
                if status == "reached" and last
                else rnd.choice(["client_no_answer", "client_busy"])
            )
            operator, channel = rnd.choice(agents), f"cbd-{rid}-{t}"
            end = ts(at + timedelta(seconds=40))
            attempts.append(
                (f"{rid:08d}{t:02d}", rid, t + 1, operator, channel, number, outcome, ts(at), end)
            )
        closed = None if status == "open" else ts(at)
        requests.append((rid, number, reason, '["ami"]', status, ts(ended), ts(at), tries, closed))
        contacts.append(("ami", lid, number, ts(ended), "schedule", rid))

    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    with con:
        fixed = {"caller_num": "", "caller_name": "", "did": "", "node": "bench", "pbx": "bench"}
        insert(con, "calls", CALL_COLUMNS, calls, **fixed)
        insert(
            con, "requests", REQUEST_COLUMNS, requests, name="", contact_count=1, operator_tries=0, note=""
        )
        insert(con, "contacts", CONTACT_COLUMNS, contacts, raw_number="", name="", reason="queue_abandon",
               comment="", detail="", pbx="bench")  # fmt: skip
        insert(con, "attempts", ATTEMPT_COLUMNS, attempts, status="done", counted=1, node="bench")
    with con:  # one touch row an hour, as the daemon's hourly fold leaves them
        con.execute("CREATE TEMP TABLE folded AS SELECT hour, sum(n) AS n FROM figures_touched GROUP BY hour")
        con.execute("DELETE FROM figures_touched")
        con.execute("INSERT INTO figures_touched (hour, n) SELECT hour, n FROM folded ORDER BY hour")
    con.execute("ANALYZE")
    con.close()
    return {
        "calls": len(calls),
        "requests": len(requests),
        "contacts": len(contacts),
        "attempts": len(attempts),
    }


def measure(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of one child process.

    CPU time is printed too because wall time on a shared machine moves with its other load.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # KiB on Linux


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--reuse", action="store_true", help="keep an existing database of the same size")
    p.add_argument("--only", metavar="TEXT", help="measure only the runs whose name holds TEXT")
    p.add_argument("--generate", metavar="DB", help=argparse.SUPPRESS)
    p.add_argument(
        "--dir",
        type=Path,
        default=OUT,
        help="where the generated database is kept (a cache: /var/cache/callbackd-bench for 10M calls)",
    )
    args = p.parse_args()
    if args.generate:
        print(json.dumps(generate(Path(args.generate), args.calls)))
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    args.dir.mkdir(parents=True, exist_ok=True)
    dbfile = args.dir / f"reports-{args.calls}.db"
    config = OUT / "bench-reports.toml"
    config.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{dbfile}"\n\n[reports]\ntimezone = "UTC"\n')
    cli = [sys.executable, "-m", "callbackd", "-c", str(config)]

    counts: dict[str, int] | None = None
    load_seconds = None
    if not (args.reuse and dbfile.exists()):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{dbfile}{suffix}").unlink(missing_ok=True)
        subprocess.run([*cli, "db", "upgrade"], check=True, stdout=subprocess.DEVNULL)
        # A child's ru_maxrss starts at its parent's RSS when it forks, so the rows are built
        # in a child of their own and this process stays small for the measurements.
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, __file__, "--generate", str(dbfile), "--calls", str(args.calls)],
            check=True,
            capture_output=True,
            text=True,
        )
        counts = json.loads(out.stdout)
        load_seconds = time.perf_counter() - t0
        print(f"generated {counts} in {load_seconds:.1f} s", flush=True)
    if counts is None:
        con = sqlite3.connect(dbfile)
        counts = {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("calls", "requests", "attempts")
        }
        con.close()

    period = ["--from", FIRST.date().isoformat(), "--to", (FIRST + timedelta(days=DAYS)).date().isoformat()]
    report = [*cli, "report", *period]
    by_day = [*report, "--by", "day", "--format", "csv", "-o", str(OUT / "r.csv")]
    by_queue = [*report, "--by", "queue"]
    # (argv, empty figures_partials before each run)
    runs = {
        "startup (empty period)": ([*cli, "report", "--from", "2000-01-01", "--to", "2000-01-02"], False),
        "report --by day --format csv (cold)": (by_day, True),
        "report --by day --format csv (stored)": (by_day, False),
        "report --by queue --format table (cold)": (by_queue, True),
        "report --by queue --format table (stored)": (by_queue, False),
        "export calls": ([*cli, "export", "calls", *period, "--output", str(OUT / "calls.csv")], False),
    }
    if args.only:
        runs = {k: v for k, v in runs.items() if args.only in k}
    target_seconds = TARGET_SECONDS_PER_MILLION * max(args.calls, 10**6) / 10**6
    target_rss = TARGET_RSS_MB if args.calls <= 10**6 else TARGET_RSS_MB_LARGE
    results = {}
    for name, (argv, cold) in runs.items():
        walls, cpus, rss = [], [], []
        for _ in range(args.repeat):
            if cold:
                con = sqlite3.connect(dbfile)
                with con:
                    con.execute("DELETE FROM figures_partials")
                con.close()
            w, c, r = measure(argv)
            walls.append(w)
            cpus.append(c)
            rss.append(r)
        results[name] = {"seconds": summary(walls), "cpu_seconds": summary(cpus), "peak_rss_mb": summary(rss)}
        s, c, r = results[name]["seconds"], results[name]["cpu_seconds"], results[name]["peak_rss_mb"]
        ok = s["median"] < target_seconds and r["max"] < target_rss
        print(
            f"{name:42} wall min/median/max {s['min']:5.2f} {s['median']:5.2f} {s['max']:5.2f} s  "
            f"cpu median {c['median']:5.2f} s  peak RSS max {r['max']:5.1f} MB  "
            f"load {os.getloadavg()[0]:.1f} ",
            "ok" if ok else "OVER TARGET",
            flush=True,
        )
    export_size = (OUT / "calls.csv").stat().st_size if (OUT / "calls.csv").exists() else 0
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),  # other work on the machine while this ran
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "system": platform.platform(),
        },
        "rows": counts,
        "database_mb": round(dbfile.stat().st_size / 2**20, 1),
        "generate_seconds": load_seconds,
        "export_calls_csv_mb": round(export_size / 2**20, 1),
        "targets": {"seconds": target_seconds, "peak_rss_mb": target_rss},
        "repeat": args.repeat,
        "results": results,
    }
    (OUT / f"reports-{args.calls}.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "reports.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {OUT / 'reports.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
