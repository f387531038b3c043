"""systemd's STATUS= line, from AMI, database and backlog state: pure, no event loop."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from callbackd.domain.statusline import Facts, running, waiting_for_ami, waiting_for_database


def test_waiting_for_ami_names_the_address_the_attempt_and_the_next_try():
    assert (
        waiting_for_ami("127.0.0.1:5038", 3, 4) == "waiting for AMI at 127.0.0.1:5038 (attempt 3, next in 4s)"
    )
    assert (
        waiting_for_ami("pbx:5038", 1, 0.5, "cannot connect: Connection refused")
        == "waiting for AMI at pbx:5038 (attempt 1, next in 0.5s): cannot connect: Connection refused"
    )


def test_waiting_for_the_database():
    assert waiting_for_database(2, 2.0, "database is locked") == (
        "waiting for the database (attempt 2, next in 2s): database is locked"
    )


def test_running_with_everything_up_shows_the_backlog():
    line = running(Facts("127.0.0.1:5038", ami_up=True, open_requests=3, dialling=1))
    assert line == "AMI up at 127.0.0.1:5038, database up; 3 open, 1 dialling"


def test_ami_down_since_a_local_time_in_the_report_zone():
    down = datetime(2026, 3, 2, 9, 12, tzinfo=UTC)
    line = running(
        Facts("pbx:5038", ami_up=False, ami_down_since=down, dialling=0), ZoneInfo("Europe/Moscow")
    )
    assert line.startswith("AMI down since 12:12, reconnecting, database up; ")


def test_database_down_shows_the_spool():
    down = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    facts = Facts("pbx:5038", ami_up=True, database_up=False, database_down_since=down, queued=2, spooled=7)
    assert running(facts, UTC) == (
        "AMI up at pbx:5038, database down since 09:00, spooling; 0 dialling, 2 queued, 7 spooled"
    )


def test_each_change_changes_the_line():
    base = Facts("pbx:5038", ami_up=True, open_requests=1)
    variants = [
        base,
        Facts("pbx:5038", ami_up=False, open_requests=1),
        Facts("pbx:5038", ami_up=True, database_up=False, open_requests=1),
        Facts("pbx:5038", ami_up=True, open_requests=2),
        Facts("pbx:5038", ami_up=True, open_requests=1, dialling=1),
        Facts("pbx:5038", ami_up=True, open_requests=1, spooled=1),
        Facts("pbx:5038", ami_up=True, open_requests=1, draining=True),
    ]
    assert len({running(f, UTC) for f in variants}) == len(variants)
