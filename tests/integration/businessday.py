#!/usr/bin/env python3
"""A measured business day on the lab: an 8-hour day compressed into --minutes of wall time.

    python tests/integration/businessday.py                       # the full day: 30 minutes, dialer on
    python tests/integration/businessday.py --dialer both         # then the same day with the dialer off
    python tests/integration/businessday.py --minutes 4 --night 0.5   # a short check that it all runs

A command, not a test: it holds the lab (the lock the integration tests take) for the whole day.
The day, all of it drawn from --seed:

- night: web leads arrive over HTTP before the opening (called back from the opening on);
- day: callers ring the support (70 %) and sales queues following a two-peak daily curve; each
  hangs up after a patience drawn from a lognormal (median 14 s, about 4 % under the 5 s short-abandon line).
  The lab's queues answer a call at once, so the caller's hang-up time counts from the call's start:
  an operator who picks up at wait w talks for patience - w;
- about 14 % of the callers who hung up call again on their own a while later, unless a callback
  reached them first;
- every client's phone is scripted on the lab's PSTN: reached on try k with the field shares
  (80.5 / 12 / 4.5 / 2 / 1 % of those reached), or never (--never, 10 %), busy or not answering before;
- two operators (the lab's op1 and op2, or one with --operators 1), each paused in both queues
  for a break of a sixteenth of the day (half an hour of eight);
- the daemon's ladder is the default, compressed: +1 h, +3 h, +6 h become +1/16 of that each, and so
  do the waits after a busy line (10 min) and congestion (2 min).

Afterwards it reads the day with the product's own code (``callbackd report`` and ``--recovery``)
and replays it with ``callbackd simulate``; it prints and writes bench/out/businessday.json:
CAR, net lost rate, recovered by callback and by own call, the counterfactual with the dialer off
(measured with --dialer both; always also estimated from the day itself and predicted), and the
simulator's prediction of the net lost rate beside the measured one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from zoneinfo import ZoneInfo

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from labdaemon import DaemonProcess, lab_config  # noqa: E402
from soak import LAB, lab, lab_lock  # noqa: E402

from callbackd.domain.analytics import FIELD_REACH_SHARES  # noqa: E402

DAY_HOURS = 8
TOKEN = "businessday-token-0123456789abcdef"
# Relative call volume per hour of the day (09:00..17:00): a morning and an afternoon peak.
CURVE = (0.7, 1.3, 1.5, 1.0, 0.7, 1.1, 1.3, 0.8)
OWN_CALL_SHARE = 0.14
QUEUES = (("100", 0.7), ("101", 0.3))  # support, sales
LADDER_HOURS = (1, 3, 6)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Plan:
    """The day, drawn once from the seed, so the dialer-off run replays exactly the same day."""

    calls: list[tuple[float, str, str, float]]  # (offset s from opening, number, extension, patience s)
    leads: list[tuple[float, str]]  # (offset s before opening, number)
    scripts: dict[str, str]  # number -> PSTN script
    again: dict[str, float]  # number -> delay after its abandon before it calls again on its own
    breaks: list[tuple[str, float, float]]  # (operator, start offset s, length s), day seconds


def draw(seed: int, day: float, calls: int, leads: int, night: float, never: float, operators: int) -> Plan:
    rng = random.Random(seed)
    numbers = iter(f"+1202555{n:04d}" for n in rng.sample(range(2000, 9999), 2 * calls + leads + 20))
    peak = max(CURVE)
    rate = calls / (day * sum(CURVE) / len(CURVE))  # mean rate scaled so the day expects `calls`
    arrivals: list[float] = []
    t = 0.0
    while True:  # a non-homogeneous Poisson process by thinning
        t += rng.expovariate(rate * peak)
        if t >= day:
            break
        if rng.random() < CURVE[int(t / day * len(CURVE))] / peak:
            arrivals.append(t)
    plan = Plan([], [], {}, {}, [])
    tries = list(range(1, len(FIELD_REACH_SHARES) + 1))
    for at in arrivals:
        number = next(numbers)
        ext = "100" if rng.random() < QUEUES[0][1] else QUEUES[1][0]
        patience = max(1.0, min(60.0, rng.lognormvariate(math.log(14), 0.6)))
        plan.calls.append((at, number, ext, patience))
        if rng.random() < OWN_CALL_SHARE:
            plan.again[number] = rng.uniform(0.03, 0.12) * day
    for _ in range(leads):
        plan.leads.append((rng.uniform(0, night), next(numbers)))
    for number in [n for _, n, _, _ in plan.calls] + [n for _, n in plan.leads]:
        fail = [rng.choice(["busy", "noanswer"]) for _ in range(len(FIELD_REACH_SHARES))]
        if rng.random() < never:
            plan.scripts[number] = ",".join(fail)
        else:
            k = rng.choices(tries, weights=FIELD_REACH_SHARES)[0]
            plan.scripts[number] = ",".join([*fail[: k - 1], "answer"])
    length = day / 16
    for i, op in enumerate(("op1", "op2")[:operators]):
        plan.breaks.append((op, day * (i + 1) / (operators + 1) - length / 2, length))
    return plan


def day_config(work: Path, opening: datetime, minutes: int, http_port: int, dialer: bool) -> Path:
    k = DAY_HOURS * 60 / minutes  # wall seconds per day second
    delays = json.dumps([f"{h * 3600 / k:.0f}s" for h in LADDER_HOURS])
    close = opening + timedelta(minutes=minutes)
    hours = f"{opening:%H:%M}-{close:%H:%M}" if close.date() == opening.date() else f"{opening:%H:%M}-24:00"
    extra = f"""
