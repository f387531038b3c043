"""Follows callback attempts from AMI events and the clock, the way the detector follows calls.

Pure: fed event dicts, Originate replies, resync snapshots and clock ticks, it
returns actions for the dialer to apply (store this status, this attempt ended
with that outcome, release this operator, pause dialling). It never waits: every
stage has a deadline, and an attempt that passes it, or whose channel is missing
at a resync, ends as ``result_lost`` (counted, next rung). Every status change
goes through the attempt table in :mod:`callbackd.domain.states`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from callbackd.domain.outcomes import (
    Outcome,
    client_leg_outcome,
    operator_leg_outcome,
    originate_reason_text,
)
from callbackd.domain.states import AttemptEvent, AttemptStatus, attempt_transition

RESULT_EVENT = "CallbackdResult"
_S = AttemptStatus
_E = AttemptEvent


@dataclass(frozen=True)
class Timing:
    """How long each stage may last before the attempt is given up as ``result_lost``."""

    operator_ring: timedelta
    client_ring: timedelta
    # Beyond the operator's ring time, for the OriginateResponse to arrive.
    originate_slack: timedelta = timedelta(seconds=15)
    # From the operator's answer to the client being dialled (the whisper).
    whisper: timedelta = timedelta(seconds=60)
    client_slack: timedelta = timedelta(seconds=15)
    # A talk longer than this is not followed any more: the operator is released.
    talk: timedelta = timedelta(hours=4)
    # After the operator's channel hangs up, how long the bridge context's result may take.
    result_grace: timedelta = timedelta(seconds=3)
    # After the PBX refuses an Originate (booting, module missing): dial nothing for this long.
    refused_pause: timedelta = timedelta(seconds=30)

    def limit(self, status: AttemptStatus) -> timedelta:
        return {
            _S.DIALLING: self.operator_ring + self.originate_slack,
            _S.OPERATOR_UP: self.whisper,
            _S.CLIENT_RINGING: self.client_ring + self.client_slack,
            _S.BRIDGED: self.talk,
        }[status]


@dataclass
class Attempt:
    """One attempt in flight, as far as the events tell."""

    attempt_id: str
    channel_id: str
    request_id: int
    number: str
    operator: str
    try_no: int
    started_at: datetime
    status: AttemptStatus = _S.DIALLING
    deadline: datetime = field(default=datetime.max)
    bridged: int = 0
    # Bridge id -> channels seen entering it. Only the bridge our own channel is in counts:
    # an operator reached through a Local channel (FreePBX members) has a bridge of its own.
    bridges: dict[str, set[str]] = field(default_factory=dict)
    operator_answered_at: datetime | None = None
    client_answered_at: datetime | None = None
    hungup_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- actions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """Store the attempt's new status (and the times that came with it)."""

    attempt: Attempt
    status: AttemptStatus
    fields: dict[str, Any]


@dataclass(frozen=True)
class Ended:
    """The attempt is over with this outcome; store it (until stored)."""

    attempt: Attempt
    outcome: Outcome
    fields: dict[str, Any]


@dataclass(frozen=True)
class Release:
    operator: str


@dataclass(frozen=True)
class Pause:
    """Start no attempt before ``until``."""

    until: datetime


Action = Mark | Ended | Release | Pause


