#!/usr/bin/env python3
"""Reaction on the real lab: from a caller's hang-up in a queue to the operator's phone ringing.

``callbackd run`` is attached to the lab (asterisk/callbackd-lab.toml with short abandons
counted, a one-beep whisper, one try per request and the abuse limits off). Nobody takes
calls in the ``sales`` queue (both operators are paused there only, so they stay free for
callbacks), and callers from numbers ending in 6 (the lab's PSTN answers those busy at
once, so each callback is over in about two seconds) ring ext 101 and hang up after 1 s.
For each abandoned call:

- t0: the ``Timestamp`` of its ``QueueCallerAbandon`` (Asterisk's clock, the host's);
- Originate sent: the daemon's ``operator.ringing`` log line, written as the Originate goes out;
- operator channel: the ``Newchannel`` of the ``cbd-`` channel (Asterisk took the Originate);
- INVITE: the operator phone's SIPp receives the INVITE (its message trace, enabled with
  ``CALLBACKD_LAB_SIPP_TRACE=1`` for this run).

Calls follow one another so that at every abandon at most one callback is still in flight:
an operator is always free. Holds the lab lock throughout.

    python bench/bench_reaction.py [--quick] [--calls N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

import structlog
from labdaemon import DaemonProcess

from bench.benchlib import bench_config, figure, lab, lab_call, lab_session, result, say, write_result
from callbackd.adapters.ami import AmiClient

TARGET_INVITE_P99_MS = 500.0
HANGUP_AFTER = 1.0
OPERATORS = ("op1", "op2")
# A SIPp message trace block: "----...---- 2026-11-23 03:22:51.600500" then "UDP message received".
TRACE_HEAD = re.compile(r"^-{10,} (\d{4}-\d\d-\d\d[ \t]\d\d:\d\d:\d\d\.\d+)\s*$", re.M)


def digits10(number: str) -> str:
    return re.sub(r"\D", "", number)[-10:]


def iso_epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def read_invites(path: Path, offset: int) -> dict[str, float]:
    """INVITEs the phone received after ``offset``: the caller's last 10 digits -> epoch seconds.

    SIPp stamps its trace in local time; datetime.timestamp() reads naive times as local too.
    """
    if not path.exists():
        return {}
    with path.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    out: dict[str, float] = {}
    heads = list(TRACE_HEAD.finditer(text))
    for i, head in enumerate(heads):
        body = text[head.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        if "message received" not in body[:80]:
            continue
        msg = body.split("\n", 2)[-1].lstrip()
        if not msg.startswith("INVITE "):
            continue
        frm = re.search(r"^From:.*?<sip:([^@>]+)", msg, re.M | re.I)
        if frm:
            at = datetime.strptime(head.group(1).replace("\t", " "), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            out.setdefault(digits10(frm.group(1)), at)
    return out


class Watch:
    """The lab's admin AMI connection: abandons and the callbacks' operator channels."""

    def __init__(self) -> None:
        self.abandons: dict[str, float] = {}
        self.channels: dict[str, float] = {}
        self.changed = threading.Condition()

    def __call__(self, ev: dict[str, str]) -> None:
        name = ev.get("Event")
        if name == "QueueCallerAbandon":
            with self.changed:
                self.abandons.setdefault(digits10(ev.get("CallerIDNum", "")), float(ev["Timestamp"]))
                self.changed.notify_all()
        elif name == "Newchannel" and ev.get("Uniqueid", "").startswith("cbd-"):
            self.channels.setdefault(ev["Uniqueid"], float(ev["Timestamp"]))


def daemon_config(tmp: Path) -> Path:
    return bench_config(
        tmp,
        replace={
            'short_abandon = "5s"': 'short_abandon = "0s"',
            "max_concurrent = 2": 'max_concurrent = 2\nwhisper_custom = ["beep"]',
            'delays = ["1h", "3h", "6h"]': 'delays = ["1h", "3h", "6h"]\nmax_attempts = 1',
        },
        extra="[limits]\nnew_requests_per_number = 0\nnew_requests_global = 0\nattempts_per_hour = 0\n",
    )


async def drive(
    daemon: DaemonProcess, watch: Watch, numbers: list[str], want: int
) -> tuple[list[str], list[str]]:
    """Place calls until ``want`` callers have abandoned; each call starts once the previous
    caller has abandoned and every callback but the previous one is over, so at the next
    abandon an operator is free. Returns the numbers called and those whose call failed."""
    calls: list[asyncio.Task[str]] = []
    placed: list[str] = []

    def abandoned() -> int:
        return sum(1 for n in placed if digits10(n) in watch.abandons)

    def outcomes() -> int:
        return len(daemon.events("attempt.outcome"))

    for number in numbers:
        if placed:
            prev, key = calls[-1], digits10(placed[-1])
            await wait_until(lambda p=prev, n=key: n in watch.abandons or p.done(), 30, "an abandon")
            if abandoned() >= want:
                break
            await wait_until(lambda: outcomes() >= abandoned() - 1, 60, "the callbacks before the next call")
        calls.append(asyncio.create_task(asyncio.to_thread(lab_call, number, "101", HANGUP_AFTER)))
        placed.append(number)
        if len(placed) % 25 == 0:
            say(f"    {len(placed)} calls placed")
    done = await asyncio.gather(*calls, return_exceptions=True)
    failed = [n for n, r in zip(placed, done, strict=True) if isinstance(r, BaseException)]
    for n, r in zip(placed, done, strict=True):
        if isinstance(r, BaseException):
            say(f"  the call from {n} failed: {r}")
    await wait_until(lambda: outcomes() >= abandoned(), 90, "the last callbacks")
    return placed, failed


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def run(n_calls: int) -> dict[str, Any]:
    # The bench's own AMI watcher logs nothing.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with lab_session() as status, tempfile.TemporaryDirectory(prefix="callbackd-reaction-") as tmp:
        state = Path(status.get("state_dir", "/run/callbackd-lab"))
        lab("operator", ",".join(OPERATORS), "answer", env={"CALLBACKD_LAB_SIPP_TRACE": "1"})
        traces = {op: state / "phones" / f"{op}.messages.log" for op in OPERATORS}
        offsets = {op: (p.stat().st_size if p.exists() else 0) for op, p in traces.items()}
        watch = Watch()
        watcher = AmiClient(
            host="127.0.0.1", port=5038, username="lab", secret="lab-admin-secret", on_event=watch
        )
        daemon = None
        try:
            for op in OPERATORS:
                lab("cli", "queue", "pause", "member", f"PJSIP/{op}", "queue", "sales", "reason", "bench")
            await watcher.start()
            daemon = DaemonProcess(daemon_config(Path(tmp)))
            await asyncio.to_thread(daemon.wait_for, "ami.resynced", 30)
            await asyncio.sleep(1)
            # Numbers ending in 6: the PSTN answers busy at once. A few spare for failed calls.
            spare = [f"202555{k:03d}6" for k in range(min(1000, n_calls + 20))]
            t0 = time.monotonic()
            numbers, failed = await drive(daemon, watch, spare, n_calls)
            took = time.monotonic() - t0
        finally:
            for op in OPERATORS:
                lab("cli", "queue", "unpause", "member", f"PJSIP/{op}", "queue", "sales")
            if daemon is not None:
                daemon.stop()
            await watcher.close()
        invites: dict[str, float] = {}
        for op, path in traces.items():
            invites.update(read_invites(path, offsets[op]))
        res = measure(daemon, watch, invites, numbers, took, status)
        res["details"]["failed_calls"] = failed
        return res


def measure(
    daemon: DaemonProcess,
    watch: Watch,
    invites: dict[str, float],
    numbers: list[str],
    took: float,
    status: dict,
) -> dict[str, Any]:
    ringing_events = daemon.events("operator.ringing")
    ringing = {digits10(e["number"]): iso_epoch(e["timestamp"]) for e in ringing_events}
    channel = {digits10(e["number"]): watch.channels.get(f"cbd-{e['attempt_id']}") for e in ringing_events}
    outcomes = sorted(iso_epoch(e["timestamp"]) for e in daemon.events("attempt.outcome"))
    started = sorted(ringing.values())
    to_originate, to_channel, to_invite, in_flight, missing = [], [], [], [], []
    for number in numbers:
        key = digits10(number)
        t0 = watch.abandons.get(key)
        if t0 is None or key not in ringing or key not in invites:
            missing.append(number)
            continue
        to_originate.append((ringing[key] - t0) * 1000)
        to_invite.append((invites[key] - t0) * 1000)
        if channel.get(key) is not None:
            to_channel.append((channel[key] - t0) * 1000)
        in_flight.append(sum(1 for t in started if t < t0) - sum(1 for t in outcomes if t < t0))
    if missing:
        say(f"  {len(missing)} call(s) without an abandon, an Originate or an INVITE: {missing[:5]}")
    over = f"{len(to_invite)} abandoned calls"
    figs = [
        figure(
            "reaction_originate_ms",
            "caller hang-up -> Originate sent",
            "ms",
            to_originate,
            p99=True,
            over=over,
        ),
        figure(
            "reaction_channel_ms",
            "caller hang-up -> operator channel created (Newchannel)",
            "ms",
            to_channel,
            p99=True,
            over=over,
        ),
        figure(
            "reaction_invite_ms",
            "caller hang-up -> INVITE at the operator's phone",
            "ms",
            to_invite,
            p99=True,
            target=("<", TARGET_INVITE_P99_MS),
            on="p99",
            over=over,
        ),
    ]
    res = result(
        "reaction",
        "Reaction on the lab",
        figs,
        calls=len(numbers),
        measured=len(to_invite),
        missing=missing,
        seconds=round(took, 1),
        hangup_after_s=HANGUP_AFTER,
        callbacks_in_flight_at_abandon_max=max(in_flight) if in_flight else None,
        outcomes={
            o: sum(1 for e in daemon.events("attempt.outcome") if e.get("outcome") == o)
            for o in {e.get("outcome") for e in daemon.events("attempt.outcome")}
        },
        asterisk=status.get("asterisk", {}).get("version"),
    )
    res["notes"].append(
        "Percentiles over the calls (min = fastest call); p50 is the median column."
        " Abandon time is Asterisk's QueueCallerAbandon Timestamp; Originate sent is the daemon's"
        " operator.ringing log time; the INVITE time is the operator SIPp's message trace; one host clock."
    )
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20 calls")
    p.add_argument("--calls", type=int, help="abandoned calls to measure (default 200, at most 980)")
    p.add_argument("--json", metavar="FILE", help="write the result here")
    args = p.parse_args()
    n = args.calls or (20 if args.quick else 200)
    if not 1 <= n <= 980:
        p.error("--calls must be 1 to 980")
    res = asyncio.run(run(n))
    write_result(res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
