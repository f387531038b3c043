#!/usr/bin/env python3
"""The console's pages and the webhook dispatcher on a large database.

N calls over 30 days (bench_reports.generate) plus M open requests, on SQLite. The console
is the real FastAPI app, called in process over ASGI (no socket: the figure is the server's
time); each page is fetched R times and min/median/max printed. Then 1,000 webhook events
are delivered to a local HTTP receiver and the rate is printed.

    python bench/bench_console.py [--calls 1000000] [--open 100000] [--repeat 5] [--reuse] [--quick]
                                  [--json FILE]

A figures page is timed three ways: first view (nothing kept: the memory cache and the stored
slices emptied before each run), cold (the memory cache emptied, as after a restart: the days
that are over come from the slices stored in the database) and warm (shown again within the
cache's minute). With --json (as bench/run runs it) the figures, against issue 14's targets,
are written to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_reports
from bench_reports import OUT, generate, ts
from benchlib import figure_stats, machine, result, write_result

# Issue 14: the live page and today's figures under 200 ms median, a period's page under 2 s.
TARGETS_S = {
    "live page": 0.2,
    "figures, one day by hour, cold": 0.2,
    "figures, one day by hour, warm": 0.2,
    "figures, today by hour at 23:30, cold": 0.2,
    "figures, today by hour at 23:30, warm": 0.2,
    "figures, 30 days by day, cold": 2.0,
    "figures, 30 days by day, warm": 2.0,
}
WEBHOOKS_PER_MINUTE = 1000
NOTE = (
    "pages over ASGI in process (server time, no browser) on SQLite. A figures page is read in"
    " slices (whole days, today by the hour); the slices that are over are kept 60 s in memory and"
    " stored in the database until a write touches their hours. First view: nothing kept (both"
    " emptied before each run); cold: the memory cache emptied, as after a restart, so the days"
    " over come from the stored slices; warm: a view within the minute after. The today line sets"
    " the console's clock to 23:30 on the measured day: 23 hours are kept and the hour under way is"
    " read. A first view is bound by reading every call of the period once: SQLite's read of the"
    " calls (about half the time, half of that the correlated look-ups for 'reached later') and"
    " decoding and folding each row in Python (the other half)."
)

_insert = bench_reports.insert


def _insert_with_pbx(con, table, columns, rows, **fixed):  # type: ignore[no-untyped-def]
    """bench_reports predates calls.pbx and contacts.pbx (NOT NULL): give them one PBX."""
    if table in ("calls", "contacts"):
        fixed.setdefault("pbx", "bench")
    _insert(con, table, columns, rows, **fixed)


bench_reports.insert = _insert_with_pbx


def add_open(path: Path, n: int) -> None:
    """n open requests with their own numbers, due over the next week."""
    con = sqlite3.connect(path)
    start = con.execute("SELECT coalesce(max(id), 0) FROM requests").fetchone()[0] + 1
    now = datetime.now(UTC)
    rows = [
        (start + i, f"+1303{i:07d}", "queue_abandon", '["ami"]', "open", ts(now), ts(now),
         ts(now + timedelta(seconds=i * 6)), 0, "", 1, 0, "")
        for i in range(n)
    ]  # fmt: skip
    with con:
        con.executemany(
            "INSERT INTO requests (id, number, reason, sources, status, created_at, updated_at, due_at,"
            " attempts_made, name, contact_count, operator_tries, note) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
    con.close()


TODAY_AT = datetime(2026, 3, 15, 23, 30, tzinfo=UTC)


def forget_stored(url: str) -> None:
    """Empty the stored figures slices (a first view: nothing kept from an earlier one)."""
    con = sqlite3.connect(url.split(":///", 1)[1])
    with con:
        con.execute("DELETE FROM figures_partials")
    con.close()


async def pages(url: str, repeat: int) -> dict[str, dict[str, float]]:
    """Each page *repeat* times; a figures page also cold (its cache of past days emptied first).

    Today's figures are never taken from the cache, so a day's cold figure is what the
    "today" page costs on a day with that many calls; the warm figure is a past day's or a
    period's page shown again within the cache's lifetime.
    """
    import httpx

    from callbackd.adapters import console, db
    from callbackd.adapters.console.auth import Account, Auth, hash_password
    from callbackd.adapters.http import build_app
    from callbackd.adapters.reports import CsvOptions, ReportSettings
    from callbackd.adapters.reports.figures import FiguresCache
    from callbackd.adapters.store import Store
    from callbackd.domain.calendar import BusinessCalendar
    from callbackd.domain.intake import IntakeRules
    from callbackd.domain.ladder import Schedule
    from callbackd.domain.metrics import Thresholds

    engine = db.make_engine(url)
    store = Store(engine, node="bench", schedule=Schedule(calendar=BusinessCalendar.always_open("UTC")),
                  claim_lease=timedelta(hours=1))  # fmt: skip
    settings = ReportSettings(tz=UTC, thresholds=Thresholds(), csv=CsvOptions())
    auth = Auth([Account("bench", hash_password("bench-password"), "admin")])
    app = build_app(lambda c: None, "x" * 20, IntakeRules(region="US"))
    cache = FiguresCache()
    now: list[datetime | None] = [None]  # None: the real time
    routes = console.router(store, auth, db_url=url, settings=lambda: settings, figures_cache=cache,
                            clock=lambda: now[0] or datetime.now(UTC))  # fmt: skip
    console.install(app, routes)
    cookie, _ = auth.issue(auth.accounts["bench"])
    transport = httpx.ASGITransport(app=app)
    results: dict[str, dict[str, float]] = {}
    headers = {"Cookie": f"callbackd_session={cookie}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="https://bench", timeout=600, headers=headers
    ) as c:

        async def timed(name: str, path: str, n: int, cold: bool, stored: bool = True) -> None:
            times = []
            for _ in range(n):
                if cold:
                    cache.clear()
                if not stored:
                    forget_stored(url)
                t = time.perf_counter()
                r = await c.get(path)
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, (path, r.status_code)
            results[name] = {"min": min(times), "median": statistics.median(times), "max": max(times),
                             "n": len(times)}  # fmt: skip
            print(f"{name:40} median {results[name]['median'] * 1000:8.1f} ms  (min {min(times) * 1000:.1f}, "
                  f"max {max(times) * 1000:.1f}, n={len(times)})", flush=True)  # fmt: skip

        await timed("live page", "/console/", repeat, False)
        await timed("live JSON (one SSE update)", "/console/live.json", repeat, False)
        for name, path, at in (
            ("figures, one day by hour", "/console/figures?from=2026-03-15", None),
            # As if it were 23:30 on that day: its 23 hours that are over are kept, the last is read.
            ("figures, today by hour at 23:30", "/console/figures", TODAY_AT),
            ("figures, 30 days by day", "/console/figures?from=2026-03-01&to=2026-03-30", None),
        ):
            now[0] = at
            await timed(f"{name}, first view", path, repeat, True, stored=False)
            await timed(f"{name}, cold", path, repeat, True)
            await timed(f"{name}, warm", path, repeat, False)  # the last cold run filled the cache
        now[0] = None
    await engine.dispose()
    return results


async def webhooks(url: str, n: int) -> float:
    from callbackd.adapters import db
    from callbackd.adapters import models as m
    from callbackd.adapters.webhooks import Dispatcher, Endpoint, Policy

    got = []
    loop = asyncio.get_running_loop()
    all_in = asyncio.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            got.append(1)
            if len(got) == n:
                loop.call_soon_threadsafe(all_in.set)
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    engine = db.make_engine(url)
    now = datetime.now(UTC)
    async with db.sessionmaker(engine)() as s, s.begin():
        s.add_all(
            m.OutboxEvent(endpoint="bench", event="request.created", request_id=i % 500 + 1,
                          payload={"event": "request.created", "request": {"id": i % 500 + 1}},
                          created_at=now, status="pending", due_at=now, tries=0, last_error="", ref="")
            for i in range(n)
        )  # fmt: skip
    hook = Endpoint("bench", f"http://127.0.0.1:{server.server_port}/", secret=b"bench-secret-0123456789")
    d = Dispatcher(engine, (hook,), Policy(poll_interval=0.05, concurrency=8))
    t = time.perf_counter()
    d.start()
    await asyncio.wait_for(all_in.wait(), 600)
    elapsed = time.perf_counter() - t
    assert len(got) == n
    await d.stop()
    server.shutdown()
    await engine.dispose()
    rate = n / elapsed * 60
    print(f"webhooks: {n} events in {elapsed:.1f} s = {rate:.0f} per minute (8 at a time, 500 requests)")
    return rate


def figures_of(summary: dict) -> dict:
    """The result bench/run puts in its table: page times in ms against the targets, the webhook rate."""
    n = f"{summary['calls']:,} calls, {summary['open']:,} open"
    figs = []
    for name, stats in summary["pages_s"].items():
        target = TARGETS_S.get(name)
        figs.append(
            figure_stats(
                "console_" + "".join(c if c.isalnum() else "_" for c in name),
                f"{name}, {n}",
                "ms",
                {k: stats[k] * 1000 for k in ("min", "median", "max")},
                target=("<", target * 1000) if target else None,
                over=f"{stats['n']} runs",
                digits=1,
            )
        )
    rate = summary.get("webhooks_per_minute")
    if rate:
        figs.append(
            figure_stats(
                "webhooks_per_minute",
                "webhook events delivered to a local receiver, 1,000 events (per minute)",
                "events/min",
                {"min": rate, "median": rate, "max": rate},
                target=(">=", WEBHOOKS_PER_MINUTE),
                digits=0,
            )
        )
    res = result("console", "Console", figs, **summary)
    load = summary["load_average"][0]
    res["notes"].append(
        f"measured {summary['when']} on {machine()['cpu']} (load average {load:.1f}: a shared 2-core"
        f" machine); {NOTE}"
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--open", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--reuse", action="store_true", help="keep an existing database of the same size")
    ap.add_argument("--no-webhooks", action="store_true", help="time the pages only")
    ap.add_argument("--quick", action="store_true", help="100,000 calls, 10,000 open, 3 runs")
    ap.add_argument("--json", metavar="FILE", help="write the figures for bench/run")
    args = ap.parse_args()
    if args.quick:
        args.calls, args.open, args.repeat = 100_000, 10_000, 3
    OUT.mkdir(exist_ok=True)
    dbfile = OUT / f"console-{args.calls}-{args.open}.db"
    config = OUT / "bench-console.toml"
    url = f"sqlite+aiosqlite:///{dbfile}"
    config.write_text(f'[database]\nurl = "{url}"\n')
    if not (args.reuse and dbfile.exists()):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{dbfile}{suffix}").unlink(missing_ok=True)
        subprocess.run([sys.executable, "-m", "callbackd", "-c", str(config), "db", "upgrade"], check=True)
        t = time.perf_counter()
        counts = generate(dbfile, args.calls)
        add_open(dbfile, args.open)
        print(f"generated {counts} + {args.open} open requests in {time.perf_counter() - t:.0f} s")
    else:
        con = sqlite3.connect(dbfile)
        with con:
            con.execute("DELETE FROM webhook_outbox")  # a reused database starts with no events
        con.close()
    res = asyncio.run(pages(url, args.repeat))
    rate = None if args.no_webhooks else asyncio.run(webhooks(url, 1000))
    summary = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),  # other work on the machine while this ran
        "pages_s": res,
        "webhooks_per_minute": rate,
        "calls": args.calls,
        "open": args.open,
    }
    (OUT / "console.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_result(figures_of(summary), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
