"""Retention and subject requests on real SQLite and PostgreSQL, over the reports' dataset."""
# ruff: noqa: F811 - ``engine`` is test_reports' fixture (the dataset), used as a parameter here

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from test_reports import END, MSK, N1, N2, N3, N4, N6, N7, NAME, START, T, call, engine, s  # noqa: F401 - the fixture

from callbackd import cli
from callbackd.adapters import db, privacy
from callbackd.adapters import models as m
from callbackd.adapters.reports import build_report, report_dict
from callbackd.domain.metrics import Grouping, Thresholds
from callbackd.domain.phone import E164
from callbackd.domain.privacy import scrub_lines

LATER = datetime(2027, 6, 1, tzinfo=UTC)  # long after the dataset (March 2026)
D30 = timedelta(days=30)


async def figures(engine):
    out = []
    for by in (None, Grouping.QUEUE, Grouping.DAY, Grouping.OPERATOR, Grouping.SOURCE):
        out.append(
            report_dict(await build_report(engine, START, END, by=by, tz=MSK, thresholds=Thresholds()))
        )
    return out


async def numbers_in(engine) -> set[str]:
    async with engine.connect() as c:
        found: set[str] = set()
        for table, cols in (
            (m.Call, ("number", "caller_num")),
            (m.Contact, ("number", "raw_number")),
            (m.Request, ("number",)),
            (m.Attempt, ("number",)),
        ):
            for col in cols:
                found.update(v for v in (await c.execute(sa.select(getattr(table, col)))).scalars() if v)
        return found


async def test_anonymised_data_keep_report_totals_equal(engine):
    before = await figures(engine)
    assert await privacy.anonymise_expired(engine, LATER, calls=D30, contacts=D30) == 7
    after = await figures(engine)
    assert after == before
    left = await numbers_in(engine)
    # Only the number with an open request (N7) still names someone; the rest are tokens.
    named = {n for n in left if any(ch.isdigit() for ch in n) and not n.startswith("anon-")}
    assert named == {N7, N7[-10:]}
    async with engine.connect() as c:
        names = (await c.execute(sa.select(m.Call.caller_name))).scalars().all()
        notes = (await c.execute(sa.select(m.Request.note))).scalars().all()
    assert NAME not in names and all(n == "" for n in notes)
    # A second run finds nothing more to do.
    assert await privacy.anonymise_expired(engine, LATER, calls=D30, contacts=D30) == 0


async def test_nothing_is_anonymised_inside_retention_or_without_both_periods(engine):
    soon = datetime(2026, 3, 10, tzinfo=UTC)
    assert await privacy.anonymise_expired(engine, soon, calls=D30, contacts=D30) == 0
    # Calls kept forever keep their numbers named, so no number may be anonymised half-way:
    # only N8, a web lead that never called, goes.
    assert await privacy.anonymise_expired(engine, LATER, calls=None, contacts=D30) == 1
    assert await privacy.anonymise_expired(engine, LATER, calls=None, contacts=None) == 0
    assert N1 in await numbers_in(engine)


async def test_export_then_erase_a_number_everywhere(engine, tmp_path):
    n3 = E164(N3)
    async with engine.begin() as c:
        await c.execute(
            sa.insert(m.Contact).values(
                source="http",
                source_ref="lead-9",
                raw_number=N3[2:],
                number=None,  # stored as typed, refused at the time
                name="Ann",
                comment="after 5",
                reason="web_form",
                at=LATER - timedelta(days=400),
                disposition="invalid",
                detail="",
            )
        )
    data = await privacy.export_number(engine, n3)
    assert data["contacts"][0]["name"] == "Ann"
    assert {t: len(rows) for t, rows in data.items()} == {
        "calls": 1,
        "contacts": 1,
        "requests": 1,
        "attempts": 2,
    }
    assert data["calls"][0]["caller_num"] == N3[-10:] and data["requests"][0]["status"] == "reached"
    spool = tmp_path / "exports"
    spool.mkdir()
    (spool / "calls.csv").write_text(f"id,number\n1,{N3}\n2,{N4}\n3,+1 (202) 555-0103\n", encoding="utf-8")
    (spool / "calls.csv").chmod(0o640)
    counts = await privacy.erase_number(engine, n3, LATER, [spool])
    assert counts == {
        "calls": 1,
        "contacts": 1,
        "requests": 1,
        "attempts": 2,
        "cancelled": 0,
        "files": 1,
        "file_lines": 2,
    }
    assert (spool / "calls.csv").read_text() == f"id,number\n2,{N4}\n"
    assert (spool / "calls.csv").stat().st_mode & 0o777 == 0o640
    assert all(rows == [] for rows in (await privacy.export_number(engine, n3)).values())
    assert N3 not in await numbers_in(engine)


