#!/usr/bin/env python3
"""AMI ingest: a real AMI stream replayed over TCP into the daemon's ingest path.

The stream (bench/data/ami-lab.trace.gz) was recorded once from the lab, as the
``callbackd`` AMI user, while mixed calls ran (``--record`` records it again). A local
server speaks the AMI banner and accepts the Login, then sends the stream looped to at least
200,000 events, each loop's Uniqueid/Linkedid values made unique, as fast as TCP takes it:

- bare: a panoramisk Manager with one no-op ``*`` handler that counts events (the baseline);
- daemon: ``AmiClient`` (panoramisk plus callbackd's safe protocol and dict conversion; events
  the daemon does not read dropped unparsed, as the daemon's client does) -> ``Daemon.on_event``
  (operator pool, dialer, missed-call detector, as ``AMI_ROUTES`` routes them) -> the intake
  queue -> ``Store`` on SQLite: every call row, contact and callback request written.

A third client, the daemon's path without database writes (the intake queue is drained and
dropped), tells parsing and detection from storing. Each client is a fresh process; in each
of the repeated runs all three go once, in turn first, so they see the same machine. Events
per second count from the first event to the last one handled (daemon: to the last write).
Loss is checked: events counted == events sent, and the database holds exactly the calls
and contacts the detector finds in the stream, times the loops. Then the stream is sent paced at
2,000 events/s with each event's Timestamp set when it is written to the socket; the lag is
the time from there to ``Daemon.on_event``.

    python bench/bench_ingest.py [--quick] [--json FILE] [--profile-run]
    python bench/bench_ingest.py --record      # re-record bench/data/ami-lab.trace.gz (uses the lab)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchlib import (
    DATA,
    IDLE,
    LAB_CONFIG,
    OUT,
    ROOT,
    figure,
    percentile,
    result,
    say,
    summary,
    write_result,
)

TRACE = DATA / "ami-lab.trace.gz"
FULL_EVENTS = 200_000
PACED_RATE = 2_000
TARGET_RATE = 20_000.0
TARGET_RATIO = 0.5
TARGET_LAG_MS = 100.0
ID_HEADER = re.compile(r"^(\w*(?:Uniqueid|Linkedid)): ([^\r\n]+)", re.M)
SEP = "\r\n\r\n"


# -- the stream ----------------------------------------------------------------------------


def load_trace(path: Path = TRACE) -> list[str]:
    """The recorded events, one AMI message each, without the blank line that ends it."""
    text = gzip.decompress(path.read_bytes()).decode()
    text = "\n".join(line for line in text.split("\n") if not line.startswith(";"))  # the tool's header
    blocks = []
    for block in text.split(SEP):
        lines = [ln for ln in block.strip("\r\n").split("\r\n") if ln]
        if lines and lines[0].startswith("Event:"):
            blocks.append("\r\n".join(lines))
    return blocks


def looped(blocks: list[str], loops: int) -> list[str]:
    """The stream ``loops`` times; from the second loop on, every Uniqueid and Linkedid gets a
    suffix, so each loop's calls are new calls."""
    out = list(blocks)
    for i in range(1, loops):
        out.extend(ID_HEADER.sub(lambda mo, i=i: f"{mo.group(1)}: {mo.group(2)}-{i}", b) for b in blocks)
    return out


def parse_block(block: str) -> dict[str, str]:
    ev: dict[str, str] = {}
    for line in block.split("\r\n"):
        key, _, value = line.partition(": ")
        ev.setdefault(key, value)
    return ev


def lab_cfg_data(db_url: str) -> dict[str, Any]:
    """asterisk/callbackd-lab.toml as the daemon would load it, with another database."""
    data = tomllib.loads(LAB_CONFIG.read_text())
    data["database"]["url"] = db_url
    data["ami"].pop("secret_file", None)
    data["ami"]["secret"] = "bench"
    data["log"]["format"] = "json"
    return data


def expected_per_loop(blocks: list[str]) -> dict[str, int]:
    """What the detector makes of one loop: the call rows and AMI contacts the store must hold,
    and every item the intake writer gets (also the recovery checks for answered calls)."""
    from datetime import UTC, datetime

    from callbackd.app import detection_rules
    from callbackd.config import Config
    from callbackd.domain.detection import CallEnded, Detector, Missed

    cfg = Config.model_validate(lab_cfg_data("sqlite+aiosqlite:///:memory:"))
    det = Detector(detection_rules(cfg))
    calls = missed = items = 0
    for b in blocks:
        for out in det.feed(parse_block(b), datetime.now(UTC)):
            calls += isinstance(out, CallEnded)
            missed += isinstance(out, Missed)
            items += 1
    return {"calls": calls, "contacts": missed, "intake_items": items}


