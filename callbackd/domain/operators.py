"""Which operator is free, from queue member events, and how to ring them.

A registered phone is not a free operator. An operator is free only when the
device is NOT_INUSE, the member is not paused, not in wrap-up after its last
call, and not already reserved by one of our own callbacks.

One operator has one identity everywhere (pool, attempts, calls, reports): the
queue member's interface as Asterisk keys members (QueueMemberStatus/AgentConnect
``Interface``, QueueStatus ``Location``), e.g. ``PJSIP/op1``,
``Local/201@from-queue/n`` (FreePBX) or ``Agent:1001`` (app_agent_pool). Its state
comes from ``StateInterface`` (``hint:201@ext-local`` on FreePBX), which is never
dialled; the member name is kept for display.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Our dialplan context that reaches a logged-in app_agent_pool agent (AgentRequest).
AGENT_CONTEXT = "callbackd-agent"
_DIALLABLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./@:+\-]{0,127}")
_AGENT = re.compile(r"Agent[:/]([0-9A-Za-z_\-]{1,40})")
# A channel name's unique suffix: PJSIP/op1-0000002a, Local/201@from-queue-00000003;1.
_CHANNEL_SUFFIX = re.compile(r"-[0-9a-f]{6,}(;[12])?$")


class UndialableMember(ValueError):
    """A member interface that cannot be put in an Originate's Channel as it is."""


def dial_channel(interface: str) -> str:
    """What an Originate rings to reach the member ``interface``.

    Channel technologies dial as they are (``PJSIP/op1``, ``SIP/201``, ``IAX2/201``,
    ``Local/201@from-queue/n``); an agent (``Agent:1001``) is not a channel, so it is
    reached through our ``callbackd-agent`` context, which runs ``AgentRequest(1001)``.
    Anything else (a ``hint:`` state interface, characters an AMI header or a dial
    string would act on) is refused.
    """
    agent = _AGENT.fullmatch(interface)
    if agent:
        return f"Local/{agent.group(1)}@{AGENT_CONTEXT}"
    if not _DIALLABLE.fullmatch(interface) or "/" not in interface or interface.startswith("hint:"):
        raise UndialableMember(f"queue member interface {interface!r} cannot be dialled")
    return interface


def device_of(channel: str) -> str:
    """The device behind a channel name: ``PJSIP/op1-0000002a`` -> ``PJSIP/op1``."""
    return _CHANNEL_SUFFIX.sub("", channel)


# Asterisk device states as QueueMemberStatus reports them.
NOT_INUSE = 1
DEVICE_STATES = {
    0: "unknown",
    1: "not_inuse",
    2: "inuse",
    3: "busy",
    4: "invalid",
    5: "unavailable",
    6: "ringing",
    7: "ringinuse",
    8: "onhold",
}


@dataclass
class Member:
    interface: str  # the identity, and what is dialled (through dial_channel)
    name: str
    state_interface: str = ""
    queues: set[str] = field(default_factory=set)
    status: int = 0
    # Pause is per queue membership: paused in sales, an operator may still take support's callbacks.
    paused_in: set[str] = field(default_factory=set)
    in_call: bool = False
    last_call: float = 0.0  # epoch seconds of the end of the last call (Asterisk's LastCall)
    wrapup: int = 0  # seconds
    last_used: float = 0.0  # when we last gave it a callback

    @property
    def paused(self) -> bool:
        """Paused in every queue it is a member of (what a wallboard shows as paused)."""
        return bool(self.queues) and self.queues <= self.paused_in

    def takes(self, queues: Iterable[str] | None) -> bool:
        """Whether it is an unpaused member of one of ``queues`` (of any of its queues when None)."""
        mine = self.queues - self.paused_in
        return bool(mine if queues is None else mine.intersection(queues))


def _int(value: object, default: int = 0) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