class AttemptTracker:
    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self.attempts: dict[str, Attempt] = {}  # by channel id (= the Linkedid of its channels)

    # -- inputs ------------------------------------------------------------------------

    def begin(self, att: Attempt, now: datetime) -> list[Action]:
        """Follow a new attempt (its row is written, the Originate about to go out)."""
        att.deadline = now + self.timing.limit(att.status)
        self.attempts[att.channel_id] = att
        return []

    def adopt(self, att: Attempt, now: datetime) -> list[Action]:
        """Follow an attempt left in flight (restart, another node's) whose channel is still up."""
        if att.status == _S.BRIDGED:
            att.bridged = 2
        return self.begin(att, now)

    def originate_failed(self, channel_id: str, error: str, now: datetime) -> list[Action]:
        """The Originate could not be sent: nobody was rung."""
        att = self.attempts.get(channel_id)
        if att is None:
            return []
        return self._end(att, Outcome.OPERATOR_NO_ANSWER, now, originate_reason=f"ami:{error}"[:24])

    def originate_replied(
        self, channel_id: str, replies: list[dict[str, str]], now: datetime
    ) -> list[Action]:
        """The Originate's ack and OriginateResponse."""
        att = self.attempts.get(channel_id)
        if att is None or not replies:
            return []
        ack = replies[0]
        if ack.get("Response") == "Error":
            out = self._end(att, Outcome.OPERATOR_NO_ANSWER, now, originate_reason="refused")
            return [*out, Pause(now + self.timing.refused_pause)]
        reason = replies[-1].get("Reason", "")
        att.extra["originate_reason"] = originate_reason_text(reason)
        op_outcome = operator_leg_outcome(reason)
        if op_outcome is not None:
            return self._end(att, op_outcome, now)
        return self._operator_up(att, now)

    def feed(self, ev: dict[str, str], now: datetime) -> list[Action]:
        """One AMI event; events of other calls are ignored."""
        name = ev.get("Event")
        if name == "UserEvent" and ev.get("UserEvent") == RESULT_EVENT:
            att = self._by_attempt(ev.get("Attempt", ""))
            return self._result(att, ev, now) if att is not None else []
        att = self.attempts.get(ev.get("Linkedid", ""))
        if att is None:
            return []
        own = ev.get("Uniqueid", "") == att.channel_id
        if name == "Newstate" and own and ev.get("ChannelState") == "6":
            return self._operator_up(att, now)
        if name == "DialBegin" and own:
            return self._client_dialled(att, now)
        if name == "BridgeEnter":
            members = att.bridges.setdefault(ev.get("BridgeUniqueid", ""), set())
            members.add(ev.get("Uniqueid", ""))
            if att.channel_id in members and len(members) >= 2 and att.bridged < 2:
                att.bridged = 2
                return self._client_answered(att, now)
            return []
        if name == "Hangup" and own and att.hungup_at is None:
            att.hungup_at = now
            att.deadline = now + self.timing.result_grace
        return []

    def tick(self, now: datetime) -> list[Action]:
        """End every attempt whose deadline has passed."""
        out: list[Action] = []
        for att in [a for a in self.attempts.values() if a.deadline <= now]:
            out += self._end(att, self._judge(att), now)
        return out

    def resync(self, live: set[str], asked_at: datetime, now: datetime) -> list[Action]:
        """After an AMI gap: ``live`` holds the Uniqueids and Linkedids CoreShowChannels listed
        at ``asked_at``. An attempt begun before then whose channel is gone ended unseen."""
        out: list[Action] = []
        for att in list(self.attempts.values()):
            if att.channel_id in live or att.started_at >= asked_at:
                continue
            out += self._end(att, self._judge(att), now)
        return out

    def gone(self, channel_id: str, now: datetime) -> list[Action]:
        """The attempt's channel is not live (checked just now): it ended unseen."""
        att = self.attempts.get(channel_id)
        return self._end(att, self._judge(att), now) if att is not None else []

    # -- what the daemon shows ---------------------------------------------------------

    def next_deadline(self) -> datetime | None:
        return min((a.deadline for a in self.attempts.values()), default=None)

    def numbers(self) -> set[str]:
        return {a.number for a in self.attempts.values()}

    # -- transitions -------------------------------------------------------------------

    def _by_attempt(self, attempt_id: str) -> Attempt | None:
        return next((a for a in self.attempts.values() if a.attempt_id == attempt_id), None)

    def _move(self, att: Attempt, event: AttemptEvent, now: datetime, **fields: Any) -> list[Action]:
        att.status = attempt_transition(att.status, event)
        if att.hungup_at is None:
            att.deadline = now + self.timing.limit(att.status)
        return [Mark(att, att.status, fields)]

    def _operator_up(self, att: Attempt, now: datetime) -> list[Action]:
        if att.status != _S.DIALLING:
            return []  # the OriginateResponse and Newstate both say so; the first one counts
        att.operator_answered_at = now
        return self._move(att, _E.OPERATOR_ANSWERED, now, operator_answered_at=now)

    def _client_dialled(self, att: Attempt, now: datetime) -> list[Action]:
        out = self._operator_up(att, now)  # an answer missed in a gap is implied by the dial
        if att.status != _S.OPERATOR_UP:
            return out
        return out + self._move(att, _E.CLIENT_DIALLED, now)

    def _client_answered(self, att: Attempt, now: datetime) -> list[Action]:
        out = self._client_dialled(att, now)
        if att.status != _S.CLIENT_RINGING:
            return out
        att.client_answered_at = now
        return out + self._move(att, _E.CLIENT_ANSWERED, now, client_answered_at=now)

    def _result(self, att: Attempt, ev: dict[str, str], now: datetime) -> list[Action]:
        """The bridge context's CallbackdResult: the client leg's own verdict."""
        outcome = client_leg_outcome(ev.get("Stage", ""), ev.get("DialStatus", ""), ev.get("ClientCause"))
        fields: dict[str, Any] = {
            "dial_status": ev.get("DialStatus") or None,
            "hangup_cause": _int(ev.get("ClientCause")) or _int(ev.get("HangupCause")),
        }
        if outcome is Outcome.ANSWERED:
            fields["talk_seconds"] = _talk_seconds(att, ev, now)
        return self._end(att, outcome, now, **fields)

    def _judge(self, att: Attempt) -> Outcome:
        """The outcome when no result came: only what was seen, never a guess that saves a try."""
        if att.bridged >= 2:
            return Outcome.ANSWERED  # the client was reached; only the talk time is unknown
        if att.hungup_at is not None and att.operator_answered_at is None:
            return Outcome.OPERATOR_NO_ANSWER  # the operator's channel ended unanswered, seen
        return Outcome.RESULT_LOST

    def _end(self, att: Attempt, outcome: Outcome, now: datetime, **fields: Any) -> list[Action]:
        self.attempts.pop(att.channel_id, None)
        att.status = attempt_transition(att.status, _E.FINISHED)
        merged = {**att.extra, **fields}
        if att.operator_answered_at is not None:
            merged.setdefault("operator_answered_at", att.operator_answered_at)
        if att.client_answered_at is not None:
            merged.setdefault("client_answered_at", att.client_answered_at)
            if outcome is Outcome.ANSWERED:
                merged.setdefault("talk_seconds", _talk_seconds(att, {}, now))
        merged = {k: v for k, v in merged.items() if v is not None}
        return [Ended(att, outcome, merged), Release(att.operator)]


def _talk_seconds(att: Attempt, ev: dict[str, str], now: datetime) -> int | None:
    """From the bridge to now; ANSWEREDTIME counts from the operator's answer."""
    if att.client_answered_at is not None:
        return max(0, round((now - att.client_answered_at).total_seconds()))
    return _int(ev.get("AnsweredTime"))


def _int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None
