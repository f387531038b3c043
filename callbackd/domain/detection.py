"""Missed-call detection from plain AMI event dicts.

One inbound call is every channel sharing a ``Linkedid``. The detector follows
each call from its first channel to the root channel's hang-up and reports:

- :class:`Missed` as soon as a call is known to be lost (at once for a queue
  abandon, so the callback can start within milliseconds; at the hang-up for
  timeouts, unanswered ring groups and IVR hang-ups);
- :class:`Answered` when an operator picks the call up (self-recovery);
- :class:`CallEnded` once per call, answered or not, for the report denominators.

Only calls that came in count. A call placed *from* the PBX (AMI Originate, call
files: click-to-call, other dialers) also has a root channel in the trunk's
context, but it starts in state Down with no caller number, and its first dial
(a DialBegin with only Dest* fields) names the root channel as the one dialled.
Such a call is dropped at that DialBegin; one that never gets a caller number
is dropped at its end. Neither is a missed call or an offered call.

It is fed dicts (header -> value), never panoramisk objects, and takes the
clock as an argument, so tests drive it with recorded traces and no event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from callbackd.domain.operators import device_of

# Every channel callbackd originates has a Uniqueid (and so a Linkedid) starting with this.
CALLBACK_CHANNEL_PREFIX = "cbd-"


class MissReason(StrEnum):
    QUEUE_ABANDON = "queue_abandon"
    QUEUE_TIMEOUT = "queue_timeout"  # left the queue with no agent (timeout, leave/join-empty)
    NO_ANSWER = "no_answer"  # a ring group or extension nobody answered
    IVR_HANGUP = "ivr_hangup"  # hung up before reaching anyone
    AFTER_HOURS = "after_hours"


@dataclass(frozen=True)
class DetectionRules:
    """Which calls count. Empty sets mean "any"."""

    inbound_contexts: frozenset[str] = frozenset({"from-pstn"})
    queues: frozenset[str] = frozenset()
    dids: frozenset[str] = frozenset()
    # Caller IDs this short are internal extensions, never clients.
    internal_max_digits: int = 5
    own_numbers: frozenset[str] = frozenset()
    # Contexts operators dial out from: an answered call from there to a client recovers
    # the client's open request. Empty: manual calls are not watched.
    outbound_contexts: frozenset[str] = frozenset()
    # A call with no news for this long is dropped from memory (lost hang-up).
    stale_after: timedelta = timedelta(hours=6)


@dataclass
class CallTrack:
    linkedid: str
    caller_num: str
    caller_name: str
    did: str
    context: str
    started_at: datetime
    queue: str | None = None
    joined_at: datetime | None = None
    left_at: datetime | None = None
    answered_at: datetime | None = None
    # The operator's identity: the queue member's interface (AgentConnect's Interface), or
    # the device of the answering channel for a plain Dial; see operators.device_of.
    agent: str | None = None
    agent_name: str | None = None
    hold_time: int | None = None
    abandoned_at: datetime | None = None
    ended_at: datetime | None = None
    dialled: bool = False
    after_hours: bool = False
    # The caller's side hung up (HangupRequest: a BYE from the caller's phone or trunk),
    # as opposed to the PBX ending the call (busy, time-out, dialplan Hangup()).
    hangup_requested: bool = False
    missed: MissReason | None = None
    # Started Down with no caller number: not yet known to be an inbound call.
    unconfirmed: bool = False
    # Uniqueids of the channels the queue rang (AgentCalled): their DialEnd ANSWER comes
    # before AgentConnect, which is the one that carries the member and HoldTime.
    member_legs: set[str] = field(default_factory=set)
    last_seen: datetime = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.last_seen is None:
            self.last_seen = self.started_at

    @property
    def answered(self) -> bool:
        return self.answered_at is not None


@dataclass(frozen=True)
class Missed:
    linkedid: str
    caller_num: str
    caller_name: str
    reason: MissReason
    queue: str | None
    did: str
    # Seconds the caller waited before giving up (queue hold time, or the call's length).
    waited: int
    at: datetime
    # True when the caller hung up; only such calls can be short abandons.
    caller_gave_up: bool = True


@dataclass(frozen=True)
class Answered:
    linkedid: str
    caller_num: str
    agent: str | None
    at: datetime


@dataclass(frozen=True)
class OutboundAnswered:
    """An operator dialled a number by hand and it answered."""

    number: str
    linkedid: str
    at: datetime


@dataclass(frozen=True)
class CallEnded:
    call: CallTrack


DetectorEvent = Missed | Answered | OutboundAnswered | CallEnded


_MAX_OUTBOUND = 10_000


def _dialled_number(dial_string: str) -> str:
    """The number in a Dial() argument: '+12025550143@trunk', 'trunk/0049301234567'."""
    target = dial_string.split("&", 1)[0].split("@", 1)[0].rsplit("/", 1)[-1].strip()
    digits = target.lstrip("+")
    return target if digits.isdigit() and len(digits) >= 6 else ""


# What AMI shows for a channel without a caller number.
_NO_NUMBER = frozenset({"", "<unknown>"})
CHANNEL_STATE_DOWN = "0"


def _unconfirmed(ev: Mapping[str, str]) -> bool:
    """A root channel that starts Down with no caller number: how outbound calls begin."""
    return ev.get("ChannelState") == CHANNEL_STATE_DOWN and ev.get("CallerIDNum", "") in _NO_NUMBER


def _seconds(a: datetime | None, b: datetime | None) -> int:
    if a is None or b is None:
        return 0
    return max(0, round((b - a).total_seconds()))


def _duration(text: str) -> int:
    """CoreShowChannel's Duration, HH:MM:SS."""
    try:
        h, m, sec = (int(x) for x in text.split(":"))
    except ValueError:
        return 0
    return h * 3600 + m * 60 + sec


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class Detector:
    """Per-call state keyed by Linkedid; see the module docstring."""

    def __init__(self, rules: DetectionRules | None = None) -> None:
        self.rules = rules or DetectionRules()
        self.calls: dict[str, CallTrack] = {}
        # Manual outbound dials in progress: dest Uniqueid -> dialled number.
        self.outbound: dict[str, str] = {}

    def feed(self, event: Mapping[str, str], now: datetime) -> list[DetectorEvent]:
        name = event.get("Event", "")
        handler = getattr(self, f"_on_{name}", None)
        if handler is None:
            return []
        # An Originate's first DialBegin has no calling channel, only Dest* fields.
        linkedid = event.get("Linkedid") or event.get("DestLinkedid") or ""
        if not linkedid:
            return []
        return handler(event, linkedid, now)

    # -- call start -----------------------------------------------------------------

    def _counts(self, event: Mapping[str, str]) -> bool:
        # A callback leg carries the client's caller ID but is not an offered call: its wait is the
        # callback's, reported on its own, never an answer in ASA.
        if event.get("Linkedid", "").startswith(CALLBACK_CHANNEL_PREFIX):
            return False
        rules = self.rules
        if rules.inbound_contexts and event.get("Context", "") not in rules.inbound_contexts:
            return False
        return not (rules.dids and event.get("Exten", "") not in rules.dids)

    def _is_client(self, number: str) -> bool:
        digits = "".join(ch for ch in number if ch.isdigit())
        if 0 < len(digits) <= self.rules.internal_max_digits:
            return False
        own = self.rules.own_numbers
        return not (own and (number in own or f"+{digits}" in own or digits in own))

    def _on_Newchannel(self, ev: Mapping[str, str], linkedid: str, now: datetime) -> list[DetectorEvent]:
        if ev.get("Uniqueid") != linkedid or linkedid in self.calls or not self._counts(ev):
            return []
        caller = ev.get("CallerIDNum", "")
        if not self._is_client(caller):
            return []
        self.calls[linkedid] = CallTrack(
            linkedid=linkedid,
            caller_num=caller,
            caller_name=ev.get("CallerIDName", ""),
            did=ev.get("Exten", ""),
            context=ev.get("Context", ""),
            started_at=now,
            unconfirmed=_unconfirmed(ev),
        )
        return []

    def _on_NewCallerid(self, ev: Mapping[str, str], linkedid: str, now: datetime) -> list[DetectorEvent]:
        """Late caller numbers (analog/DAHDI trunks) and dialplan rewrites of CALLERID(num).

        The number is followed until the call is decided (missed or answered): what was
        reported then is what the request holds.
        """
        call = self._track(linkedid, now)
        if call is None or ev.get("Uniqueid") != linkedid or call.answered or call.missed is not None:
            return []
        number = ev.get("CallerIDNum", "")
        if number in _NO_NUMBER:
            return []
        if not self._is_client(number):
            del self.calls[linkedid]  # an extension or one of our own numbers after all
            return []
        call.caller_num = number
        call.caller_name = ev.get("CallerIDName", call.caller_name)
        call.unconfirmed = False
        return []

    def _track(self, linkedid: str, now: datetime) -> CallTrack | None:
        call = self.calls.get(linkedid)
        if call is not None:
            call.last_seen = now
        return call

    # -- queue ------------------------------------------------------------------------

    def _on_QueueCallerJoin(self, ev: Mapping[str, str], linkedid: str, now: datetime) -> list[DetectorEvent]:
        call = self._track(linkedid, now)
        if call is None:
            return []
        queue = ev.get("Queue", "")
        if self.rules.queues and queue not in self.rules.queues:
            return []
        call.queue = queue
        call.joined_at = now
        return []

    def _on_QueueCallerLeave(
        self, ev: Mapping[str, str], linkedid: str, now: datetime
    ) -> list[DetectorEvent]:
        call = self._track(linkedid, now)
        if call is not None and call.queue is not None and ev.get("Queue") == call.queue:
            call.left_at = now
        return []

    def _on_AgentCalled(self, ev: Mapping[str, str], linkedid: str, now: datetime) -> list[DetectorEvent]:
        call = self._track(linkedid, now)
        if call is not None and ev.get("DestUniqueid"):
            call.member_legs.add(ev["DestUniqueid"])
        return []

    def _on_AgentConnect(self, ev: Mapping[str, str], linkedid: str, now: datetime) -> list[DetectorEvent]:
        """The queue's answer: HoldTime is Asterisk's own, Interface the member who took it."""
        call = self._track(linkedid, now)
        if call is None or call.answered:
            return []
        call.hold_time = _int(ev.get("HoldTime"))
        call.agent_name = ev.get("MemberName") or None
        return self._answer(call, ev.get("Interface") or ev.get("MemberName"), now)

    def _on_QueueCallerAbandon(
        self, ev: Mapping[str, str], linkedid: str, now: datetime
    ) -> list[DetectorEvent]:
        """Asterisk 22 raises this for a queue time-out too; only a caller's hang-up is an abandon.

        A hang-up from the caller's side shows first as HangupRequest on the root channel.
        Without it the caller is still on the line and goes on in the dialplan, so the call
        is judged at its hang-up (QUEUE_TIMEOUT unless someone answers it later).
        """
        call = self._track(linkedid, now)
        if call is None or call.answered or call.queue is None:
            return []
        call.hold_time = _int(ev.get("HoldTime"))
        if not call.hangup_requested:
            return []
        call.abandoned_at = now
        waited = call.hold_time if call.hold_time is not None else _seconds(call.joined_at, now)
        return self._miss(call, MissReason.QUEUE_ABANDON, waited, now)

    def _on_HangupRequest(self, ev: Mapping[str, str], linkedid: str, now: datetime) -> list[DetectorEvent]:
        call = self._track(linkedid, now)
        if call is not None and ev.get("Uniqueid") == linkedid:
            call.hangup_requested = True
        return []

    # -- ring groups, extensions, after hours -------------------------------------------

    def _on_DialBegin(self, ev: Mapping[str, str], linkedid: str, now: datetime) -> list[DetectorEvent]:
        call = self._track(linkedid, now)
        if call is not None and not ev.get("Uniqueid") and ev.get("DestUniqueid") == linkedid:
            # Originate-shaped: nobody called in, the PBX dialled this channel out.
            del self.calls[linkedid]
            return []
        if call is not None:
            call.dialled = True
        elif (
            self.rules.outbound_contexts
            and ev.get("Context") in self.rules.outbound_contexts
            and not linkedid.startswith(CALLBACK_CHANNEL_PREFIX)
            and len(self.outbound) < _MAX_OUTBOUND
        ):
            number = _dialled_number(ev.get("DialString", ""))
            if number:
                self.outbound[ev.get("DestUniqueid", "")] = number
        return []

    def _on_DialEnd(self, ev: Mapping[str, str], linkedid: str, now: datetime) -> list[DetectorEvent]:
        number = self.outbound.pop(ev.get("DestUniqueid", ""), None)
        if number is not None:
            if ev.get("DialStatus") == "ANSWER":
                return [OutboundAnswered(number, linkedid, now)]
            return []
        call = self._track(linkedid, now)
        if call is None or call.answered or ev.get("DialStatus") != "ANSWER":
            return []
        if ev.get("Uniqueid") != linkedid:
            return []  # a Local channel's own Dial (FreePBX members): the root's dial decides
        if ev.get("DestUniqueid") in call.member_legs:
            return []  # a queue member: AgentConnect follows with the member and the hold time
        return self._answer(call, device_of(ev.get("DestChannel", "")) or None, now)

    def _on_UserEvent(self, ev: Mapping[str, str], linkedid: str, now: datetime) -> list[DetectorEvent]:
        """``UserEvent(CallbackdMark,Reason: after_hours)`` from dialplans/ marks a call."""
        call = self._track(linkedid, now)
        if call is not None and ev.get("UserEvent") == "CallbackdMark" and ev.get("Reason") == "after_hours":
            call.after_hours = True
        return []

    # -- end ----------------------------------------------------------------------------

    def _on_Hangup(self, ev: Mapping[str, str], linkedid: str, now: datetime) -> list[DetectorEvent]:
        if ev.get("Uniqueid") != linkedid:
            return []
        call = self.calls.pop(linkedid, None)
        if call is None or call.unconfirmed:
            return []
        call.ended_at = now
        out: list[DetectorEvent] = []
        if not call.answered and call.missed is None:
            waited = _seconds(call.started_at, now)
            if call.after_hours:
                reason = MissReason.AFTER_HOURS
            elif call.queue is not None:
                reason = MissReason.QUEUE_TIMEOUT
                # The time in the queue, not the whole call (IVR and goodbye included).
                waited = call.hold_time
                if waited is None:
                    waited = _seconds(call.joined_at, call.left_at or now)
            elif call.dialled:
                reason = MissReason.NO_ANSWER
            else:
                reason = MissReason.IVR_HANGUP
            out.extend(self._miss(call, reason, waited, now))
        out.append(CallEnded(call))
        return out

    def _miss(self, call: CallTrack, reason: MissReason, waited: int, now: datetime) -> list[DetectorEvent]:
        if call.missed is not None or call.unconfirmed:
            return []
        call.missed = reason
        return [
            Missed(
                call.linkedid,
                call.caller_num,
                call.caller_name,
                reason,
                call.queue,
                call.did,
                waited,
                now,
                caller_gave_up=call.hangup_requested,
            )
        ]

    def _answer(self, call: CallTrack, agent: str | None, now: datetime) -> list[DetectorEvent]:
        call.answered_at = now
        call.agent = agent
        return [Answered(call.linkedid, call.caller_num, agent, now)]

    def resync(
        self, channels: Iterable[Mapping[str, str]], queue_status: Iterable[Mapping[str, str]], now: datetime
    ) -> list[CallTrack]:
        """After an AMI gap or a restart: follow calls already in progress, forget ended ones.

        ``channels`` are CoreShowChannel events, ``queue_status`` QueueStatus events
        (QueueEntry tells which queue a caller waits in). Calls that ended during the gap
        are returned: nobody saw how they ended, so they are reported, not guessed.
        """
        live = {c.get("Linkedid", "") for c in channels}
        lost = [call for lid, call in self.calls.items() if lid not in live]
        for call in lost:
            del self.calls[call.linkedid]
        waiting = {e.get("Uniqueid", ""): e for e in queue_status if e.get("Event") == "QueueEntry"}
        for ch in channels:
            lid = ch.get("Linkedid", "")
            if ch.get("Uniqueid") != lid or lid in self.calls or not self._counts(ch):
                continue
            if not self._is_client(ch.get("CallerIDNum", "")) or _unconfirmed(ch):
                continue
            call = CallTrack(
                linkedid=lid,
                caller_num=ch.get("CallerIDNum", ""),
                caller_name=ch.get("CallerIDName", ""),
                did=ch.get("Exten", ""),
                context=ch.get("Context", ""),
                started_at=now - timedelta(seconds=_duration(ch.get("Duration", ""))),
            )
            entry = waiting.get(lid)
            if entry is not None and (not self.rules.queues or entry.get("Queue") in self.rules.queues):
                call.queue = entry.get("Queue")
                call.joined_at = now - timedelta(seconds=_int(entry.get("Wait")) or 0)
            elif ch.get("BridgeId"):
                call.answered_at = now  # talking to someone already
            self.calls[lid] = call
        return lost

    def expire(self, now: datetime) -> list[CallTrack]:
        """Forget calls whose hang-up never arrived; returns them for logging."""
        cutoff = now - self.rules.stale_after
        stale = [c for c in self.calls.values() if c.last_seen < cutoff]
        for call in stale:
            del self.calls[call.linkedid]
        return stale