[http]
enabled = true
host = "127.0.0.1"
port = {http_port}
token = "{TOKEN}"

[limits]
new_requests_per_number = 0
new_requests_global = 0
attempts_per_hour = 0
"""
    return lab_config(
        work,
        extra=extra,
        replace={
            # The whole ladder compressed: its rungs, the opening spread, and the waits after a
            # busy line (10 min) or congestion (2 min), which replace the rung after those outcomes.
            'delays = ["1h", "3h", "6h"]': f'delays = {delays}\nopening_spread = "{300 / k:.0f}s"\n'
            f'outcome_delays = {{ busy = "{600 / k:.0f}s", congestion = "{120 / k:.0f}s" }}',
            # The business hours only: the clients' window stays round the clock (it is read in each
            # client's own zone, so the day's UTC window there would never meet the business hours).
            '[schedule.hours]\n"mon-sun" = "00:00-24:00"': f'[schedule.hours]\n"mon-sun" = "{hours}"',
            'operator_ring = "10s"': 'operator_ring = "6s"',
            'client_ring = "15s"': 'client_ring = "5s"',
            # Dialer off: callbacks ring only members of a queue nobody is in, so none is ever made.
            'queues = ["support"]': 'queues = ["support"]' if dialer else 'queues = ["nobody-home"]',
            "max_concurrent = 2": 'max_concurrent = 2\nwhisper_custom = ["beep"]',
        },
    )


@dataclass
class Day:
    plan: Plan
    work: Path
    minutes: int
    night: float  # wall seconds before the opening
    dialer: bool
    daemon: DaemonProcess | None = None
    placed: int = 0
    own_calls: int = 0
    leads_ok: int = 0
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.work / "callbackd.db"

    async def call(self, number: str, ext: str, patience: float) -> None:
        args = [*LAB, "call", "--from", number.removeprefix("+1"), "--to", ext]
        args += ["--hangup-after", f"{patience:.1f}", "--background"]
        await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=60, check=True)
        self.placed += 1

    def reached(self, number: str) -> bool:
        con = sqlite3.connect(self.db, timeout=30)
        try:
            row = con.execute(
                "SELECT count(*) FROM requests WHERE number = ? AND status IN ('reached', 'recovered')",
                (number,),
            ).fetchone()
            return bool(row[0])
        finally:
            con.close()

    async def call_again(self, number: str, ext: str, delay: float, patience: float, close: float) -> None:
        await asyncio.sleep(delay)
        if time.monotonic() < close and not await asyncio.to_thread(self.reached, number):
            await self.call(number, ext, patience)
            self.own_calls += 1

    def lead(self, number: str, port: int) -> None:
        body = json.dumps({"phone": number, "name": "Night Lead", "id": uuid.uuid4().hex}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/callbacks",
            data=body,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                self.leads_ok += res.status in (200, 201, 202)
        except (urllib.error.URLError, OSError) as exc:  # refused or not answered: counted as not accepted
            print(f"lead {number}: {exc}", file=sys.stderr)

    async def breaks(self, t0: float, k: float) -> None:
        async def one(op: str, start: float, length: float) -> None:
            await asyncio.sleep(max(0.0, t0 + start / k - time.monotonic()))
            await asyncio.to_thread(pause, op, True)
            await asyncio.sleep(length / k)
            await asyncio.to_thread(pause, op, False)

        await asyncio.gather(*(one(op, s, n) for op, s, n in self.plan.breaks))

    async def run(self) -> tuple[datetime, datetime, datetime]:
        """Night, day, then a short settle; returns (night start, opening, close)."""
        k = DAY_HOURS * 60 / self.minutes
        port = free_port()
        for number, script in self.plan.scripts.items():
            await asyncio.to_thread(lab, "pstn", number, script)
        night_start = datetime.now(UTC)
        opening = (night_start + timedelta(seconds=self.night + 59)).replace(second=0, microsecond=0)
        close = opening + timedelta(minutes=self.minutes)
        config = day_config(self.work, opening, self.minutes, port, self.dialer)
        self.daemon = DaemonProcess(config, log_file=self.work / "daemon.log")
        try:
            self.daemon.wait_for("ami.resynced", timeout=60)
            t_night = time.monotonic()
            night = (opening - datetime.now(UTC)).total_seconds() * 0.8
            for offset, number in sorted(self.plan.leads):  # the night's leads, spread over most of it
                await asyncio.sleep(
                    max(0.0, t_night + offset / max(self.night, 1.0) * night - time.monotonic())
                )
                await asyncio.to_thread(self.lead, number, port)
            await asyncio.sleep(max(0.0, (opening - datetime.now(UTC)).total_seconds()))
            t0 = time.monotonic()
            end = t0 + self.minutes * 60
            breaks = asyncio.create_task(self.breaks(t0, k))
            for at, number, ext, patience in self.plan.calls:
                await asyncio.sleep(max(0.0, t0 + at / k - time.monotonic()))
                await self.call(number, ext, patience)
                if number in self.plan.again:
                    delay = patience + self.plan.again[number] / k
                    self.tasks.append(asyncio.create_task(self.call_again(number, ext, delay, patience, end)))
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            await breaks
            for t in self.tasks:
                t.cancel()
            await self.settle()
        finally:
            self.daemon.stop()
        return night_start, opening, close

    async def settle(self, timeout: float = 90) -> None:
        """Calls and callbacks still up at the close finish; nothing new is dialled after hours."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(3)
            con = sqlite3.connect(self.db, timeout=30)
            try:
                flying = con.execute("SELECT count(*) FROM attempts WHERE status = 'dialling'").fetchone()[0]
            finally:
                con.close()
            running = json.loads(lab("status", "--json", check=False) or "{}").get("calls", [])
            if not flying and not running:
                return


