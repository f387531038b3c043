"""The attempt tracker driven with AMI traces recorded on the lab (bench/data/ami-lab.trace.gz: 20
callbacks of every kind, in Asterisk's own order), then with the faults a trace cannot show:
an AMI gap, a deadline, a refused Originate."""

from __future__ import annotations

import gzip
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import pytest

from callbackd.domain.attempts import (
    Attempt,
    AttemptTracker,
    Ended,
    Mark,
    Pause,
    Release,
    Timing,
)
from callbackd.domain.outcomes import Outcome
from callbackd.domain.states import ATTEMPT_TRANSITIONS, AttemptStatus

TRACE = Path(__file__).resolve().parents[2] / "bench" / "data" / "ami-lab.trace.gz"
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
TIMING = Timing(operator_ring=timedelta(seconds=10), client_ring=timedelta(seconds=15))


@cache
def recorded() -> dict[str, list[dict[str, str]]]:
    """Each callback's events in the recorded stream, by attempt id, in arrival order."""
    by_attempt: dict[str, list[dict[str, str]]] = {}
    with gzip.open(TRACE, "rt") as f:
        for chunk in f.read().split("\n\n"):
            ev = dict(ln.split(": ", 1) for ln in chunk.splitlines() if ": " in ln and not ln.startswith(";"))
            key = ev.get("Linkedid") or ev.get("Uniqueid") or ""
            if ev.get("UserEvent") == "CallbackdResult":
                key = "cbd-" + ev.get("Attempt", "")
            if key.startswith("cbd-"):
                by_attempt.setdefault(key[4:], []).append(ev)
    return by_attempt


def begin(attempt: str, operator: str = "PJSIP/op1") -> tuple[AttemptTracker, Attempt]:
    tracker = AttemptTracker(TIMING)
    att = Attempt(attempt, f"cbd-{attempt}", 7, "+12025550301", operator, 1, started_at=T0)
    assert tracker.begin(att, T0) == []
    return tracker, att


def play(tracker: AttemptTracker, att: Attempt, events: list[dict[str, str]]) -> list:
    """Feed a recorded call the way the dialer does: the OriginateResponse as the Originate's
    reply (after its ack), everything else as events, one tenth of a second apart."""
    out: list = []
    for i, ev in enumerate(events):
        now = T0 + timedelta(seconds=i / 10)
        if ev.get("Event") == "OriginateResponse":
            out += tracker.originate_replied(att.channel_id, [{"Response": "Success"}, ev], now)
        else:
            out += tracker.feed(ev, now)
    return out


def marks(actions) -> list[AttemptStatus]:
    return [a.status for a in actions if isinstance(a, Mark)]


def ended(actions) -> Ended:
    [end] = [a for a in actions if isinstance(a, Ended)]
    return end


def walk_is_legal(statuses: list[AttemptStatus]) -> None:
    """Every step the tracker took is in the attempt table (the live rule)."""
    legal = {(before, after) for (before, _e), after in ATTEMPT_TRANSITIONS.items()}
    steps = list(zip([AttemptStatus.DIALLING, *statuses], statuses, strict=False))
    assert all(step in legal for step in steps), steps


def test_every_recorded_callback_ends_once_with_its_outcome():
    outcomes: Counter[Outcome] = Counter()
    for attempt, events in recorded().items():
        tracker, att = begin(attempt)
        out = play(tracker, att, events)
        end = ended(out)
        outcomes[end.outcome] += 1
        walk_is_legal(marks(out))
        assert Release("PJSIP/op1") in out and tracker.attempts == {}
        assert att.status is AttemptStatus.DONE
        if end.outcome is Outcome.ANSWERED:
            assert marks(out)[-1] is AttemptStatus.BRIDGED and end.fields["talk_seconds"] >= 0
            assert end.fields["originate_reason"] == "answered"
        # Nothing after the end changes anything.
        assert tracker.tick(T0 + timedelta(days=1)) == []
    assert outcomes == {
        Outcome.ANSWERED: 12,
        Outcome.INVALID_NUMBER: 4,  # CHANUNAVAIL with Q.850 cause 1 (the PSTN's 404)
        Outcome.CLIENT_BUSY: 2,
        Outcome.CLIENT_CONGESTION: 1,
        Outcome.CLIENT_NO_ANSWER: 1,
    }


def first(dial_status: str) -> tuple[str, list[dict[str, str]]]:
    for attempt, events in recorded().items():
        if any(e.get("DialStatus") == dial_status and e.get("UserEvent") for e in events):
            return attempt, events
    raise AssertionError(f"no {dial_status} callback in the trace")


def test_a_busy_client_from_the_lab_keeps_its_cause():
    attempt, events = first("BUSY")
    tracker, att = begin(attempt)
    end = ended(play(tracker, att, events))
    assert end.outcome is Outcome.CLIENT_BUSY and end.fields["hangup_cause"] == 17