class OperatorPool:
    """Live view of queue members, resynced from QueueStatus after a reconnect."""

    def __init__(self, queues: Iterable[str], wrapup_seconds: int = 0) -> None:
        self.queues = frozenset(queues)
        self.default_wrapup = wrapup_seconds
        self.members: dict[str, Member] = {}
        self.reserved: set[str] = set()
        # Live callers waiting per queue, every queue (not only the dialer's): callbacks must not
        # jump ahead of them, nor take an operator Asterisk is about to ring for them.
        self.waiting: dict[str, int] = {}
        # Memberships in queues the dialer does not serve: interface -> {queue: paused}. A member
        # of support who also answers sales is needed there while sales has callers waiting.
        self.elsewhere: dict[str, dict[str, bool]] = {}

    def _wanted(self, queue: str) -> bool:
        return not self.queues or queue in self.queues

    def update(self, event: Mapping[str, str]) -> None:
        """Feed QueueMember (QueueStatus reply), QueueMemberStatus/Added/Removed/Pause."""
        name = event.get("Event", "")
        queue = event.get("Queue", "")
        if name in ("QueueCallerJoin", "QueueCallerLeave", "QueueParams"):
            count = event.get("Count") if name != "QueueParams" else event.get("Calls")
            self.waiting[queue] = _int(count)
            return
        interface = event.get("Interface") or event.get("Location") or ""
        if not interface:
            return
        if not self._wanted(queue):
            self._elsewhere(name, interface, queue, event)
            return
        if name == "QueueMemberRemoved":
            member = self.members.get(interface)
            if member:
                member.queues.discard(queue)
                member.paused_in.discard(queue)
                if not member.queues:
                    del self.members[interface]
            return
        if name not in ("QueueMember", "QueueMemberStatus", "QueueMemberAdded", "QueueMemberPause"):
            return
        # QueueMemberStatus says MemberName; the QueueMember rows of a QueueStatus reply say Name.
        name = event.get("MemberName") or event.get("Name")
        member = self.members.setdefault(interface, Member(interface, name or interface))
        if name:
            member.name = name
        if event.get("StateInterface"):
            member.state_interface = event["StateInterface"]
        member.queues.add(queue)
        if "Status" in event:
            member.status = _int(event.get("Status"))
        if "Paused" in event:
            if event.get("Paused") == "1":
                member.paused_in.add(queue)
            else:
                member.paused_in.discard(queue)
        if "InCall" in event:
            member.in_call = event.get("InCall") == "1"
        if "LastCall" in event:
            member.last_call = float(_int(event.get("LastCall")))
        if "Wrapuptime" in event:
            member.wrapup = _int(event.get("Wrapuptime"))

    def _elsewhere(self, name: str, interface: str, queue: str, event: Mapping[str, str]) -> None:
        """A membership in a queue the dialer does not serve: kept only to know whom it needs."""
        if name == "QueueMemberRemoved":
            queues = self.elsewhere.get(interface, {})
            queues.pop(queue, None)
            if not queues:
                self.elsewhere.pop(interface, None)
        elif name in ("QueueMember", "QueueMemberStatus", "QueueMemberAdded", "QueueMemberPause"):
            queues = self.elsewhere.setdefault(interface, {})
            paused = event.get("Paused")
            queues[queue] = queues.get(queue, False) if paused is None else paused == "1"

    def needed(self, member: Member) -> bool:
        """Live callers wait in a queue this member answers (unpaused), served by the dialer or
        not: Asterisk is about to ring it for them, so no callback may take it first."""
        queues = member.queues - member.paused_in
        queues |= {q for q, paused in self.elsewhere.get(member.interface, {}).items() if not paused}
        return any(self.waiting.get(q, 0) > 0 for q in queues)

    def resync(self, status_events: Iterable[Mapping[str, str]]) -> None:
        """Replace live state with a QueueStatus answer, keeping our own LRU record."""
        used = {k: m.last_used for k, m in self.members.items()}
        self.members.clear()
        self.waiting.clear()
        self.elsewhere.clear()
        for event in status_events:
            self.update(event)
        for key, when in used.items():
            if key in self.members:
                self.members[key].last_used = when

    def callers_waiting(self, queues: Iterable[str] | None = None) -> int:
        """Live callers waiting, in ``queues`` or in all the watched ones."""
        if queues is None:
            return sum(n for q, n in self.waiting.items() if self._wanted(q))
        return sum(self.waiting.get(q, 0) for q in set(queues))

    def is_free(
        self, member: Member, now: float, queues: Iterable[str] | None = None, hold: bool = False
    ) -> bool:
        """Free to ring; with ``hold``, also not :meth:`needed` by live callers."""
        if member.interface in self.reserved or member.in_call or not member.takes(queues):
            return False
        if hold and self.needed(member):
            return False
        if member.status != NOT_INUSE:
            return False
        wrapup = member.wrapup or self.default_wrapup
        return not (wrapup and member.last_call and now < member.last_call + wrapup)

    def free(
        self,
        now: float,
        exclude: Iterable[str] = (),
        queues: Iterable[str] | None = None,
        hold: bool = False,
    ) -> list[Member]:
        """Free members we can dial (of ``queues``, when given), least recently used first;
        with ``hold``, none that live callers need (the dialer's view; status shows all free)."""
        skip = set(exclude)
        wanted = None if queues is None else frozenset(queues)
        found = [
            m
            for m in self.members.values()
            if m.interface not in skip and self.is_free(m, now, wanted, hold) and _diallable(m.interface)
        ]
        return sorted(found, key=lambda m: (max(m.last_used, m.last_call), m.interface))

    def pick(
        self, now: float, route: Iterable[str], exclude: Iterable[str] = (), hold: bool = False
    ) -> Member | None:
        """The operator for one callback: the least recently used free member of the first
        queue in ``route`` that has one (the client's queue, then its fall-backs)."""
        skip = set(exclude)
        for queue in route:
            found = self.free(now, skip, queues=(queue,), hold=hold)
            if found:
                return found[0]
        return None

    def reserve(self, interface: str, now: float) -> None:
        self.reserved.add(interface)
        member = self.members.get(interface)
        if member:
            member.last_used = now

    def release(self, interface: str) -> None:
        self.reserved.discard(interface)


def _diallable(interface: str) -> bool:
    try:
        dial_channel(interface)
    except UndialableMember:
        return False
    return True
