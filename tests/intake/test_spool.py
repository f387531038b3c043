"""The spool file on its own: what a crash leaves, the bound, dropping the replayed head."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from callbackd.adapters.spool import Recovery, Spool, Spooled, SpoolFull
from callbackd.domain.detection import CallTrack, MissReason
from callbackd.domain.intake import Contact, Source
from callbackd.lifecycle import Lifecycle

AT = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def contact(ref: str) -> Spooled:
    c = Contact(Source.MQTT, ref, "+12025550123", "web_form", AT, name="Ada", preferred_at=AT, comment="x")
    return Spooled(c, "number_rate_limit", AT)


def test_every_kind_survives_a_reopen_in_order(tmp_path):
    call = CallTrack("1.1", "2025550123", "Ada", "100", "from-pstn", AT, queue="support")
    call.ended_at, call.missed = AT, MissReason.QUEUE_ABANDON
    call.left_at, call.member_legs = AT, {"1.2", "1.3"}
    items = [
        contact("a"),
        Spooled(call, None, AT),
        Spooled(Recovery("2025550123", AT, "client_called_in"), None, AT),
    ]
    spool = Spool(tmp_path / "s.jsonl", 10)
    spool.open()
    for e in items:
        spool.append(e)
    spool.close()
    again = Spool(tmp_path / "s.jsonl", 10)
    assert again.open() == 3
    assert list(again.items) == items
    assert again.oldest() == AT


def test_a_torn_last_line_from_a_crash_is_skipped_loudly_and_the_rest_kept(tmp_path):
    path = tmp_path / "s.jsonl"
    spool = Spool(path, 10)
    spool.open()
    spool.append(contact("a"))
    spool.close()
    with path.open("ab") as f:
        f.write(b'{"kind":"contact","da')
    with capture_logs() as logs:
        again = Spool(path, 10)
        assert again.open() == 1
    assert [e["event"] for e in logs] == ["spool.unreadable_line"] and again.unreadable == 1


def test_the_bound_refuses_unless_forced_and_dropping_the_head_rewrites_the_rest(tmp_path):
    path = tmp_path / "s.jsonl"
    spool = Spool(path, 2)
    spool.open()
    spool.append(contact("a"))
    spool.append(contact("b"))
    assert spool.full
    with pytest.raises(SpoolFull):
        spool.append(contact("c"))
    spool.append(contact("c"), force=True)  # at exit the last few go in anyway
    spool.drop_head(2)
    spool.append(contact("d"))
    assert [json.loads(line)["data"]["source_ref"] for line in path.read_text().splitlines()] == ["c", "d"]
    spool.drop_head(5)
    assert path.read_text() == "" and not len(spool)
    spool.reject(contact("e"), "refused")
    assert json.loads((tmp_path / "s.jsonl.rejected").read_text())["error"] == "refused"
    spool.close()


async def test_signals_only_set_flags_a_second_one_forces():
    life = Lifecycle()
    life.request_stop()
    assert life.should_exit.is_set() and not life.force_exit.is_set()
    life.request_stop()
    assert life.force_exit.is_set()
