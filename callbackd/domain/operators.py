"""Which operator is free, from queue member events.

A registered phone is not a free operator. An operator is free only when the
device is NOT_INUSE, the member is not paused, not in wrap-up after its last
call, and not already reserved by one of our own callbacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
    interface: str
    name: str
    queues: set[str] = field(default_factory=set)
    status: int = 0
    paused: bool = False
    in_call: bool = False
    last_call: float = 0.0  # epoch seconds of the end of the last call (Asterisk's LastCall)
    wrapup: int = 0  # seconds
    last_used: float = 0.0  # when we last gave it a callback


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
        # Live callers waiting per queue: callbacks must not jump ahead of them.
        self.waiting: dict[str, int] = {}

    def _wanted(self, queue: str) -> bool:
        return not self.queues or queue in self.queues

    def update(self, event: Mapping[str, str]) -> None:
        """Feed QueueMember (QueueStatus reply), QueueMemberStatus/Added/Removed/Pause."""
        name = event.get("Event", "")
        queue = event.get("Queue", "")
        if name in ("QueueCallerJoin", "QueueCallerLeave", "QueueParams"):
            if self._wanted(queue):
                count = event.get("Count") if name != "QueueParams" else event.get("Calls")
                self.waiting[queue] = _int(count)
            return
        interface = event.get("StateInterface") or event.get("Interface") or event.get("Location") or ""
        if not interface or not self._wanted(queue):
            return
        if name == "QueueMemberRemoved":
            member = self.members.get(interface)
            if member:
                member.queues.discard(queue)
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
        member.queues.add(queue)
        if "Status" in event:
            member.status = _int(event.get("Status"))
        if "Paused" in event:
            member.paused = event.get("Paused") == "1"
        if "InCall" in event:
            member.in_call = event.get("InCall") == "1"
        if "LastCall" in event:
            member.last_call = float(_int(event.get("LastCall")))
        if "Wrapuptime" in event:
            member.wrapup = _int(event.get("Wrapuptime"))

    def resync(self, status_events: Iterable[Mapping[str, str]]) -> None:
        """Replace live state with a QueueStatus answer, keeping our own LRU record."""
        used = {k: m.last_used for k, m in self.members.items()}
        self.members.clear()
        self.waiting.clear()
        for event in status_events:
            self.update(event)
        for key, when in used.items():
            if key in self.members:
                self.members[key].last_used = when

    def callers_waiting(self) -> int:
        return sum(self.waiting.values())

    def is_free(self, member: Member, now: float) -> bool:
        if member.interface in self.reserved or member.paused or member.in_call:
            return False
        if member.status != NOT_INUSE:
            return False
        wrapup = member.wrapup or self.default_wrapup
        return not (wrapup and member.last_call and now < member.last_call + wrapup)

    def free(self, now: float, exclude: Iterable[str] = ()) -> list[Member]:
        """Free members, least recently used first."""
        skip = set(exclude)
        found = [m for m in self.members.values() if m.interface not in skip and self.is_free(m, now)]
        return sorted(found, key=lambda m: (max(m.last_used, m.last_call), m.interface))

    def reserve(self, interface: str, now: float) -> None:
        self.reserved.add(interface)
        member = self.members.get(interface)
        if member:
            member.last_used = now

    def release(self, interface: str) -> None:
        self.reserved.discard(interface)