def test_ami_cut_after_the_ack_and_the_channel_gone_at_the_resync_is_result_lost():
    """The link drops right after the Originate's ack; the call ends unseen. At the resync the
    channel is not listed: the attempt ends at once (counted), the operator is free."""
    attempt, _events = first("ANSWER")
    tracker, _att = begin(attempt)  # the ack came, then nothing: the link is gone
    asked = T0 + timedelta(seconds=40)
    out = tracker.resync({"1795400063.5"}, asked, asked)
    end = ended(out)
    assert end.outcome is Outcome.RESULT_LOST and Release("PJSIP/op1") in out
    assert tracker.attempts == {}


def test_a_channel_still_listed_at_the_resync_is_followed_to_its_result():
    attempt, events = first("ANSWER")
    tracker, att = begin(attempt)
    asked = T0 + timedelta(seconds=1)
    assert tracker.resync({att.channel_id}, asked, asked) == []
    out = play(tracker, att, events)
    assert ended(out).outcome is Outcome.ANSWERED


def test_an_attempt_begun_after_the_snapshot_is_not_judged_by_it():
    tracker, _att = begin("late")
    assert tracker.resync(set(), T0 - timedelta(seconds=1), T0) == []
    assert tracker.attempts


@pytest.mark.parametrize(
    ("events", "status", "limit"),
    [
        ([], AttemptStatus.DIALLING, TIMING.operator_ring + TIMING.originate_slack),
        ([("Newstate", {"ChannelState": "6"})], AttemptStatus.OPERATOR_UP, TIMING.whisper),
        ([("DialBegin", {})], AttemptStatus.CLIENT_RINGING, TIMING.client_ring + TIMING.client_slack),
    ],
)
def test_every_stage_has_a_deadline_and_never_waits_forever(events, status, limit):
    tracker, att = begin("a1")
    for name, extra in events:
        tracker.feed({"Event": name, "Linkedid": att.channel_id, "Uniqueid": att.channel_id, **extra}, T0)
    assert att.status is status
    assert tracker.tick(T0 + limit - timedelta(seconds=1)) == []
    out = tracker.tick(T0 + limit)
    assert ended(out).outcome is Outcome.RESULT_LOST and Release("PJSIP/op1") in out
    assert tracker.next_deadline() is None


def test_hangup_without_a_result_is_judged_from_what_was_seen_after_the_grace():
    tracker, att = begin("a2")
    ev = {"Linkedid": att.channel_id, "Uniqueid": att.channel_id}
    tracker.feed({"Event": "DialBegin", **ev}, T0)
    tracker.feed({"Event": "BridgeEnter", **ev}, T0)
    tracker.feed({"Event": "BridgeEnter", **ev, "Uniqueid": "x"}, T0 + timedelta(seconds=1))
    tracker.feed({"Event": "Hangup", **ev}, T0 + timedelta(seconds=30))
    assert tracker.tick(T0 + timedelta(seconds=32)) == []
    end = ended(tracker.tick(T0 + timedelta(seconds=33)))
    assert end.outcome is Outcome.ANSWERED and end.fields["talk_seconds"] == 32


def test_a_refused_originate_pauses_dialling():
    tracker, att = begin("a3")
    out = tracker.originate_replied(att.channel_id, [{"Response": "Error", "Message": "nope"}], T0)
    assert ended(out).outcome is Outcome.OPERATOR_NO_ANSWER
    assert Pause(T0 + TIMING.refused_pause) in out


def test_an_originate_that_could_not_be_sent_ends_at_once():
    tracker, att = begin("a4")
    out = tracker.originate_failed(att.channel_id, "AMI is not connected", T0)
    assert ended(out).fields["originate_reason"].startswith("ami:")
    assert tracker.attempts == {}


def test_events_of_other_calls_change_nothing():
    _attempt, events = first("ANSWER")
    tracker, att = begin("someone-else")
    assert [a for e in events for a in tracker.feed(e, T0)] == []
    assert att.status is AttemptStatus.DIALLING


def test_an_operator_behind_a_local_channel_is_not_the_client_answering():
    """FreePBX members are reached through a Local channel, whose own bridge (Local;2 and the
    phone) shares our Linkedid: only the bridge our channel is in says the client answered."""
    tracker, att = begin("a5")
    ev = {"Linkedid": att.channel_id}
    tracker.feed({"Event": "DialBegin", "Uniqueid": att.channel_id, **ev}, T0)
    for uid in ("local-2", "phone"):
        assert (
            tracker.feed({"Event": "BridgeEnter", "BridgeUniqueid": "op-bridge", "Uniqueid": uid, **ev}, T0)
            == []
        )
    assert att.status is AttemptStatus.CLIENT_RINGING
    out: list = []
    for uid in (att.channel_id, "client"):
        out += tracker.feed({"Event": "BridgeEnter", "BridgeUniqueid": "b2", "Uniqueid": uid, **ev}, T0)
    assert marks(out) == [AttemptStatus.BRIDGED]
