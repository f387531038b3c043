#!/usr/bin/env python3
"""Soak: random inbound traffic and web leads on the lab while the daemon is killed, Asterisk and
Mosquitto are restarted, the database goes away (SQLite: locked for 40 s by another connection;
PostgreSQL: ALLOW_CONNECTIONS false and its sessions killed, for 40 s), the AMI link is cut right after
an Originate's ack, and a second daemon on the same database dials too while an admin cancels and
retries requests that ring; then an invariant checker over what happened.

    python tests/integration/soak.py --calls 500 --kills 10                  # the full soak (about 15 min)
    python tests/integration/soak.py --calls 500 --kills 10 --database postgresql
    tests/integration/test_soak.py                              # the CI-sized one, through pytest

The checker reads three independent records: an AMI connection of its own (the lab's admin user),
the daemon's JSON logs (every process, killed ones included) and the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from amiproxy import AmiProxy  # noqa: E402
from labdaemon import DaemonProcess, cli, lab_config  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from dbfaults import SqliteLock, pg_outage  # noqa: E402

from callbackd.adapters.ami import AmiClient  # noqa: E402
from callbackd.domain.calendar import BusinessCalendar  # noqa: E402

LAB = [sys.executable, str(ROOT / "asterisk" / "lab")]
LOCK_PATH = Path("/run/callbackd-lab.tests.lock")
MAX_ATTEMPTS = 3
SHORT = 3  # seconds: short_abandon in the soak's config
POOL = [f"+1202555{n:04d}" for n in range(100, 200)]  # 202-555-0100..0199
MQTT_PORT = 1883


def hours_spec() -> dict[str, list[str]]:
    """Open two minutes, closed one, all day: attempts cross many openings and closings."""
    spans = []
    for minute in range(0, 24 * 60, 3):
        start, end = minute, minute + 2
        spans.append(
            f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}" if end < 1440 else ""
        )
    return {"mon-sun": [s for s in spans if s]}


def soak_config(work: Path, topic: str, db_url: str | None = None) -> Path:
    hours = json.dumps(hours_spec()["mon-sun"])
    extra = f"""
[http]
enabled = true
host = "127.0.0.1"
port = 18381
token = "soak-token-0123456789abcdef"

[mqtt]
enabled = true
host = "127.0.0.1"
port = {MQTT_PORT}
topic = "{topic}/leads"
reply_topic = "{topic}/reply"
client_id = "callbackd-soak"