# -- the AMI server ------------------------------------------------------------------------


def _split_timestamp(block: str) -> tuple[str, str]:
    """(before, after) the Timestamp value, so a paced sender can stamp the send time."""
    at = block.find("\r\nTimestamp: ")
    if at < 0:
        first, _, rest = block.partition("\r\n")
        return first + "\r\nTimestamp: ", "\r\n" + rest + SEP if rest else SEP
    start = at + len("\r\nTimestamp: ")
    end = block.find("\r\n", start)
    return block[:start], (block[end:] if end >= 0 else "") + SEP


async def _serve(events: list[str], port_pipe: Any) -> None:
    payload = (SEP.join(events) + SEP).encode()
    stamped = [_split_timestamp(b) for b in events]

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        sender: asyncio.Task[None] | None = None
        try:
            while True:
                raw = await reader.readuntil(SEP.encode())
                action = parse_block(raw.decode().strip())
                reply = f"Response: Success\r\nActionID: {action.get('ActionID', '')}\r\n"
                if action.get("Action", "").lower() == "ping":
                    reply += f"Ping: Pong\r\nTimestamp: {time.time():.6f}\r\n"
                elif action.get("Action", "").lower() == "login":
                    reply += "Message: Authentication accepted\r\n"
                writer.write((reply + "\r\n").encode())
                if action.get("Action", "").lower() == "login" and sender is None:
                    mode = action.get("Username", "full")
                    sender = asyncio.create_task(_send(writer, mode, payload, stamped))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if sender is not None:
                sender.cancel()
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    port_pipe.send(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


async def _send(
    writer: asyncio.StreamWriter, mode: str, payload: bytes, stamped: list[tuple[str, str]]
) -> None:
    await asyncio.sleep(0.2)  # the client finishes its login first
    if mode == "full":
        step = 1 << 20
        for i in range(0, len(payload), step):
            writer.write(payload[i : i + step])
            await writer.drain()
        return
    # paced-RATE-COUNT: COUNT events at RATE per second, each stamped as it is written
    _, rate_s, count_s = mode.split("-")
    rate, count = float(rate_s), min(int(count_s), len(stamped))
    t0 = time.perf_counter()
    sent = 0
    while sent < count:
        due = min(count, int((time.perf_counter() - t0) * rate) + 1)
        if due > sent:
            now = f"{time.time():.6f}"
            writer.write("".join(a + now + b for a, b in stamped[sent:due]).encode())
            sent = due
            await writer.drain()
        await asyncio.sleep(0.001)


def serve_process(events: list[str], conn: Any) -> None:
    asyncio.run(_serve(events, conn))


# -- the clients (each run in a fresh process) -----------------------------------------------


async def client_bare(port: int, expect: int, timeout: float) -> dict[str, Any]:
    from panoramisk import Manager

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    state = {"n": 0, "first": 0.0, "last": 0.0}

    def on_event(manager: Any, message: Any) -> None:
        state["n"] += 1
        if state["n"] == 1:
            state["first"] = time.perf_counter()
        if state["n"] >= expect:
            state["last"] = time.perf_counter()
            done.set()

    manager = Manager(
        host="127.0.0.1",
        port=port,
        username="full",
        secret="bench",
        events="on",
        ping_delay=10**7,
        ping_interval=10**7,
        loop=loop,
    )
    manager.register_event("*", on_event)
    manager.connect()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout)
    manager.close()
    secs = (state["last"] or time.perf_counter()) - state["first"]
    return {"events": state["n"], "seconds": secs, "rate": state["n"] / secs if secs > 0 else 0.0}


