"""The one line systemd shows for the service (``STATUS=`` in ``systemctl status``).

Built from what the daemon knows about AMI, the database and its backlog; the daemon sends it
again whenever the text changes, so it never says "attached" while AMI is down.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 or value == int(value) else f"{value:.1f}s"


def waiting_for_ami(address: str, attempt: int, next_in: float | None, error: str | None = None) -> str:
    """While the daemon starts and AMI does not answer yet."""
    detail = f"attempt {attempt}" + (f", next in {_seconds(next_in)}" if next_in is not None else "")
    text = f"waiting for AMI at {address} ({detail})"
    return f"{text}: {error}" if error else text


def waiting_for_database(attempt: int, next_in: float | None, error: str | None = None) -> str:
    """While the daemon starts and the database does not answer (or is locked) yet."""
    detail = f"attempt {attempt}" + (f", next in {_seconds(next_in)}" if next_in is not None else "")
    text = f"waiting for the database ({detail})"
    return f"{text}: {error}" if error else text


@dataclass(frozen=True)
class Facts:
    """What the running daemon's line is made of. ``*_since``: when that link went down (UTC)."""

    ami_address: str
    ami_up: bool
    ami_down_since: datetime | None = None
    database_up: bool | None = True  # None: not known yet
    database_down_since: datetime | None = None
    open_requests: int | None = None  # None: not counted yet
    dialling: int = 0
    queued: int = 0  # contacts waiting in memory for the database
    spooled: int = 0  # contacts on disk until the database answers
    draining: bool = False


def _since(at: datetime | None, tz: tzinfo | None) -> str:
    return f" since {at.astimezone(tz).strftime('%H:%M')}" if at is not None else ""


def running(facts: Facts, tz: tzinfo | None = None) -> str:
    """e.g. ``AMI up, database up; 3 open, 1 dialling`` or ``AMI down since 03:12, reconnecting; ...``.

    Times are shown in *tz* (the report zone), as the rest of the operator's tools do.
    """
    parts = []
    if facts.draining:
        parts.append("stopping: finishing calls in flight")
    if facts.ami_up:
        parts.append(f"AMI up at {facts.ami_address}")
    else:
        parts.append(f"AMI down{_since(facts.ami_down_since, tz)}, reconnecting")
    if facts.database_up is False:
        parts.append(f"database down{_since(facts.database_down_since, tz)}, spooling")
    elif facts.database_up:
        parts.append("database up")
    work = []
    if facts.open_requests is not None:
        work.append(f"{facts.open_requests} open")
    work.append(f"{facts.dialling} dialling")
    if facts.queued:
        work.append(f"{facts.queued} queued")
    if facts.spooled:
        work.append(f"{facts.spooled} spooled")
    return ", ".join(parts) + "; " + ", ".join(work)