[limits]
new_requests_per_number = 50
new_requests_global = 5000
attempts_per_hour = 5000
"""
    return lab_config(
        work,
        db_url=db_url,
        extra=extra,
        replace={
            'delays = ["1h", "3h", "6h"]': (
                f'delays = ["2s", "4s"]\nmax_attempts = {MAX_ATTEMPTS}\nopening_spread = "10s"'
                # Busy and congested clients on the soak's short ladder too, not 10 and 2 minutes later.
                '\noutcome_delays = { busy = "ladder", congestion = "ladder" }'
            ),
            'short_abandon = "5s"': f'short_abandon = "{SHORT}s"',
            # Business hours only; the clients' window (read in each client's zone) stays round the clock.
            '[schedule.hours]\n"mon-sun" = "00:00-24:00"': f'[schedule.hours]\n"mon-sun" = {hours}',
            'operator_ring = "10s"': 'operator_ring = "6s"',
            'client_ring = "15s"': 'client_ring = "6s"',
        },
    )


def lab(*args: str, check: bool = True) -> str:
    res = subprocess.run([*LAB, *args], capture_output=True, text=True, timeout=600)
    if check and res.returncode != 0:
        raise RuntimeError(f"asterisk/lab {' '.join(args)}: {res.stdout}{res.stderr}")
    return res.stdout


@dataclass
class Record:
    events: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    daemons: list[DaemonProcess] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)  # wall times
    asterisk_restarts: list[float] = field(default_factory=list)
    mosquitto_restarts: int = 0
    db_outages: list[tuple[float, float]] = field(default_factory=list)  # wall times
    calls_placed: int = 0
    leads_ok: list[dict] = field(default_factory=list)
    leads_sent: int = 0


class Soak:
    def __init__(
        self,
        work: Path,
        calls: int,
        kills: int,
        asterisk_restarts: int,
        seed: int,
        *,
        pg_url: str | None = None,
        outage: float = 40.0,
    ) -> None:
        self.work = work
        self.calls = calls
        self.kills = kills
        self.asterisk_restarts = asterisk_restarts
        self.rng = random.Random(seed)
        self.topic = f"callbackd-soak/{uuid.uuid4().hex[:8]}"
        self.pg_url = pg_url  # None: SQLite in the work directory
        self.outage_s = outage
        self.config = soak_config(work, self.topic, pg_url)
        self.db_path = work / "callbackd.db"  # with PostgreSQL: a copy made for the checker
        self.rec = Record()
        self.daemon: DaemonProcess | None = None
        self.sipp: list[subprocess.Popen[str]] = []

    # -- the daemon ----------------------------------------------------------------

    def start_daemon(self) -> None:
        d = DaemonProcess(self.config, log_file=self.work / f"daemon-{len(self.rec.daemons) + 1}.log")
        self.rec.daemons.append(d)
        self.daemon = d
        d.wait_for("ami.resynced", timeout=60)

    def kill_daemon(self) -> None:
        assert self.daemon is not None
        self.rec.kills.append(time.time())
        self.daemon.kill()

    # -- faults ----------------------------------------------------------------------

    async def restart_asterisk(self) -> None:
        self.rec.asterisk_restarts.append(time.time())
        await asyncio.to_thread(lab, "up", "--restart")

    async def restart_mosquitto(self) -> None:
        def restart() -> None:
            subprocess.run(["pkill", "-x", "mosquitto"], check=False)
            for _ in range(50):
                if subprocess.run(["pgrep", "-x", "mosquitto"], capture_output=True).returncode != 0:
                    break
                time.sleep(0.1)
            time.sleep(1)
            subprocess.run(["mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf"], check=True)

        await asyncio.to_thread(restart)
        self.rec.mosquitto_restarts += 1

    async def database_outage(self) -> None:
        """The database away for outage_s while traffic goes on: a SQLite lock, or PostgreSQL refusing."""
        start = time.time()
        if self.pg_url is None:
            with SqliteLock(self.db_path, self.outage_s).held():
                pass
        else:
            async with pg_outage(self.pg_url):
                await asyncio.sleep(self.outage_s)
        self.rec.db_outages.append((start, time.time()))

    # -- traffic ---------------------------------------------------------------------

    def place_call(self) -> None:
        number = self.rng.choice(POOL[:60])  # a smaller pool: repeat callers
        kind = self.rng.random()
        hangup = self.rng.choice([1, 2]) if kind < 0.15 else self.rng.randint(4, 14)
        args = [
            *LAB,
            "call",
            "--from",
            number.removeprefix("+1"),
            "--hangup-after",
            str(hangup),
            "--background",
        ]
        subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
        self.rec.calls_placed += 1

    async def send_lead(self) -> None:
        import aiomqtt

        number = self.rng.choice(POOL)
        lead_id = f"soak-{uuid.uuid4().hex[:12]}"
        payload = {"phone": number, "name": "Soak Lead", "id": lead_id}
        self.rec.leads_sent += 1
        try:
            async with aiomqtt.Client("127.0.0.1", MQTT_PORT) as client:
                await client.subscribe(f"{self.topic}/reply")
                await client.publish(f"{self.topic}/leads", json.dumps(payload), qos=1)
                async with asyncio.timeout(5):
                    async for msg in client.messages:
                        reply = json.loads(msg.payload)
                        if reply.get("id") == lead_id:
                            if reply.get("ok"):
                                self.rec.leads_ok.append({"id": lead_id, "number": number, **reply})
                            return
        except (aiomqtt.MqttError, TimeoutError, OSError):
            return  # not accepted: the broker or the daemon was down; nothing to check

    async def traffic(self, rate: float) -> None:
        n = self.calls
        kill_at = set(self.rng.sample(range(5, n - 2), min(self.kills, max(0, n - 8))))
        restart_at = set(
            self.rng.sample(sorted(set(range(5, n - 2)) - kill_at), min(self.asterisk_restarts, 2))
        )
        free = sorted(set(range(5, n - 2)) - kill_at - restart_at)
        mosquitto_at = self.rng.choice(free) if free else None
        outage_at = self.rng.choice(free) if free else None
        outage: asyncio.Task[None] | None = None
        for i in range(n):
            await asyncio.to_thread(self.place_call)
            if i % 7 == 3:
                await self.send_lead()
            if i in kill_at:
                await asyncio.sleep(self.rng.uniform(0, 2))
                self.kill_daemon()
                await asyncio.sleep(self.rng.uniform(0.2, 1.5))
                await asyncio.to_thread(self.start_daemon)
            if i in restart_at:
                await self.restart_asterisk()
            if i == mosquitto_at:
                await self.restart_mosquitto()
            if i == outage_at:
                outage = asyncio.create_task(self.database_outage())  # traffic goes on meanwhile
            await attempt_faults(self, i, n)
            await asyncio.sleep(rate)
        if outage is not None:
            await outage

    async def settle(self, timeout: float) -> bool:
        """Wait until no request is open or dialling and no call is up.

        Gives up after *timeout* seconds in which no request closed: with two operators, a
        burst's backlog can take longer than any fixed wait, and stopping the daemon mid-call
        leaves attempts in flight that are the harness's doing, not the daemon's.
        """
        deadline = time.monotonic() + timeout
        last_n: int | None = None
        while time.monotonic() < deadline:
            await asyncio.sleep(3)
            query = "SELECT count(*) FROM requests WHERE status IN ('open','dialling')"
            if self.pg_url is None:
                con = sqlite3.connect(self.db_path, timeout=30)
                try:
                    open_n = con.execute(query).fetchone()[0]
                finally:
                    con.close()
            else:
                open_n = (await pg_fetch(self.pg_url, query))[0][0]
            if open_n == 0 and not spool_lines(self.work):
                return True
            if last_n is not None and open_n < last_n:
                deadline = time.monotonic() + timeout
            last_n = open_n
        return False

    async def run(self, rate: float, settle: float) -> dict:
        lab("operator", "op1,op2", "answer")
        lab("pstn", "--reset")
        lab("pstn", "--ring", "0.5")
        lab("pstn", "--talk", "2")
        for num in self.rng.sample(POOL, 20):
            lab(
                "pstn", num, self.rng.choice(["busy,answer", "noanswer,answer", "busy,busy,answer", "answer"])
            )
        watch = AmiClient(
            host="127.0.0.1",
            port=5038,
            username="lab",
            secret="lab-admin-secret",
            on_event=lambda e: self.rec.events.append((time.time(), e)),
        )
        await watch.start()
        await attach_ami_proxy(self)
        await asyncio.to_thread(self.start_daemon)  # the proxy runs on this loop
        await asyncio.to_thread(start_second_daemon, self)
        started = time.time()
        try:
            await self.traffic(rate)
            settled = await self.settle(settle)
        finally:
            # In threads: the AMI proxy runs on this loop, and a daemon draining its calls needs it.
            await asyncio.to_thread(stop_second_daemon, self)
            code = await asyncio.to_thread(self.daemon.stop) if self.daemon else None
            await watch.close()
        if self.pg_url is not None:
            await pg_to_sqlite(self.pg_url, self.db_path)
        report = Checker(self).check()
        report.update(
            seconds=round(time.time() - started, 1),
            settled=settled,
            final_exit_code=code,
        )
        return report


class Checker:
    def __init__(self, soak: Soak) -> None:
        self.s = soak
        self.rec = soak.rec
        self.db = sqlite3.connect(soak.db_path)
        self.db.row_factory = sqlite3.Row
        self.cal = BusinessCalendar.from_spec("UTC", hours_spec())
        self.violations: dict[str, list] = defaultdict(list)

    def logs(self) -> list[tuple[int, dict]]:
        return [(i, e) for i, d in enumerate(self.rec.daemons) for e in d.lines]

    def up_windows(self) -> list[tuple[float, float]]:
        """Wall-time windows when a daemon was attached and resynced: from each resync to the next
        AMI disconnect (an AMI cut or an Asterisk restart) or the daemon's last line."""
        wins = []
        for d in self.rec.daemons:
            start = None
            for e in d.lines:
                event = e.get("event")
                if event == "ami.resynced" and start is None:
                    start = ts(e)
                elif event == "ami.disconnected" and start is not None:
                    wins.append((start, ts(e)))
                    start = None
            if start is not None and d.lines:
                wins.append((start, ts(d.lines[-1])))
        return wins

    def check(self) -> dict:
        calls = self.inbound_calls()
        self.check_missed_calls(calls)
        self.check_abandons(calls)
        self.check_no_overlap()
        self.check_hours_and_max()
        self.check_accepted()
        self.check_resync()
        self.check_end_state()
        attempt_figures = check_dialling_after_heal(self)
        outcomes = dict(self.db.execute("SELECT outcome, count(*) FROM attempts GROUP BY outcome").fetchall())
        statuses = dict(self.db.execute("SELECT status, count(*) FROM requests GROUP BY status").fetchall())
        return {
            "calls_placed": self.rec.calls_placed,
            "inbound_seen": len(calls),
            "answered": sum(1 for c in calls.values() if c["answered"]),
            "missed_checked": self.missed_checked,
            "short_abandons": self.short_seen,
            "leads_sent": self.rec.leads_sent,
            "leads_accepted": len(self.rec.leads_ok),
            "requests": statuses,
            "attempts": outcomes,
            "kills": len(self.rec.kills),
            "asterisk_restarts": len(self.rec.asterisk_restarts),
            "mosquitto_restarts": self.rec.mosquitto_restarts,
            "database": "postgresql" if self.s.pg_url else "sqlite",
            "db_outages": len(self.rec.db_outages),
            "db_outage_seconds": [round(b - a, 1) for a, b in self.rec.db_outages],
            "abandons_checked": self.abandons_checked,
            "abandons_during_outage": self.abandons_in_outage,
            "spool_replays": sum(len(d.events("spool.replayed")) for d in self.rec.daemons),
            "left_in_spool": len(spool_lines(self.s.work)),
            **attempt_figures,
            "daemon_processes": len(self.rec.daemons),
            "violations": {k: len(v) for k, v in self.violations.items()},
            "violation_examples": {k: v[:3] for k, v in self.violations.items() if v},
        }

    # -- 1. every qualifying missed call has exactly one request -----------------------

    def inbound_calls(self) -> dict[str, dict]:
        calls: dict[str, dict] = {}
        for at, e in self.rec.events:
            lid = e.get("Linkedid", "")
            name = e.get("Event")
            if name == "Newchannel" and e.get("Uniqueid") == lid and e.get("Context") == "from-pstn":
                calls[lid] = {
                    "start": at,
                    "end": None,
                    "answered": False,
                    "hup_req": False,
                    "number": e.get("CallerIDNum", ""),
                    "abandon_hold": None,
                }
            c = calls.get(lid)
            if c is None:
                continue
            if name in ("AgentConnect",) or (name == "DialEnd" and e.get("DialStatus") == "ANSWER"):
                c["answered"] = True
            elif name == "HangupRequest" and e.get("Uniqueid") == lid:
                c["hup_req"] = True
            elif name == "QueueCallerAbandon":
                c["abandon_hold"] = int(e.get("HoldTime") or 0)
            elif name == "Hangup" and e.get("Uniqueid") == lid:
                c["end"] = at
        return calls

    def check_missed_calls(self, calls: dict[str, dict]) -> None:
        wins = self.up_windows()
        margin = 2.0
        restarts = self.rec.asterisk_restarts
        contacts = defaultdict(list)
        for row in self.db.execute("SELECT * FROM contacts WHERE source = 'ami'"):
            contacts[row["source_ref"]].append(row)
        self.missed_checked = 0
        self.short_seen = 0
        for lid, c in calls.items():
            if c["answered"] or c["end"] is None:
                continue
            # Seen whole by a daemon: started and ended inside one attached window.
            if not any(a + margin <= c["start"] and c["end"] <= b - margin for a, b in wins):
                continue
            if any(c["start"] - 5 <= r <= c["end"] + 5 for r in restarts):
                continue
            self.missed_checked += 1
            rows = contacts.get(lid, [])
            if len(rows) != 1:
                self.violations["missed_call_without_exactly_one_contact"].append(
                    (lid, c["number"], len(rows))
                )
                continue
            row = rows[0]
            waited = c["abandon_hold"] if c["abandon_hold"] is not None else round(c["end"] - c["start"])
            if c["hup_req"] and waited < SHORT - 1:
                self.short_seen += 1
                if row["disposition"] != "short":
                    self.violations["short_abandon_scheduled"].append((lid, row["disposition"]))
                continue
            if row["disposition"] == "schedule" and row["request_id"] is None:
                self.violations["scheduled_contact_without_request"].append(lid)
            if row["disposition"] not in ("schedule", "short", "rate_limited"):
                self.violations["unexpected_disposition"].append((lid, row["disposition"]))

    def check_abandons(self, calls: dict[str, dict]) -> None:
        """Every abandon Asterisk raised while a daemon was attached (the call whole inside one attached
        window, no Asterisk restart across it) ended in the database: one contact and one call row,
        database outages included."""
        wins = self.up_windows()
        margin = 2.0
        contacts = defaultdict(int)
        for row in self.db.execute("SELECT source_ref FROM contacts WHERE source = 'ami'"):
            contacts[row[0]] += 1
        call_rows = defaultdict(int)
        for row in self.db.execute("SELECT linkedid FROM calls"):
            call_rows[row[0]] += 1
        self.abandons_checked = self.abandons_in_outage = 0
        for lid, c in calls.items():
            if c["abandon_hold"] is None or c["answered"] or c["end"] is None:
                continue
            if not any(a + margin <= c["start"] and c["end"] <= b - margin for a, b in wins):
                continue
            if any(c["start"] - 5 <= r <= c["end"] + 5 for r in self.rec.asterisk_restarts):
                continue
            self.abandons_checked += 1
            if any(a <= c["end"] <= b for a, b in self.rec.db_outages):
                self.abandons_in_outage += 1
            if contacts.get(lid, 0) != 1 or call_rows.get(lid, 0) != 1:
                self.violations["abandon_not_exactly_once_in_db"].append(
                    (lid, c["number"], contacts.get(lid, 0), call_rows.get(lid, 0))
                )

    # -- 2. no number in two callbackd calls at once ------------------------------------

    def check_no_overlap(self) -> None:
        spans: dict[str, list[float]] = {}
        number_of: dict[str, str] = {}
        for at, e in self.rec.events:
            uid = e.get("Uniqueid", "")
            if not uid.startswith("cbd-") or uid != e.get("Linkedid"):
                if e.get("Event") == "DialBegin" and e.get("DestUniqueid", "").startswith("cbd-"):
                    number_of[e["DestUniqueid"]] = e.get("DestCallerIDNum", "")
                continue
            if e.get("Event") == "Newchannel":
                spans[uid] = [at, float("inf")]
            elif e.get("Event") == "Hangup" and uid in spans:
                spans[uid][1] = at
        for restart in self.rec.asterisk_restarts:  # channels cut by a restart end there
            for span in spans.values():
                if span[0] < restart < span[1]:
                    span[1] = restart
        by_number = defaultdict(list)
        for uid, (a, b) in spans.items():
            by_number[number_of.get(uid, "")].append((a, b, uid))
        for number, items in by_number.items():
            items.sort()
            for (_a1, b1, u1), (a2, _b2, u2) in itertools.pairwise(items):
                if a2 < b1 - 0.05:
                    self.violations["number_in_two_calls"].append((number, u1, u2))
        rows = self.db.execute(
            "SELECT number, started_at, ended_at, id FROM attempts ORDER BY number, started_at"
        ).fetchall()
        prev = None
        for r in rows:
            if (
                prev
                and prev["number"] == r["number"]
                and prev["ended_at"]
                and r["started_at"] < prev["ended_at"]
            ):
                self.violations["attempts_overlap_in_db"].append((r["number"], prev["id"], r["id"]))
            prev = r

    # -- 3, 4. business hours, maximum attempts -----------------------------------------

    def check_hours_and_max(self) -> None:
        for r in self.db.execute("SELECT id, started_at FROM attempts"):
            at = datetime.fromisoformat(r["started_at"]).replace(tzinfo=UTC)
            if not self.cal.is_open(at):
                self.violations["attempt_outside_hours"].append((r["id"], r["started_at"]))
        for r in self.db.execute(
            "SELECT r.id, r.attempts_made, (SELECT count(*) FROM attempts a"
            " WHERE a.request_id = r.id AND a.counted) AS counted FROM requests r"
        ):
            if r["attempts_made"] > MAX_ATTEMPTS or r["counted"] > MAX_ATTEMPTS:
                self.violations["too_many_attempts"].append(tuple(r))

    # -- 5. nothing accepted was lost ----------------------------------------------------

    def check_accepted(self) -> None:
        ids = {r[0] for r in self.db.execute("SELECT id FROM requests")}
        for _i, e in self.logs():
            if e.get("event") == "request.stored" and e.get("request_id") not in ids:
                self.violations["stored_request_missing"].append(e.get("request_id"))
        refs = {
            r[0]: r[1]
            for r in self.db.execute("SELECT source_ref, request_id FROM contacts WHERE source='mqtt'")
        }
        for lead in self.rec.leads_ok:
            found = [ref for ref in refs if ref.endswith(lead["id"])]
            if not found:
                self.violations["accepted_lead_missing"].append(lead["id"])

    # -- 6. every AMI reconnect resynced --------------------------------------------------

    def check_resync(self) -> None:
        for d in self.rec.daemons:
            names = [e.get("event") for e in d.lines]
            for i, name in enumerate(names):
                if name != "ami.login":
                    continue
                if "ami.resynced" in names[i + 1 :] or "ami.resync_failed" in names[i + 1 :]:
                    if "ami.resynced" not in names[i + 1 :]:
                        self.violations["resync_failed"].append(d.lines[i].get("timestamp"))
                    continue
                # A process killed right after its login is excused.
                if d.proc.returncode not in (-9, None):
                    self.violations["login_without_resync"].append(d.lines[i].get("timestamp"))

    def check_end_state(self) -> None:
        n = self.db.execute("SELECT count(*) FROM attempts WHERE status != 'done'").fetchone()[0]
        if n:
            self.violations["attempts_left_in_flight"].append(n)