async def client_daemon(
    port: int,
    expect: int,
    timeout: float,
    mode: str,
    db_path: Path,
    *,
    store: bool = True,
    profiler: Any = None,
) -> dict[str, Any]:
    """The daemon's ingest path; ``store=False`` drains the intake queue without writing anything."""
    from sqlalchemy import func, select

    from callbackd import logs
    from callbackd.adapters import models as m
    from callbackd.adapters.ami import AmiClient
    from callbackd.app import AMI_ROUTES, Daemon
    from callbackd.config import Config

    url = f"sqlite+aiosqlite:///{db_path}"
    data = lab_cfg_data(url)
    data["service"]["spool_file"] = str(Path(db_path).with_name("spool.jsonl"))
    cfg = Config.model_validate(data)
    logs.setup(cfg.log.level, cfg.log.format)  # JSON lines to stdout (a file), as under systemd
    d = Daemon(cfg)
    stack = contextlib.AsyncExitStack()
    await d.build(stack)
    done = asyncio.Event()
    state = {"n": 0, "first": 0.0, "last": 0.0}
    lags: list[float] = []
    paced = mode != "full"
    handle = d.on_event

    def on_event(ev: dict[str, str]) -> None:
        if paced:
            lags.append((time.time() - float(ev.get("Timestamp", "0"))) * 1000)
        state["n"] += 1
        if state["n"] == 1:
            state["first"] = time.perf_counter()
            if profiler is not None:
                profiler.start()
        handle(ev)
        if state["n"] + d.ami.dropped >= expect:
            done.set()

    d.ami = AmiClient(
        host="127.0.0.1",
        port=port,
        username=mode,
        secret="bench",
        on_event=on_event,
        wanted=AMI_ROUTES,
        ping_interval=3600,
        ping_timeout=60,
    )
    if not store:
        d.intake.put = lambda item: None  # type: ignore[method-assign]
    depth = 0

    async def watch_depth() -> None:
        nonlocal depth
        while True:
            depth = max(depth, d.intake.backlog().queued)
            if state["n"] and state["n"] + d.ami.dropped >= expect:
                done.set()  # the last events were dropped unparsed: on_event saw none of them
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_depth())
    await d.ami.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout)
    dispatched = time.perf_counter()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(d.intake.idle(), timeout)
    state["last"] = time.perf_counter()
    if profiler is not None:
        profiler.stop()
    watcher.cancel()
    await d.ami.close()
    async with d.store.session() as s:
        calls = (await s.execute(select(func.count()).select_from(m.Call))).scalar_one()
        contacts = (await s.execute(select(func.count()).select_from(m.Contact))).scalar_one()
        requests = (await s.execute(select(func.count()).select_from(m.Request))).scalar_one()
    await stack.aclose()
    secs = state["last"] - state["first"]
    read = state["n"] + d.ami.dropped  # every event read off the socket
    out = {
        "events": read,
        "delivered": state["n"],
        "dropped_unparsed": d.ami.dropped,
        "seconds": secs,
        "dispatch_seconds": dispatched - state["first"],
        "rate": read / secs if secs > 0 else 0.0,
        "calls": calls,
        "contacts": contacts,
        "requests": requests,
        "max_intake_depth": depth,
        "detector_open_calls": len(d.detector.calls),
    }
    if paced:
        out["lag_ms"] = lags
    return out


def client_main(args: argparse.Namespace) -> int:
    profiler = None
    if args.profile:
        from pyinstrument import Profiler

        # Started at the first event and stopped after the last write: the ingest, not the start-up.
        profiler = Profiler(interval=0.001, async_mode="disabled")

    async def go() -> dict[str, Any]:
        if args.client == "bare":
            return await client_bare(args.port, args.expect, args.timeout)
        with tempfile.TemporaryDirectory(prefix="callbackd-ingest-") as tmp:
            return await client_daemon(
                args.port,
                args.expect,
                args.timeout,
                args.mode,
                Path(tmp) / "c.db",
                store=args.client == "daemon",
                profiler=profiler,
            )

    res = asyncio.run(go())
    if profiler is not None:
        from bench.benchlib import save_profile

        res["profile"] = save_profile(profiler, args.profile)
    Path(args.out).write_text(json.dumps(res))
    return 0


def run_client(kind: str, port: int, expect: int, mode: str = "full", profile: str | None = None) -> dict:
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"ingest-{kind}.json"
    out.unlink(missing_ok=True)
    argv = [sys.executable, __file__, "--client", kind, "--port", str(port), "--expect", str(expect)]
    argv += ["--mode", mode, "--out", str(out), "--timeout", "300"]
    if profile:
        argv += ["--profile", profile]
    with open(OUT / f"ingest-{kind}.log", "w") as log:
        subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return json.loads(out.read_text())


# -- the benchmark ---------------------------------------------------------------------------