async def test_erasing_a_number_with_an_open_request_cancels_it(engine):
    counts = await privacy.erase_number(engine, E164(N7), LATER)
    assert counts["cancelled"] == 1
    async with engine.connect() as c:
        row = (await c.execute(sa.select(m.Request).where(m.Request.id == 13))).one()
    assert (row.status, row.close_reason, row.due_at) == ("cancelled", "erased", None)
    assert row.number.startswith("anon-")


async def test_cli_privacy_never_prints_or_logs_the_number(engine, db_url, tmp_path, capsys):
    config = tmp_path / "callbackd.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n[numbers]\ndefault_region = "US"\n')
    config.chmod(0o600)
    assert (
        await asyncio.to_thread(cli.main, ["--config", str(config), "privacy", "export", "2025550104"]) == 0
    )
    out = capsys.readouterr()
    exported = json.loads(out.out)
    assert [c["number"] for c in exported["calls"]] == [N4, N4]
    assert N4 not in out.err and "privacy.exported" in out.err
    assert await asyncio.to_thread(cli.main, ["--config", str(config), "privacy", "erase", N4]) == 0
    out = capsys.readouterr()
    assert "calls=2" in out.out and N4 not in out.out + out.err and "privacy.erased" in out.err
    assert (
        await asyncio.to_thread(cli.main, ["--config", str(config), "privacy", "erase", "12&PJSIP/evil"]) == 2
    )
    assert "invalid phone number" in capsys.readouterr().err


def test_scrub_lines_matches_formatted_numbers_but_not_longer_ones() -> None:
    lines = ["a,+74232123456\n", "b,+7 (423) 212-34-56\n", "c,+742321234567\n", "d,4232123456\n", "e,x\n"]
    kept, removed = scrub_lines(lines, E164("+74232123456"))
    assert kept == ["c,+742321234567\n", "e,x\n"] and removed == 3


@pytest.mark.parametrize("bad", ["0s", "12h"])
def test_retention_shorter_than_a_day_is_refused(bad: str) -> None:
    from callbackd.config import RetentionConfig

    with pytest.raises(ValueError, match="at least 1d"):
        RetentionConfig(calls=bad)


async def test_a_number_with_recent_rows_waits_whole(engine):
    # A lost call with no request of its own (L9, N2, 2 March) reached later by an answered call
    # (L10, 3 March). With the cut-off at 3 March 00:00, anonymising L9 alone would lose "reached
    # later"; N2 waits until L10 is old too.
    async with db.sessionmaker(engine)() as session, session.begin():
        session.add_all(
            [
                call("L9", T + s(7 * 3600), "support", N2, hold=40, reason="queue_abandon", length=41),
                call(
                    "L10",
                    datetime(2026, 3, 3, 9, tzinfo=UTC),
                    "support",
                    N2,
                    hold=3,
                    ring=4,
                    talk=30,
                    agent="op1",
                ),
            ]
        )
    before = await figures(engine)
    now = datetime(2026, 4, 2, tzinfo=UTC)
    assert await privacy.anonymise_expired(engine, now, calls=D30, contacts=D30) == 5  # N1, N3, N5, N6, N8
    left = await numbers_in(engine)
    assert {N2, N4, N7} <= left  # rows on or after 3 March, or an open request
    assert await figures(engine) == before
    # Control: splitting N2 row by row does change the figures, so the comparison above can fail.
    async with engine.begin() as c:
        await c.execute(sa.update(m.Call).where(m.Call.linkedid == "L9").values(number="anon-split"))
    assert await figures(engine) != before
