"""The intake spool: contacts and call records waiting for the database, on local disk.

One JSON object per line, appended and fsync'd before the caller is told "queued", so
a contact survives the database being down, a kill -9 and a reboot. Replay takes lines
from the head in order and drops them once stored; everything spooled is stored
idempotently (contacts are unique per source reference, calls per Linkedid), so a line
replayed twice after a crash is harmless. The spool is bounded: past ``max_items``
an append is refused (the caller says so loudly) unless forced at shutdown.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from datetime import datetime, time
from pathlib import Path
from typing import Any

import structlog

from callbackd.domain.detection import CallTrack, MissReason
from callbackd.domain.intake import Contact, Source

log = structlog.get_logger("callbackd.spool")


class SpoolFull(Exception):
    """The spool holds max_items lines already."""


@dataclass(frozen=True)
class Recovery:
    """A client reached another way: close the number's open request."""

    raw_number: str
    at: datetime
    how: str


@dataclass(frozen=True)
class Spooled:
    """A contact (with the abuse-limit refusal decided at arrival), a call record or a recovery."""

    item: Contact | CallTrack | Recovery
    refusal: str | None = None
    queued_at: datetime | None = None


_KINDS: dict[str, type] = {"contact": Contact, "call": CallTrack, "recovery": Recovery}


def encode(entry: Spooled) -> dict[str, Any]:
    item = entry.item
    kind = {cls: name for name, cls in _KINDS.items()}[type(item)]
    data = {f.name: _plain(getattr(item, f.name)) for f in fields(item)}  # type: ignore[arg-type]
    return {"kind": kind, "data": data, "refusal": entry.refusal, "queued_at": _plain(entry.queued_at)}


def decode(obj: dict[str, Any]) -> Spooled:
    kind = obj["kind"]
    cls = _KINDS[kind]
    # Field types, as the dataclass declares them (strings: annotations are postponed).
    types = {f.name: str(f.type) for f in fields(cls)}
    data = {k: v for k, v in obj["data"].items() if k in types}  # a field since removed is ignored
    for key, value in data.items():
        if isinstance(value, str) and "datetime" in types[key]:
            data[key] = datetime.fromisoformat(value)
        elif isinstance(value, str) and types[key].startswith("time"):
            data[key] = time.fromisoformat(value)
        elif isinstance(value, list) and types[key].startswith("set"):
            data[key] = set(value)
    item: Contact | CallTrack | Recovery
    if kind == "contact":
        item = Contact(**{**data, "source": Source(data["source"])})
    elif kind == "call":
        missed = data.get("missed")
        item = CallTrack(**{**data, "missed": MissReason(missed) if missed else None})
    elif kind == "recovery":
        item = Recovery(**data)
    else:
        raise ValueError(f"unknown spool entry kind {kind!r}")
    queued = obj.get("queued_at")
    return Spooled(item, obj.get("refusal"), datetime.fromisoformat(queued) if queued else None)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | time):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    if hasattr(value, "value"):  # enums
        return value.value
    return value


class Spool:
    """A bounded, fsync'd JSON-lines queue in one file; the whole of it is kept in memory too."""

    def __init__(self, path: Path, max_items: int) -> None:
        self.path = path
        self.max_items = max_items
        # Lists, not deques: replay reads at an index that grows, and drops the head in batches.
        self.items: list[Spooled] = []
        self._lines: list[bytes] = []  # as written, so dropping the head never re-encodes
        self._file: Any = None
        self.unreadable = 0

    def open(self) -> int:
        """Load what a previous process left (a torn last line from a crash is skipped); returns the count."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            with self.path.open("rb") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        self.items.append(decode(json.loads(line)))
                        self._lines.append(line if line.endswith(b"\n") else line + b"\n")
                    except (ValueError, KeyError, TypeError) as exc:
                        self.unreadable += 1
                        log.error("spool.unreadable_line", path=str(self.path), line=n, error=str(exc)[:200])
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._file = os.fdopen(fd, "ab")
        return len(self.items)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def full(self) -> bool:
        return len(self.items) >= self.max_items

    def oldest(self) -> datetime | None:
        return self.items[0].queued_at if self.items else None

    def append(self, entry: Spooled, *, force: bool = False) -> None:
        """Durable once this returns (written and fsync'd); raises SpoolFull past the bound unless forced."""
        if self.full and not force:
            raise SpoolFull(f"{self.path} holds {len(self.items)} items (max {self.max_items})")
        assert self._file is not None, "spool not open"
        line = json.dumps(encode(entry), separators=(",", ":")).encode() + b"\n"
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.items.append(entry)
        self._lines.append(line)

    def drop_head(self, n: int) -> None:
        """Forget the first *n* entries (stored now): rewrite the rest atomically, or truncate."""
        del self.items[:n]
        del self._lines[:n]
        assert self._file is not None, "spool not open"
        if not self.items:
            self._file.truncate(0)
            os.fsync(self._file.fileno())
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o640)
                f.writelines(self._lines)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._file.close()
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for appends
        _fsync_dir(self.path.parent)

    def reject(self, entry: Spooled, error: str) -> None:
        """Set aside an entry the database refuses for good, next to the spool, for an admin to look at."""
        path = self.path.with_name(self.path.name + ".rejected")
        with path.open("ab") as f:
            f.write(json.dumps({**encode(entry), "error": error}).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def as_dict(entry: Spooled) -> dict[str, Any]:
    """For logs: what an entry is, without the caller's name."""
    return {k: v for k, v in asdict(entry.item).items() if k in ("source", "source_ref", "linkedid", "how")}
