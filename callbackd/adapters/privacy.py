"""Retention and subject requests over every table and the configured spool/export directories.

``anonymise_expired`` runs from housekeeping; ``export_number`` and ``erase_number``
from ``callbackd privacy``. Nothing here logs a number: callers log the counts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from callbackd.adapters import models as m
from callbackd.adapters.db import sessionmaker
from callbackd.adapters.reports import atomic_text
from callbackd.domain.phone import E164
from callbackd.domain.privacy import ANON_PREFIX, cutoff, number_forms, pseudonym, scrub_lines
from callbackd.domain.states import OPEN_STATUSES, RequestEvent, request_transition

# Per table: the E.164 column, raw number columns, and free-text columns that may name the client.
_FIELDS: dict[type[m.Base], tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    m.Call: ("number", ("caller_num",), ("caller_name",)),
    m.Contact: ("number", ("raw_number",), ("name", "comment")),
    m.Request: ("number", (), ("name", "note")),
    m.Attempt: ("number", (), ()),
}


def _matches(model: type[m.Base], number: E164):
    col, raw, _ = _FIELDS[model]
    forms = number_forms(number)
    return or_(getattr(model, col) == str(number), *(getattr(model, r).in_(forms) for r in raw))


async def _anonymise(s: AsyncSession, number: E164, token: str) -> dict[str, int]:
    """Replace the number (and raw forms of it) with ``token`` and blank names and notes, in every table."""
    counts: dict[str, int] = {}
    for model, (col, raw, text) in _FIELDS.items():
        values: dict[str, Any] = {col: token, **dict.fromkeys(raw, token), **dict.fromkeys(text, "")}
        res = await s.execute(update(model).where(_matches(model, number)).values(**values))
        counts[model.__tablename__] = res.rowcount
    return counts


async def anonymise_expired(
    engine: AsyncEngine, now: datetime, *, calls: timedelta | None, contacts: timedelta | None
) -> int:
    """Anonymise every number whose rows are all past retention; returns how many numbers.

    ``calls`` covers the calls table, ``contacts`` the contacts, requests and attempts. A
    number is anonymised only when none of its rows is recent and it has no open request,
    all of it at once: a lost call then still joins the callback that reached it, and the
    reports' figures stay the same. A table without a period keeps its numbers, and so
    keeps every number it holds named.
    """
    calls_cut, contacts_cut = cutoff(now, calls), cutoff(now, contacts)
    if calls_cut is None and contacts_cut is None:
        return 0
    async with sessionmaker(engine)() as s, s.begin():
        candidates: set[str] = set()
        recent: set[str] = set()
        tables = (
            (m.Call, m.Call.started_at, calls_cut),
            (m.Contact, m.Contact.at, contacts_cut),
            (m.Request, m.Request.updated_at, contacts_cut),
            (m.Attempt, m.Attempt.started_at, contacts_cut),
        )
        for model, at, cut in tables:
            number = model.number  # type: ignore[attr-defined]
            named = number.is_not(None) & ~number.startswith(ANON_PREFIX)
            if cut is None:
                recent.update((await s.execute(select(number).where(named).distinct())).scalars())
                continue
            candidates.update((await s.execute(select(number).where(named, at < cut).distinct())).scalars())
            recent.update((await s.execute(select(number).where(named, at >= cut).distinct())).scalars())
        recent.update(
            (
                await s.execute(
                    select(m.Request.number).where(m.Request.status.in_([x.value for x in OPEN_STATUSES]))
                )
            ).scalars()
        )
        done = 0
        for value in sorted(candidates - recent):
            try:
                number = E164.trusted(value)
            except ValueError:
                continue  # not a number we wrote; leave it for an erase by hand
            await _anonymise(s, number, pseudonym())
            done += 1
        return done


def _row(obj: m.Base) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col in obj.__table__.columns:
        value = getattr(obj, col.key)
        out[col.key] = value.isoformat() if isinstance(value, datetime) else value
    return out


async def export_number(engine: AsyncEngine, number: E164) -> dict[str, list[dict[str, Any]]]:
    """Every stored row that names the number, per table (a subject access request)."""
    async with sessionmaker(engine)() as s:
        out: dict[str, list[dict[str, Any]]] = {}
        for model in _FIELDS:
            rows = (await s.execute(select(model).where(_matches(model, number)))).scalars()
            out[model.__tablename__] = [_row(r) for r in rows]
        return out


def _files(directories: Iterable[Path]) -> Iterable[Path]:
    for d in directories:
        if d.is_dir():
            yield from (p for p in sorted(d.rglob("*")) if p.is_file() and not p.name.startswith("."))


def scrub_directories(directories: Sequence[Path], number: E164) -> tuple[int, int]:
    """Drop every line naming the number from files under ``directories``; returns (files, lines)."""
    files = lines = 0
    for path in _files(directories):
        try:
            text = path.read_text(encoding="utf-8-sig" if path.suffix == ".csv" else "utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # not a text export
        bom = path.read_bytes().startswith(b"\xef\xbb\xbf")
        kept, removed = scrub_lines(text.splitlines(keepends=True), number)
        if removed:
            mode = os.stat(path).st_mode & 0o777
            with atomic_text(path, mode) as out:
                out.write(("\ufeff" if bom else "") + "".join(kept))
            files += 1
            lines += removed
    return files, lines


async def erase_number(
    engine: AsyncEngine, number: E164, now: datetime, directories: Sequence[Path] = ()
) -> dict[str, int]:
    """Erase a client on request: cancel an open request, anonymise every row, scrub the files."""
    async with sessionmaker(engine)() as s, s.begin():
        open_reqs = (
            (
                await s.execute(
                    select(m.Request)
                    .where(
                        m.Request.number == str(number),
                        m.Request.status.in_([x.value for x in OPEN_STATUSES]),
                    )
                    .with_for_update()
                )
            )
            .scalars()
            .all()
        )
        for req in open_reqs:
            req.status = request_transition(req.status, RequestEvent.CANCEL).value
            req.close_reason = "erased"
            req.closed_at = req.updated_at = now
            req.due_at = req.claimed_by = req.claim_expires = None
        counts = await _anonymise(s, number, pseudonym())
    files, lines = scrub_directories(directories, number)
    return {**counts, "cancelled": len(open_reqs), "files": files, "file_lines": lines}
