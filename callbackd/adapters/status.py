"""The status file the daemon keeps, and ``callbackd status``, which reads it with the database.

The daemon cannot be asked over a socket without opening one more listener, so it
writes what only it knows (AMI, operators, calls in flight, the last problem) to a
small JSON file, replaced atomically. The command adds what the database knows (open
requests, the next due time) and decides from the pid and the file's age whether the
daemon is running at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from callbackd.adapters.files import atomic_write

# Exit codes of `callbackd status`, as for LSB init scripts' status action.
RUNNING = 0
DATABASE_ERROR = 4  # LSB "status unknown"; the CLI's database exit code too
NOT_RUNNING = 3


def write(path: Path, data: dict[str, Any]) -> None:
    """Replace *path* atomically (mode 0640: it names operators and masked numbers)."""
    with atomic_write(path) as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def snapshot(
    *,
    version: str,
    node: str,
    state: str,
    started_at: datetime,
    reloaded_at: datetime | None,
    ami_address: str,
    ami: Any,
    pool: Any,
    runs: list[Any],
    intake: Any,
    last_error: Any,
    show_number: Any,
    now: datetime,
) -> dict[str, Any]:
    """What `callbackd status` shows that only the running daemon knows."""
    backlog = intake.backlog() if intake is not None else None
    return {
        "version": version,
        "pid": os.getpid(),
        "node": node,
        "state": state,
        "started_at": started_at.isoformat(),
        "reloaded_at": reloaded_at.isoformat() if reloaded_at else None,
        "ami": {
            "address": ami_address,
            "connected": bool(ami is not None and ami.connected),
            "reconnects": getattr(ami, "reconnects", 0) if ami is not None else 0,
            "last_error": getattr(ami, "last_error", None) if ami is not None else None,
        },
        "operators": {
            "members": len(pool.members),
            "free": [{"interface": m.interface, "name": m.name} for m in pool.free(now.timestamp())],
        },
        "callers_waiting": pool.callers_waiting(),
        "in_flight": [
            {
                "request_id": r.request_id,
                "attempt_id": r.attempt_id,
                "try_no": r.try_no,
                "operator": r.operator,
                "number": show_number(r.number),
            }
            for r in runs
        ],
        "refusals": dict(intake.refusals) if intake is not None else {},
        "intake": _intake(backlog, now),
        "last_error": last_error,
    }


def _intake(backlog: Any, now: datetime) -> dict[str, Any]:
    if backlog is None:
        return {"database": "unknown", "backlog": 0, "oldest_age_s": None, "spooled": 0, "spool_full": False}
    link = backlog.link
    return {
        "database": "unknown" if link.up is None else "up" if link.up else "down",
        "database_since": link.since.isoformat() if link.since else None,
        "database_error": link.error,
        "backlog": backlog.items,
        "queued": backlog.queued,
        "spooled": backlog.spooled,
        "oldest_age_s": round((now - backlog.oldest).total_seconds(), 1) if backlog.oldest else None,
        "spool_full": backlog.spool_full,
    }


def read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


@dataclass(frozen=True)
class Verdict:
    running: bool
    why: str


def assess(data: dict[str, Any] | None, now: datetime, max_age: timedelta, path: Path) -> Verdict:
    """Running only if the file says so, its pid is alive and it was written recently."""
    if data is None:
        return Verdict(False, f"no status file at {path}")
    written = _when(data.get("written_at"))
    age = now - written if written else None
    pid = int(data.get("pid") or 0)
    if data.get("state") == "stopped":
        return Verdict(False, f"stopped at {data.get('written_at')}")
    if not pid or not pid_alive(pid):
        return Verdict(False, f"pid {pid} is gone (status last written {_ago(age)})")
    if age is None or age > max_age:
        return Verdict(False, f"pid {pid} has not written {path} for {_ago(age)}: hung?")
    return Verdict(True, data.get("state", "running"))


def _when(text: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def _ago(delta: timedelta | None) -> str:
    if delta is None:
        return "at an unknown time"
    return f"{_span(delta)} ago"


def _span(delta: timedelta) -> str:
    s = int(abs(delta.total_seconds()))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def report(
    data: dict[str, Any] | None,
    verdict: Verdict,
    counts: dict[str, int] | None,
    next_due: datetime | None,
    db_error: str | None,
    now: datetime,
    tz: Any = None,
) -> dict[str, Any]:
    """The JSON `callbackd status --json` prints: the daemon's file plus the database's figures.

    The database's times are in *tz* (the report zone); the daemon's file is shown as written."""
    open_counts = {k: v for k, v in (counts or {}).items() if k in ("open", "dialling")}
    return {
        "running": verdict.running,
        "state": verdict.why if verdict.running else "not running",
        "reason": None if verdict.running else verdict.why,
        "daemon": data,
        "database": {
            "error": db_error,
            "open_requests": sum(open_counts.values()) if counts is not None else None,
            "by_status": counts,
            "next_due": _in(next_due, tz).isoformat() if next_due else None,
        },
        "checked_at": _in(now, tz).isoformat(),
    }


def _in(value: datetime, tz: Any) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(tz) if tz is not None else value


def _shown(text: Any, tz: Any) -> str:
    """An ISO time from the status file, in the display zone (as it is when it is not a time)."""
    when = _when(text) if text else None
    return _in(when, tz).isoformat(timespec="seconds") if when else str(text)


def render(rep: dict[str, Any], now: datetime, tz: Any = None) -> str:
    """The human summary of :func:`report`; times in *tz* (the report zone)."""
    d = rep["daemon"] or {}
    lines: list[str] = []
    if rep["running"]:
        started = _when(d.get("started_at"))
        up = f", up {_span(now - started)}" if started else ""
        who = f"callbackd {d.get('version', '?')} on {d.get('node', '?')}"
        lines.append(f"{who}: {rep['state']} (pid {d.get('pid')}{up})")
    else:
        lines.append(f"callbackd: NOT RUNNING: {rep['reason']}")
    if d:
        ami = d.get("ami", {})
        if rep["running"]:
            state = "connected" if ami.get("connected") else "DISCONNECTED"
            where = f"{ami.get('address', '?')}, {ami.get('reconnects', 0)} reconnect(s)"
            lines.append(f"  AMI              {state} to {where}")
            ops = d.get("operators", {})
            free = ops.get("free", [])
            names = ", ".join(f"{o['name']} ({o['interface']})" for o in free)
            lines.append(
                f"  operators free   {len(free)} of {ops.get('members', 0)}" + (f": {names}" if names else "")
            )
            lines.append(f"  callers waiting  {d.get('callers_waiting', 0)}")
            intake = d.get("intake") or {}
            link = intake.get("database", "unknown")
            since = (
                f" since {_shown(intake['database_since'], tz)}"
                if link == "down" and intake.get("database_since")
                else ""
            )
            lines.append(f"  database link    {link.upper() if link == 'down' else link}{since}")
            backlog = f"  intake backlog   {intake.get('backlog', 0)} item(s)"
            if intake.get("backlog"):
                backlog += f" ({intake.get('spooled', 0)} spooled), oldest {intake.get('oldest_age_s')} s"
            if intake.get("spool_full"):
                backlog += ": SPOOL FULL, new leads refused"
            lines.append(backlog)
            flights = d.get("in_flight", [])
            lines.append(f"  calls in flight  {len(flights)}")
            for f in flights:
                lines.append(
                    f"    request {f['request_id']} try {f['try_no']}: {f['operator']} -> {f['number']}"
                )
            unsaved = d.get("unsaved_outcomes", [])
            if unsaved:  # known outcomes the database has refused so far; written again until stored
                lines.append(f"  UNSAVED outcomes {len(unsaved)}")
                for u in unsaved:
                    lines.append(f"    request {u['request_id']}: {u['outcome']} ({u['number']})")
        problem = d.get("last_error")
        if problem:
            detail = f": {problem['detail']}" if problem.get("detail") else ""
            at = _shown(problem.get("at"), tz) if problem.get("at") else "?"
            lines.append(f"  last error       {at} {problem.get('event')}{detail}")
        else:
            lines.append("  last error       none")
    db = rep["database"]
    if db["error"]:
        lines.append(f"  database         ERROR: {db['error']}")
    else:
        by = db["by_status"] or {}
        detail = ", ".join(f"{k} {v}" for k, v in sorted(by.items()) if k in ("open", "dialling"))
        lines.append(f"  open requests    {db['open_requests']}" + (f" ({detail})" if detail else ""))
        due = _when(db["next_due"]) if db["next_due"] else None
        if due is None:
            lines.append("  next due         none")
        elif due <= now:
            lines.append(
                f"  next due         {_in(due, tz).isoformat()} (due now, {_span(now - due)} overdue)"
            )
        else:
            lines.append(f"  next due         {_in(due, tz).isoformat()} (in {_span(due - now)})")
    return "\n".join(lines)


async def gather(
    cfg: Any, *, lock_timeout: float = 30.0
) -> tuple[dict[str, int] | None, datetime | None, str | None]:
    """Requests by status and the next due time; the error text instead when the database fails.

    Never creates the database: a missing or unmigrated one is that error."""
    from callbackd.adapters import db
    from callbackd.adapters.store import Store

    try:
        engine = db.make_engine(cfg.database.url, read_only=True, create=False, lock_timeout=lock_timeout)
    except db.DatabaseProblem as exc:
        return None, None, str(exc)
    try:
        await db.check_migrated(engine)
        store = Store(engine, node=cfg.node, schedule=cfg.schedule_rules(), claim_lease=timedelta(hours=1))
        return await store.counts_by_status(), await store.next_due(), None
    except Exception as exc:
        return None, None, (str(getattr(exc, "orig", None) or exc).splitlines() or ["error"])[0][:300]
    finally:
        await engine.dispose()


def max_age(cfg: Any) -> timedelta:
    """How old the file may be before the daemon counts as hung: three missed rewrites, at least 15 s."""
    return max(3 * cfg.service.status_interval, timedelta(seconds=15))


def utcnow() -> datetime:
    return datetime.now(UTC)