def spool_lines(work: Path) -> list[str]:
    path = work / "spool.jsonl"
    return path.read_text().splitlines() if path.exists() else []


async def pg_fetch(url: str, query: str) -> list:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


async def pg_to_sqlite(url: str, path: Path) -> None:
    """The soak's tables copied from PostgreSQL into a SQLite file, so the checker reads one kind of database
    (times as naive UTC ISO strings, as SQLite holds them)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    con = sqlite3.connect(path)
    try:
        for table in ("calls", "contacts", "requests", "attempts"):
            rows = await pg_fetch(url, f"SELECT * FROM {table}")
            if not rows:
                cols = [
                    r[0]
                    for r in await pg_fetch(
                        url,
                        f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'",
                    )
                ]
                con.execute(f"CREATE TABLE {table} ({', '.join(cols)})")
                continue
            cols = list(rows[0].keys())
            con.execute(f"CREATE TABLE {table} ({', '.join(cols)})")
            con.executemany(
                f"INSERT INTO {table} VALUES ({', '.join('?' * len(cols))})",
                [tuple(_plain(v) for v in r.values()) for r in rows],
            )
        con.commit()
    finally:
        con.close()


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


# -- attempt faults: the AMI cut mid-Originate and a second daemon with admin cancel/retry ----------

# A request in flight across a fault must leave `dialling` within the rings plus the talk plus this.
DIALLING_GRACE = 15.0
RING_AND_TALK = 6 + 6 + 2  # the soak config's operator_ring, client_ring and the PSTN's talk time


@dataclass
class AttemptFaults:
    proxy: AmiProxy
    cuts: list[tuple[float, float]] = field(default_factory=list)  # (cut, healed), wall time
    admin: list[tuple[float, int]] = field(default_factory=list)  # (at, request id) cancel + retry
    second: DaemonProcess | None = None


async def attach_ami_proxy(soak: Soak) -> None:
    """Every daemon reaches AMI through a proxy the soak can cut (same PBX identity for all)."""
    proxy = await AmiProxy().start()
    soak.attempt_faults = AttemptFaults(proxy)  # type: ignore[attr-defined]
    text = soak.config.read_text().replace("port = 5038", f"port = {proxy.port}", 1)
    soak.config.write_text(text)


def start_second_daemon(soak: Soak) -> None:
    """Node b on the same database and PBX, without the intake listeners (node a owns them)."""
    faults: AttemptFaults = soak.attempt_faults  # type: ignore[attr-defined]
    home = soak.work / "node-b"
    home.mkdir(exist_ok=True)
    text = soak.config.read_text()
    # Same Asterisk, same identity: calls are deduplicated across both, attempts reconciled by either.
    text = text.replace('node = "lab"', 'node = "soak-b"\npbx = "lab"', 1)
    text = text.replace(str(soak.work / "status.json"), str(home / "status.json"))
    for section in ("agi", "http", "mqtt"):
        text = text.replace(f"[{section}]\nenabled = true", f"[{section}]\nenabled = false")
    config = home / "callbackd.toml"
    config.write_text(text)
    config.chmod(0o600)
    d = DaemonProcess(config, log_file=soak.work / "daemon-b.log")
    soak.rec.daemons.append(d)
    faults.second = d
    d.wait_for("ami.resynced", timeout=60)


def stop_second_daemon(soak: Soak) -> None:
    faults: AttemptFaults | None = getattr(soak, "attempt_faults", None)
    if faults is not None and faults.second is not None:
        faults.second.stop()


async def attempt_faults(soak: Soak, i: int, n: int) -> None:
    """At a third and at two thirds of the traffic: cut AMI right after an Originate's ack;
    in between, every tenth call, an admin cancels and retries a request while it rings."""
    if i in (n // 3, 2 * n // 3):
        await cut_ami_mid_originate(soak, hold=soak.rng.uniform(3, 12))
    elif i % 10 == 5:
        await admin_cancel_retry(soak)


async def cut_ami_mid_originate(soak: Soak, hold: float) -> None:
    faults: AttemptFaults = soak.attempt_faults  # type: ignore[attr-defined]
    proxy = faults.proxy
    proxy.cut_after(b"Originate successfully queued")
    for _ in range(600):  # the next Originate, within a minute
        if proxy.down:
            break
        await asyncio.sleep(0.1)
    if not proxy.down:
        proxy.cut()  # no Originate came: cut anyway, the rest of the checks still hold
    cut_at = time.time()
    await asyncio.sleep(hold)
    proxy.heal()
    faults.cuts.append((cut_at, time.time()))


async def admin_cancel_retry(soak: Soak) -> None:
    """`requests cancel` then `requests retry` on a request some daemon is dialling."""
    faults: AttemptFaults = soak.attempt_faults  # type: ignore[attr-defined]
    config = faults.second.config if faults.second is not None else soak.config
    query = "SELECT id FROM requests WHERE status = 'dialling' LIMIT 1"
    if soak.pg_url is None:
        con = sqlite3.connect(soak.db_path, timeout=30)
        try:
            row = con.execute(query).fetchone()
        finally:
            con.close()
    else:  # the PostgreSQL variant: db_path is only the checker's copy, made at the end
        try:
            rows = await pg_fetch(soak.pg_url, query)
        except Exception:  # the database is away (the outage fault): no admin round this time
            return
        row = rows[0] if rows else None
    if row is None:
        return
    await asyncio.to_thread(cli, config, "requests", "cancel", str(row[0]), check=False)
    await asyncio.to_thread(cli, config, "requests", "retry", str(row[0]), check=False)
    faults.admin.append((time.time(), row[0]))


def check_dialling_after_heal(checker: Checker) -> dict:
    """No request stays `dialling` longer than ring time plus grace once a fault has healed:
    every attempt in flight across a heal (AMI cut, kill -9 and restart, Asterisk restart)
    ends within the limit after it; none is left in flight at the end."""
    faults: AttemptFaults | None = getattr(checker.s, "attempt_faults", None)
    heals = [healed for _cut, healed in (faults.cuts if faults else [])]
    for d in checker.rec.daemons[1:]:  # every restarted daemon's first resync
        ready = next((ts(e) for e in d.lines if e.get("event") == "ami.resynced"), None)
        if ready is not None:
            heals.append(ready)
    heals += [at + 15 for at in checker.rec.asterisk_restarts]  # the restart takes a few seconds
    limit = RING_AND_TALK + DIALLING_GRACE
    longest = 0.0
    for row in checker.db.execute("SELECT id, request_id, started_at, ended_at FROM attempts"):
        started = _db_time(row["started_at"])
        ended = _db_time(row["ended_at"]) if row["ended_at"] else None
        if ended is None:
            checker.violations["dialling_after_heal"].append({"attempt": row["id"], "ended": None})
            continue
        crossed = [h for h in heals if started < h <= ended]
        if not crossed:
            continue
        took = ended - max(crossed)
        longest = max(longest, took)
        if took > limit:
            checker.violations["dialling_after_heal"].append(
                {"attempt": row["id"], "request": row["request_id"], "seconds": round(took, 1)}
            )
    stuck = checker.db.execute("SELECT count(*) FROM requests WHERE status = 'dialling'").fetchone()[0]
    if stuck:
        checker.violations["requests_left_dialling"].append(stuck)
    return {
        "ami_cuts": len(faults.cuts) if faults else 0,
        "admin_cancel_retry": len(faults.admin) if faults else 0,
        "longest_dialling_after_heal_s": round(longest, 1),
    }


def _db_time(value: str) -> float:
    return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


def ts(e: dict) -> float:
    return datetime.fromisoformat(e["timestamp"]).timestamp()


@contextlib.contextmanager
def lab_lock():
    with LOCK_PATH.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


async def run_soak(args: argparse.Namespace, work: Path) -> dict:
    if args.database == "sqlite":
        soak = Soak(work, args.calls, args.kills, args.asterisk_restarts, args.seed, outage=args.outage)
        return await soak.run(args.rate, args.settle)
    from dbfaults import pg_database

    async with pg_database() as url:
        soak = Soak(
            work, args.calls, args.kills, args.asterisk_restarts, args.seed, pg_url=url, outage=args.outage
        )
        return await soak.run(args.rate, args.settle)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--asterisk-restarts", type=int, default=2)
    p.add_argument("--rate", type=float, default=1.0, help="seconds between calls")
    p.add_argument(
        "--settle", type=float, default=300, help="give up after this many seconds with no request closed"
    )
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "out" / "soak.json")
    p.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--outage", type=float, default=40.0, help="seconds the database is away, once")
    args = p.parse_args()
    work = args.work or Path(f"/tmp/callbackd-soak-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    with lab_lock():
        was_up = json.loads(lab("status", "--json", check=False) or "{}").get("up", False)  # exit 3: down
        lab("up")
        try:
            report = asyncio.run(run_soak(args, work))
        finally:
            if not was_up:
                lab("down")
    report["seed"] = args.seed
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0 if not any(report["violations"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
