#!/usr/bin/env python3
"""Scale on the real lab: bursts of abandoned calls with N operators answering the callbacks.

Holds the lab lock throughout: ``asterisk/lab up --restart --operators N`` (op1 and op2 as
usual, op3..opN answering at one SIPp, all of them in the support queue), then
``callbackd run`` with the lab's configuration and ``max_concurrent = N`` (short abandons
counted, one try per request, the abuse limits off, as in bench_reaction.py). Callers ring
ext 101 (the sales queue, whose only members op1 and op2 are paused there) and hang up after
1 s: an abandon. They come in bursts of 50 within 5 s (one SIPp per burst, 10 calls/s), a
burst every ``--every`` seconds. Their numbers end in 6, which the lab's PSTN answers busy at
once, so a callback is over about two seconds after the operator answers.

Figures: abandon (QueueCallerAbandon Timestamp) -> INVITE at the operator's SIPp (message
trace), over the calls that found an operator free (fewer callbacks in flight and callers
queued ahead of it than operators) and over all; callbacks in flight at peak
(Originates sent minus outcomes); claim latency (request.stored -> operator.ringing, the
daemon's own log times); event lag (Asterisk's Hangup of the caller -> the daemon's
call.missed log line); daemon CPU and RSS (sampled every second); double dials (numbers the
PSTN received more than one INVITE for, from its log) and lost calls (abandons with no
callback). At the end the default lab is restored (``asterisk/lab up --restart``).

    python bench/bench_scale.py --operators 100 --calls 1000 --every 30 [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

import structlog
from labdaemon import DaemonProcess

from bench.bench_reaction import digits10, iso_epoch, read_invites
from bench.benchlib import (
    ROOT,
    bench_config,
    lab,
    lab_lock,
    lab_status,
    percentile,
    proc_cpu_seconds,
    proc_rss_mb,
    say,
)
from callbackd.adapters.ami import AmiClient

BURST = 50
BURST_RATE = 10  # calls per second: 50 within 5 s
HANGUP_AFTER_MS = 1000
STATE = Path("/run/callbackd-lab")
TARGET_INVITE_P99_MS = 100.0


class Watch:
    """The lab's admin AMI connection: abandons and the callers' hang-ups."""

    def __init__(self) -> None:
        self.abandons: dict[str, float] = {}
        self.hangups: dict[str, float] = {}
        self.operator_legs_ended: dict[str, float] = {}  # cbd-<attempt id> -> its Hangup
        self.lock = threading.Lock()

    def __call__(self, ev: dict[str, str]) -> None:
        name = ev.get("Event")
        if name == "QueueCallerAbandon":
            with self.lock:
                self.abandons.setdefault(digits10(ev.get("CallerIDNum", "")), float(ev["Timestamp"]))
        elif name == "Hangup" and ev.get("Uniqueid", "").startswith("cbd-"):
            with self.lock:
                self.operator_legs_ended.setdefault(ev["Uniqueid"], float(ev["Timestamp"]))
        elif (
            name == "Hangup" and ev.get("Context") == "from-pstn" and ev.get("Uniqueid") == ev.get("Linkedid")
        ):
            with self.lock:
                self.hangups.setdefault(digits10(ev.get("CallerIDNum", "")), float(ev["Timestamp"]))


def daemon_config(tmp: Path, operators: int) -> Path:
    return bench_config(
        tmp,
        replace={
            'short_abandon = "5s"': 'short_abandon = "0s"',
            "max_concurrent = 2": f'max_concurrent = {operators}\nwhisper_custom = ["beep"]',
            'delays = ["1h", "3h", "6h"]': 'delays = ["1h", "3h", "6h"]\nmax_attempts = 1',
        },
        extra="[limits]\nnew_requests_per_number = 0\nnew_requests_global = 0\nattempts_per_hour = 0\n",
    )


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def burst_scenario(tmp: Path) -> Path:
    """The lab's caller scenario with each call's number from the injection file."""
    text = (ROOT / "asterisk" / "sipp" / "caller.xml").read_text()
    path = tmp / "burst-caller.xml"
    path.write_text(text.replace("[from]", "[field0]").replace("[name]", "Caller"))
    return path


def place_burst(scenario: Path, numbers: list[str], tmp: Path, index: int) -> subprocess.Popen:
    inf = tmp / f"burst-{index}.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
    cmd = ["sipp", "127.0.0.1:5070", "-sf", str(scenario), "-s", "101", "-inf", str(inf)]
    cmd += ["-i", "127.0.0.1", "-p", str(free_udp_port()), "-m", str(len(numbers)), "-r", str(BURST_RATE)]
    cmd += ["-l", str(len(numbers)), "-recv_timeout", str(HANGUP_AFTER_MS), "-nostdin", "-timeout", "120s"]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def pstn_invites(offset: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    path = STATE / "pstn-calls.log"
    with path.open("rb") as fh:
        fh.seek(offset)
        for line in fh.read().decode(errors="replace").splitlines():
            with_json = line.strip()
            if not with_json.startswith("{"):
                continue
            rec = json.loads(with_json)
            if rec.get("event") == "invite":
                key = digits10(rec.get("number", ""))
                counts[key] = counts.get(key, 0) + 1
    return counts


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def run(operators: int, calls: int, every: float, restore_with: str | None = None) -> dict[str, Any]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with lab_lock(), tempfile.TemporaryDirectory(prefix="callbackd-scale-") as tmpname:
        tmp = Path(tmpname)
        try:
            t0 = time.monotonic()
            lab("up", "--restart", "--operators", str(operators), env={"CALLBACKD_LAB_SIPP_TRACE": "1"})
            say(f"  lab up with {operators} operators in {time.monotonic() - t0:.1f} s")
            return await measure_run(operators, calls, every, tmp)
        finally:
            t0 = time.monotonic()
            if restore_with:  # the checkout the lab was started from (its configs and scenarios)
                subprocess.run(  # noqa: ASYNC221 - nothing else runs on the loop by now
                    [sys.executable, restore_with, "up", "--restart"],
                    env={**os.environ, "CALLBACKD_LAB_SIPP_TRACE": ""},
                    check=True,
                    capture_output=True,
                )
            else:
                lab("up", "--restart", env={"CALLBACKD_LAB_SIPP_TRACE": ""})
            say(f"  default lab restored in {time.monotonic() - t0:.1f} s")


async def measure_run(operators: int, calls: int, every: float, tmp: Path) -> dict[str, Any]:
    status = lab_status()
    traces = [STATE / "phones" / f"{op}.messages.log" for op in ("op1", "op2", "ops")]
    offsets = {p: size(p) for p in traces}
    pstn_offset = size(STATE / "pstn-calls.log")
    watch = Watch()
    watcher = AmiClient(
        host="127.0.0.1", port=5038, username="lab", secret="lab-admin-secret", on_event=watch
    )
    daemon = None
    samples: list[tuple[float, float, float]] = []  # (monotonic, cpu seconds, rss MB)
    numbers = [f"202555{k:03d}6" for k in range(calls)]
    try:
        for op in ("op1", "op2"):
            lab("cli", "queue", "pause", "member", f"PJSIP/{op}", "queue", "sales", "reason", "bench")
        await watcher.start()
        daemon = DaemonProcess(daemon_config(tmp, operators))
        await asyncio.to_thread(daemon.wait_for, "ami.resynced", 60)
        await asyncio.sleep(2)
        pid = daemon.proc.pid
        scenario = burst_scenario(tmp)
        procs: list[subprocess.Popen] = []
        start = time.monotonic()
        next_burst = start
        bursts = [numbers[i : i + BURST] for i in range(0, len(numbers), BURST)]
        sampled = start - 1
        for index, group in enumerate(bursts):
            while time.monotonic() < next_burst:
                if time.monotonic() - sampled >= 1:
                    sampled = time.monotonic()
                    samples.append((sampled, proc_cpu_seconds(pid), proc_rss_mb(pid)))
                await asyncio.sleep(0.05)
            procs.append(place_burst(scenario, group, tmp, index))
            say(f"    burst {index + 1}/{len(bursts)}, {len(group)} calls, {time.monotonic() - start:.0f} s")
            next_burst += every
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if time.monotonic() - sampled >= 1:
                sampled = time.monotonic()
                samples.append((sampled, proc_cpu_seconds(pid), proc_rss_mb(pid)))
            outcomes = len(daemon.events("attempt.outcome"))
            if all(p.poll() is not None for p in procs) and outcomes >= len(watch.abandons):
                break
            await asyncio.sleep(0.2)
        took = time.monotonic() - start
        await asyncio.sleep(3)
    finally:
        for op in ("op1", "op2"):
            lab("cli", "queue", "unpause", "member", f"PJSIP/{op}", "queue", "sales")
        if daemon is not None:
            daemon.stop()
        await watcher.close()
    invites: dict[str, float] = {}
    for p in traces:
        invites.update(read_invites(p, offsets[p]))
    return figures(
        operators, calls, every, daemon, watch, invites, pstn_invites(pstn_offset), samples, took, status
    )


def figures(
    operators: int,
    calls: int,
    every: float,
    daemon: Any,
    watch: Watch,
    invites: dict[str, float],
    pstn: dict[str, int],
    samples: list[tuple[float, float, float]],
    took: float,
    status: dict,
) -> dict[str, Any]:
    ringing_ev = daemon.events("operator.ringing")
    ringing = {digits10(e["number"]): iso_epoch(e["timestamp"]) for e in ringing_ev}
    ring_by_request = {e["request_id"]: iso_epoch(e["timestamp"]) for e in ringing_ev}
    stored = {e["request_id"]: iso_epoch(e["timestamp"]) for e in daemon.events("request.stored")}
    missed_log = {
        digits10(e.get("number", "")): iso_epoch(e["timestamp"]) for e in daemon.events("call.missed")
    }
    # An operator is busy from the Originate to the Hangup of its leg (the outcome is logged
    # before Asterisk has hung the operator up and told the queue).
    ended_at = {e["attempt_id"]: iso_epoch(e["timestamp"]) for e in daemon.events("attempt.outcome")}
    ended_at.update({k[4:]: t for k, t in watch.operator_legs_ended.items()})
    outcomes = sorted(ended_at.values())
    started = sorted(ringing.values())

    def in_flight(at: float) -> int:
        return sum(1 for t in started if t < at) - sum(1 for t in outcomes if t < at)

    def queued_ahead(at: float) -> int:
        """Callers who hung up before ``at`` whose callback had not started: a freed operator goes
        to the oldest of them first, so a caller behind them has no operator free for it."""
        return sum(1 for k, t in watch.abandons.items() if t < at and ringing.get(k, float("inf")) >= at)

    free_ms, all_ms, lost = [], [], []
    for key in map(digits10, [f"202555{k:03d}6" for k in range(calls)]):
        t0 = watch.abandons.get(key)
        if t0 is None:
            continue
        if key not in invites:
            lost.append(key)
            continue
        ms = (invites[key] - t0) * 1000
        all_ms.append(ms)
        if in_flight(t0) + queued_ahead(t0) < operators:
            free_ms.append(ms)
    peak = max((in_flight(t) for t in started), default=0) + (1 if started else 0)
    claim_ms = [(ring_by_request[r] - stored[r]) * 1000 for r in ring_by_request if r in stored]
    lag_ms = [(missed_log[k] - watch.hangups[k]) * 1000 for k in missed_log if k in watch.hangups]
    cpu = [(c2 - c1) / (t2 - t1) * 100 for (t1, c1, _), (t2, c2, _) in itertools.pairwise(samples) if t2 > t1]
    rss = [r for _, _, r in samples]
    doubles = {k: n for k, n in pstn.items() if n > 1}

    def stats(values: list[float]) -> dict[str, float | None]:
        if not values:
            return {"n": 0, "p50": None, "p99": None, "max": None}
        return {
            "n": len(values),
            "p50": round(statistics.median(values), 1),
            "p99": round(percentile(values, 99), 1),
            "max": round(max(values), 1),
        }

    return {
        "operators": operators,
        "calls": calls,
        "burst": BURST,
        "every_s": every,
        "seconds": round(took, 1),
        "abandoned": len(watch.abandons),
        "callbacks": len(ringing),
        "invite_free_ms": stats(free_ms),
        "invite_all_ms": stats(all_ms),
        "in_flight_peak": peak,
        "claim_ms": stats(claim_ms),
        "event_lag_ms": stats(lag_ms),
        "cpu_pct": stats(cpu),
        "rss_mb": stats(rss),
        "double_dials": len(doubles),
        "double_dialled": sorted(doubles)[:10],
        "lost": len(lost),
        "lost_numbers": lost[:10],
        "pstn_invites": sum(pstn.values()),
        "target_invite_p99_ms": TARGET_INVITE_P99_MS,
        "asterisk": status.get("asterisk", {}).get("version"),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--operators", type=int, default=100)
    p.add_argument("--calls", type=int, default=1000, help="at most 1000 (numbers 202555xxx6)")
    p.add_argument("--every", type=float, default=30.0, help="seconds between bursts (1000 calls: 20 bursts)")
    p.add_argument("--json", metavar="FILE", help="append the result to this JSON list file")
    p.add_argument(
        "--restore-with", metavar="LAB_TOOL", help="asterisk/lab of the checkout the lab came from"
    )
    args = p.parse_args()
    if not 1 <= args.calls <= 1000:
        p.error("--calls must be 1 to 1000")
    res = asyncio.run(run(args.operators, args.calls, args.every, args.restore_with))
    print(json.dumps(res, indent=2))
    if args.json:
        path = Path(args.json)
        runs = json.loads(path.read_text()) if path.exists() else []
        runs = [r for r in runs if (r["operators"], r["calls"]) != (res["operators"], res["calls"])] + [res]
        path.write_text(json.dumps(sorted(runs, key=lambda r: (r["operators"], r["calls"])), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