def main_bench(args: argparse.Namespace) -> dict[str, Any]:
    blocks = load_trace()
    per_loop = expected_per_loop(blocks)
    total = 40_000 if args.quick else FULL_EVENTS
    loops = -(-total // len(blocks))
    events = looped(blocks, loops)
    n = len(events)
    paced_seconds = 5 if args.quick else 10
    paced_n = PACED_RATE * paced_seconds
    if paced_n > n:
        raise SystemExit(f"the stream has {n} events, fewer than {paced_n}")
    want = {"calls": per_loop["calls"] * loops, "contacts": per_loop["contacts"] * loops}
    say(
        f"  stream: {len(blocks)} events, {per_loop['calls']} calls, {per_loop['contacts']} missed per loop;"
        f" {loops} loops = {n} events, {sum(map(len, events)) / 2**20:.0f} MB"
    )
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=serve_process, args=(events, child), daemon=True)
    server.start()
    try:
        port = parent.recv()
        repeats = 2 if args.quick else 5
        bare, detect, daemon, ratios, detect_ratios, lost = [], [], [], [], [], []
        kinds = ["bare", "detect", "daemon"]
        for r in range(repeats):
            got: dict[str, dict] = {}
            for kind in kinds[r % 3 :] + kinds[: r % 3]:  # each goes first once
                got[kind] = run_client(kind, port, n)
            b, t, d = got["bare"], got["detect"], got["daemon"]
            bare.append(b["rate"])
            detect.append(t["rate"])
            daemon.append(d["rate"])
            ratios.append(d["rate"] / b["rate"])
            detect_ratios.append(t["rate"] / b["rate"])
            problems = [f"{k} counted {got[k]['events']} of {n}" for k in kinds if got[k]["events"] != n]
            for key in ("calls", "contacts"):
                if d[key] != want[key]:
                    problems.append(f"daemon stored {d[key]} {key}, the stream has {want[key]}")
            lost.extend(problems)
            say(
                f"  run {r + 1}: bare {b['rate']:,.0f} ev/s, parse + detect {t['rate']:,.0f} ev/s,"
                f" daemon {d['rate']:,.0f} ev/s ({d['calls']} calls, {d['contacts']} contacts,"
                f" {d['requests']} requests; intake queue up to {d['max_intake_depth']})"
                + (" LOSS: " + "; ".join(problems) if problems else "")
            )
            last_daemon = d
        lag_p99, lag_p50, lag_max, lag_runs = [], [], [], []
        for r in range(repeats):
            p = run_client("daemon", port, paced_n, mode=f"paced-{PACED_RATE}-{paced_n}")
            lags = p.pop("lag_ms")
            lag_p50.append(percentile(lags, 50))
            lag_p99.append(percentile(lags, 99))
            lag_max.append(max(lags))
            lag_runs.append({**p, "lag_ms": summary(lags)})
            if p["events"] != paced_n:
                lost.append(f"paced run {r + 1}: counted {p['events']} of {paced_n} events")
            say(
                f"  paced run {r + 1}: {paced_n} events at {PACED_RATE}/s, lag p50 {lag_p50[-1]:.2f} ms,"
                f" p99 {lag_p99[-1]:.2f} ms, max {lag_max[-1]:.1f} ms"
            )
    finally:
        server.terminate()
        server.join(5)
    figs = [
        figure(
            "ingest_daemon_eps",
            "AMI ingest into the daemon (parse, detect, store)",
            "events/s",
            daemon,
            target=(">=", TARGET_RATE),
            over=f"{repeats} runs",
            digits=0,
        ),
        figure(
            "ingest_bare_eps",
            "bare panoramisk connection, parse only (baseline)",
            "events/s",
            bare,
            over=f"{repeats} runs",
            digits=0,
        ),
        figure(
            "ingest_detect_eps",
            "the same without database writes (parse, detect; diagnostic)",
            "events/s",
            detect,
            over=f"{repeats} runs",
            digits=0,
        ),
        figure(
            "ingest_detect_ratio",
            "without database writes / bare panoramisk (diagnostic)",
            "ratio",
            detect_ratios,
            over=f"{repeats} runs",
            baseline="ingest_bare_eps",
            digits=2,
        ),
        figure(
            "ingest_ratio",
            "daemon / bare panoramisk, same run",
            "ratio",
            ratios,
            target=(">=", TARGET_RATIO),
            over=f"{repeats} runs",
            baseline="ingest_bare_eps",
            digits=2,
        ),
        figure(
            "ingest_lost",
            "events or records lost",
            "count",
            [len(lost)],
            target=("<=", 0),
            over=f"{repeats} runs",
            digits=0,
        ),
        figure(
            "ingest_lag_p99_ms",
            f"event lag p99 at {PACED_RATE:,} events/s (socket write -> on_event)",
            "ms",
            lag_p99,
            target=("<", TARGET_LAG_MS),
            over=f"{repeats} runs",
        ),
        figure(
            "ingest_lag_p50_ms",
            f"event lag p50 at {PACED_RATE:,} events/s",
            "ms",
            lag_p50,
            over=f"{repeats} runs",
        ),
    ]
    res = result(
        "ingest",
        "AMI ingest",
        figs,
        trace=str(TRACE.relative_to(ROOT)),
        trace_events=len(blocks),
        per_loop=per_loop,
        loops=loops,
        events_per_run=n,
        stored_per_run=want,
        last_daemon_run={k: v for k, v in last_daemon.items()},
        paced={"rate": PACED_RATE, "events": paced_n, "runs": lag_runs},
        loss=lost,
    )
    missed = [f for f in figs if f.get("met") is False]
    if (missed or args.profile_run) and not args.no_profile:
        why = "a target is missed" if missed else "asked for"
        say(f"  {why}: profiling one daemon run with pyinstrument")
        from bench.benchlib import ensure_pyinstrument

        ensure_pyinstrument()
        # A fifth of the stream is enough for the profile's shape, and quicker under the profiler.
        part = events[: max(1, loops // 5) * len(blocks)]
        server = ctx.Process(target=serve_process, args=(part, child), daemon=True)
        server.start()
        try:
            port = parent.recv()
            prof = run_client("daemon", port, len(part), profile="ingest")
        finally:
            server.terminate()
            server.join(5)
        res["profile"] = prof["profile"]
        res["details"]["profiled_run"] = {k: v for k, v in prof.items() if k != "profile"}
    if any(f["key"] in ("ingest_daemon_eps", "ingest_ratio") and f.get("met") is False for f in figs):
        note = bound_note(last_daemon, detect, detect_ratios, per_loop, loops, res.get("profile"))
        res["notes"].append(note)
    return res


def bound_note(
    d: dict, detect: list[float], detect_ratios: list[float], per_loop: dict, loops: int, prof: dict | None
) -> str:
    """What bounds the daemon's ingest rate, from what this run measured."""
    from statistics import median

    from callbackd.intake import WRITE_BATCH

    items = per_loop["intake_items"] * loops
    text = (
        f"without database writes the same path runs at {median(detect):,.0f} events/s"
        f" ({median(detect_ratios):.2f} of bare panoramisk: parsing each event into a dict and the"
        " detector, operator pool, dialer and metrics per event it routes; the others dropped unparsed);"
        " with them, the intake writer bounds"
        f" it: {items:,} items per run (a call row per call, a contact merged into its request per"
        f" missed call, a recovery check per answered call), group-committed up to {WRITE_BATCH:,} per"
        " transaction with a few statements per batch (the batch's open requests and stored contacts"
        " read once, its contact and call rows inserted once), on the event loop's thread as the"
        f" parsing is; {d['seconds'] * 1000 / items:.2f} ms of the run per item on SQLite; the intake"
        f" queue grew to {d['max_intake_depth']:,} items."
    )
    if prof:
        pk = ", ".join(f"{p['package']} {100 * p['share']:.0f} %" for p in prof["by_package"][:5])
        busy = [f for f in prof["top_self_time"] if f["function"] not in IDLE]
        fn = "; ".join(f"{f['function']} ({f['where']}) {100 * f['share']:.0f} %" for f in busy[:4])
        text += f" Profile ({prof['tool']}, {prof['tree']}), main thread by package: {pk};"
        text += f" top functions: {fn}."
    return text


# -- recording the stream from the lab -------------------------------------------------------


def record(seconds_cap: float = 600) -> int:
    """Record the callbackd user's AMI stream while mixed calls run on the lab and a daemon
    calls the missed ones back. Holds the lab lock throughout."""
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from bench.benchlib import bench_config, lab, lab_call, lab_session

    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from labdaemon import DaemonProcess

    DATA.mkdir(parents=True, exist_ok=True)
    raw = OUT / "ami-lab.trace"
    OUT.mkdir(parents=True, exist_ok=True)
    raw.unlink(missing_ok=True)
    with lab_session(), tempfile.TemporaryDirectory(prefix="callbackd-record-") as tmp:
        lab("operator", "all", "answer")
        cfg = bench_config(Path(tmp))
        daemon = DaemonProcess(cfg)
        tracer = None
        try:
            daemon.wait_for("ami.resynced", timeout=30)
            tracer = subprocess.Popen(
                [sys.executable, str(ROOT / "asterisk" / "lab"), "trace", str(raw)], start_new_session=True
            )
            time.sleep(1)
            lock = threading.Lock()

            def call(number: str, to: str, after: float, *extra: str) -> None:
                lab_call(number, to, after, *extra)
                with lock:
                    say(f"    call {number} -> {to} done")

            def admin(*args: str) -> None:
                lab("cli", *args)

            plan: list[tuple[str, str, float, tuple[str, ...]]] = []
            for i in range(12):  # answered in the support queue
                plan.append((f"20255511{i:02d}", "100", 3 + i % 3, ()))
            for i in range(5):  # op1's direct line, answered
                plan.append((f"20255512{i:02d}", "102", 3, ()))
            for i in range(5):  # IVR hang-ups
                plan.append((f"20255513{i:02d}", "105", 2 + i, ()))
            for i in range(3):  # after hours: hang up, or press 1 for a callback
                plan.append((f"20255514{i:02d}", "104", 4, ()))
                plan.append((f"20255515{i:02d}", "104", 6, ("--dtmf", "1", "--dtmf-after", "2")))
            for i in range(3):  # FastAGI callback request, then the support queue
                plan.append((f"20255516{i:02d}", "103", 5, ()))
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda p: call(p[0], p[1], p[2], *p[3]), plan))
                # Abandons: nobody in sales takes calls (paused there only), so callers give up;
                # the daemon calls them back. Last digits pick the client's answer.
                for op in ("op1", "op2"):
                    admin("queue", "pause", "member", f"PJSIP/{op}", "queue", "sales", "reason", "bench")
                try:
                    abandons = [
                        (f"20255517{k}{d}", "101", 2 + k * 1.5, ()) for k, d in enumerate("1167801316")
                    ]
                    list(pool.map(lambda p: call(p[0], p[1], p[2], *p[3]), abandons))
                    # Queue time-outs: nobody free in support for a while.
                    for op in ("op1", "op2"):
                        admin(
                            "queue", "pause", "member", f"PJSIP/{op}", "queue", "support", "reason", "bench"
                        )
                    try:
                        list(pool.map(lambda k: call(f"20255518{k:02d}", "106", 0), range(4)))
                    finally:
                        for op in ("op1", "op2"):
                            admin("queue", "unpause", "member", f"PJSIP/{op}", "queue", "support")
                finally:
                    for op in ("op1", "op2"):
                        admin("queue", "unpause", "member", f"PJSIP/{op}", "queue", "sales")
            # Let the callbacks finish.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                stored = len(daemon.events("request.stored"))
                if stored and len(daemon.events("attempt.outcome")) >= stored:
                    break
                time.sleep(1)
            time.sleep(3)
        finally:
            if tracer is not None:  # stop recording before the lock is let go
                os.killpg(tracer.pid, signal.SIGINT)
                try:
                    tracer.wait(10)
                except subprocess.TimeoutExpired:
                    tracer.kill()
                    tracer.wait()
            daemon.stop()
    TRACE.write_bytes(gzip.compress(raw.read_bytes(), 9))
    blocks = load_trace()
    kib = TRACE.stat().st_size / 1024
    say(f"  {len(blocks)} events -> {TRACE} ({kib:.0f} KiB); per loop: {expected_per_loop(blocks)}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="40,000 events, 2 runs of each, 5 s paced")
    p.add_argument("--json", metavar="FILE", help="write the result here")
    p.add_argument("--no-profile", action="store_true", help="no pyinstrument run when a target is missed")
    p.add_argument("--profile-run", action="store_true", help="a pyinstrument run even with every target met")
    p.add_argument("--record", action="store_true", help="record the stream again from the lab")
    p.add_argument("--client", choices=("bare", "detect", "daemon"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=300, help=argparse.SUPPRESS)
    p.add_argument("--profile", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        return client_main(args)
    if args.record:
        return record()
    res = main_bench(args)
    write_result(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