def pause(op: str, on: bool) -> None:
    for queue in ("support", "sales"):
        lab("cli", f"queue {'pause' if on else 'unpause'} member PJSIP/{op} queue {queue}")


def lab_default() -> None:
    """The lab's default state: every phone answers, no PSTN scripts, nobody paused."""
    lab("operator", "op1,op2", "answer")
    lab("pstn", "--reset")
    lab("pstn", "--ring", "0.5")
    lab("pstn", "--talk", "3")
    for op in ("op1", "op2"):
        pause(op, False)


def rota(plan: Plan, opening: datetime, k: float, tz: str) -> list[tuple[dtime, dtime]]:
    """The day's breaks as ``callbackd simulate --breaks`` takes them: wall-clock spans in the
    schedule's time zone (the database records who answered, not who was paused)."""
    zone = ZoneInfo(tz)
    spans = []
    for _op, start, length in plan.breaks:
        a = (opening + timedelta(seconds=start / k)).astimezone(zone)
        b = (opening + timedelta(seconds=(start + length) / k)).astimezone(zone)
        spans.append((a.timetz().replace(tzinfo=None), b.timetz().replace(tzinfo=None)))
    return spans


async def measure(
    config: Path,
    start: datetime,
    end: datetime,
    runs: int,
    seed: int,
    breaks: list[tuple[dtime, dtime]],
    now: datetime,
) -> dict:
    """The day as ``callbackd report --recovery`` and ``callbackd simulate --breaks`` see it,
    read at *now* (after the close: nothing is dialled until the next day's opening)."""
    from callbackd import config as config_mod
    from callbackd import whatif
    from callbackd.adapters import db, reports

    cfg = config_mod.load(str(config))
    settings = reports.ReportSettings.from_config(cfg)
    engine = db.make_engine(cfg.database.url)
    try:
        rep = await reports.build_report(engine, start, end, by=None, tz=UTC, thresholds=settings.thresholds)
        rec = await reports.build_recovery(engine, start, end, thresholds=settings.thresholds)
        # Without the callbacks: the lost calls whose clients no answered inbound call reached later.
        async with engine.connect() as conn:
            calls = [c async for b in reports.call_batches(conn, start, end) for c in b]
    finally:
        await engine.dispose()
    answered: dict[str, list[datetime]] = {}
    for c in calls:
        if c.answered and c.number:
            answered.setdefault(c.number, []).append(c.answered_at)
    short = settings.thresholds.short_abandon.total_seconds()
    lost = [
        c
        for c in calls
        if not c.answered
        and (
            (c.hold_time if c.hold_time is not None else (c.ended_at - c.started_at).total_seconds()) >= short
        )
    ]
    # An upper estimate: with the dialer on, a client a callback reached did not call again.
    own_only = sum(1 for c in lost if not any(t > c.started_at for t in answered.get(c.number or "", [])))
    sim = await whatif.run(cfg, start, end, whatif.Changes(), runs=runs, seed=seed, now=now, breaks=breaks)
    # The same replay with every try drawn from the per-try reach, none kept as it went: how much
    # of the prediction the clients' own stored tries carry.
    drawn = await whatif.run(
        cfg, start, end, whatif.Changes(), runs=runs, seed=seed, now=now, breaks=breaks, per_client=False
    )
    t = rep.total
    counted = t.offered - t.short_abandoned
    return {
        "offered": t.offered,
        "short_abandoned": t.short_abandoned,
        "abandoned": t.abandoned,
        "car": t.car,
        "net_lost": t.net_lost,
        "net_lost_rate": t.net_lost_rate,
        "net_to_car": (t.net_lost_rate / t.car) if t.car else None,
        "asa_s": t.asa,
        "requests": rec.total.requests,
        "reached_by_callback": rec.total.reached_by_callback,
        "recovered_by_own_call": rec.total.recovered_by_client,
        "reach_share_by_try": rec.total.reach_share_by_try,
        "first_try_median_s": rec.total.first_attempt_median,
        "callback_wait_median_s": rec.total.callback_wait_median,
        "dialer_off_estimate": {
            "net_lost": own_only,
            "net_lost_rate": own_only / counted if counted else None,
        },
        "simulated": sim,
        "simulated_every_try_drawn": drawn,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=int, default=30, help="wall minutes of the 8-hour day (default 30)")
    p.add_argument("--night", type=float, default=1.0, help="wall minutes of night before it, for the leads")
    p.add_argument("--calls", type=float, default=6.0, help="offered calls per wall minute on average")
    p.add_argument(
        "--leads", type=int, default=None, help="web leads at night (default: a tenth of the calls)"
    )
    p.add_argument("--operators", type=int, choices=[1, 2], default=2)
    p.add_argument("--never", type=float, default=0.10, help="share of clients no callback ever reaches")
    p.add_argument("--dialer", choices=["on", "off", "both"], default="on")
    # Replays are cheap (2,000 of a day in 10 s) and the mean of 100 is off by about 0.1 points of
    # net lost rate (4 % of a 2.4 % rate) from Monte Carlo noise alone, too coarse for a ±20 % check.
    p.add_argument("--runs", type=int, default=2000, help="simulator runs")
    p.add_argument("--seed", type=int, default=20261130)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "out" / "businessday.json")
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="read the days stored under --work by an earlier run of the same arguments again "
        "(its --output holds their opening and close) with this code's report and simulator",
    )
    args = p.parse_args()
    day = args.minutes * 60.0
    calls = round(args.calls * args.minutes)
    leads = args.leads if args.leads is not None else max(1, calls // 10)
    plan = draw(args.seed, DAY_HOURS * 3600.0, calls, leads, args.night * 60, args.never, args.operators)
    work = args.work or Path(f"/tmp/callbackd-businessday-{os.getpid()}")
    out: dict = {
        "seed": args.seed,
        "minutes": args.minutes,
        "compression": DAY_HOURS * 3600 / day,
        "operators": args.operators,
        "planned_calls": len(plan.calls),
        "planned_leads": len(plan.leads),
        "days": {},
    }
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.dialer]
    k = DAY_HOURS * 60 / args.minutes
    if args.remeasure:
        if args.work is None:
            p.error("--remeasure needs the --work of the earlier run")
        before = json.loads(args.output.read_text())
        for dialer in modes:
            name = "dialer on" if dialer else "dialer off"
            figures = before["days"][name]
            day_work = work / ("dialer-on" if dialer else "dialer-off")
            opening = datetime.fromisoformat(figures["opening"])
            close = datetime.fromisoformat(figures["close"])
            # The night began a little before the opening; nothing was stored before the daemon ran.
            night_start = datetime.fromisoformat(figures.get("night_start") or figures["opening"]) - (
                timedelta(0) if "night_start" in figures else timedelta(minutes=args.night + 1)
            )
            read_at = datetime.fromisoformat(figures.get("read_at") or figures["close"]) + (
                timedelta(0) if "read_at" in figures else timedelta(minutes=2)
            )
            tz = config_tz(day_work / "callbackd.toml")
            breaks = rota(plan, opening, k, tz)
            figures.update(
                asyncio.run(
                    measure(
                        day_work / "callbackd.toml", night_start, close, args.runs, args.seed, breaks, read_at
                    )
                )
            )
            out["days"][name] = figures
        return finish(out, args.output)
    # A SIGTERM (a timeout, a service stop) still runs the clean-up that puts the lab back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with lab_lock():
        lab("up")  # the lab is shared: it is left up afterwards, in its default state
        try:
            for dialer in modes:
                lab_default()
                if args.operators == 1:
                    pause("op2", True)
                d = Day(
                    plan,
                    work / ("dialer-on" if dialer else "dialer-off"),
                    args.minutes,
                    args.night * 60,
                    dialer,
                )
                d.work.mkdir(parents=True, exist_ok=True)
                started = time.time()
                night_start, opening, close = asyncio.run(d.run())
                # The day's calls and the night's leads; figures over what happened until the close.
                read_at = datetime.now(UTC)
                config = d.work / "callbackd.toml"
                breaks = rota(plan, opening, k, config_tz(config))
                figures = asyncio.run(
                    measure(config, night_start, close, args.runs, args.seed, breaks, read_at)
                )
                figures.update(
                    night_start=night_start.isoformat(),
                    read_at=read_at.isoformat(),
                    placed=d.placed,
                    own_calls_placed=d.own_calls,
                    leads_accepted=d.leads_ok,
                    opening=opening.isoformat(),
                    close=close.isoformat(),
                    wall_seconds=round(time.time() - started, 1),
                )
                out["days"]["dialer on" if dialer else "dialer off"] = figures
        finally:
            lab_default()
    return finish(out, args.output)


def config_tz(config: Path) -> str:
    from callbackd import config as config_mod

    return config_mod.load(str(config)).schedule.timezone


def finish(out: dict, output: Path) -> int:
    on = out["days"].get("dialer on")
    if on:
        predicted = on["simulated"]["scenarios"]["as stored"]["net_lost_rate"]["mean"]
        measured = on["net_lost_rate"]
        drawn = on["simulated_every_try_drawn"]["scenarios"]["as stored"]["net_lost_rate"]["mean"]
        out["summary"] = {
            "car": on["car"],
            "net_lost_rate": measured,
            "net_to_car": on["net_to_car"],
            "target_net_to_car_at_most": 0.3,
            "predicted_net_lost_rate": predicted,
            "prediction_error": (predicted - measured) / measured
            if measured and predicted is not None
            else None,
            "predicted_car": on["simulated"]["scenarios"]["as stored"]["car"]["mean"],
            "predicted_net_lost_rate_every_try_drawn": drawn,
            "prediction_error_every_try_drawn": (drawn - measured) / measured
            if measured and drawn is not None
            else None,
            "dialer_off_measured": (out["days"].get("dialer off") or {}).get("net_lost_rate"),
            "dialer_off_estimated": on["dialer_off_estimate"]["net_lost_rate"],
            "dialer_off_predicted": on["simulated"]["scenarios"]["dialer off"]["net_lost_rate"]["mean"],
        }
        off = out["days"].get("dialer off")
        if off:  # the simulator on the other day: its queue alone, nothing called back
            alone = off["simulated"]["scenarios"]["dialer off"]
            out["summary"]["dialer_off_day"] = {
                "car": off["car"],
                "predicted_car": alone["car"]["mean"],
                "net_lost_rate": off["net_lost_rate"],
                "predicted_net_lost_rate": alone["net_lost_rate"]["mean"],
            }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
