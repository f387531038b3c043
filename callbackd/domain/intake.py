"""What to do with one missed contact, whatever its source.

Every source (AMI, the "press 1" AGI route, MQTT, HTTP, the admin CLI) turns
its input into a :class:`Contact` and asks :func:`decide`. The store then
applies the decision in one transaction: one open request per number, later
contacts merge into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from enum import StrEnum

from callbackd.domain.errors import InvalidNumber
from callbackd.domain.phone import E164, NumberRules, parse_caller_id, sanitize_caller_name


class Source(StrEnum):
    AMI = "ami"
    AGI = "agi"
    MQTT = "mqtt"
    HTTP = "http"
    ADMIN = "admin"


# Anyone can send these, so a lead refused here is not stored (a flood of them would fill
# the database); a call is kept whatever the decision, for the reports.
WEB_SOURCES = frozenset({Source.HTTP, Source.MQTT})


# Their refs (Linkedid, Uniqueid) are unique only within one Asterisk: two servers on one
# database may both have a call 1764500000.42. A web lead's id means the same whoever reads it.
PBX_SOURCES = frozenset({Source.AMI, Source.AGI})


def dedup_scope(source: Source, pbx: str) -> str:
    """The PBX part of a contact's dedup key: the PBX's identity, or "" for web and CLI sources."""
    return pbx if source in PBX_SOURCES else ""


class Disposition(StrEnum):
    SCHEDULE = "schedule"  # create or merge into the open request and call back
    ANONYMOUS = "anonymous"  # stored as a contact, nobody to call
    SHORT = "short"  # hung up before the short-abandon threshold
    BLOCKED = "blocked"  # blacklist or destination rules
    INVALID = "invalid"  # not a valid phone number
    RATE_LIMITED = "rate_limited"  # would open a request over the abuse limits


@dataclass(frozen=True)
class Contact:
    source: Source
    # Identifies the contact within its source (Linkedid, message id...): a contact
    # seen twice (AMI reconnect, MQTT redelivery, form resubmit) is stored once.
    source_ref: str
    raw_number: str
    reason: str
    at: datetime
    name: str = ""
    waited: int | None = None  # seconds, for calls
    comment: str = ""
    preferred_at: datetime | None = None
    # preferred_at is a time the client chose ("call me at 15:00"): later contacts do not pull it
    # in. Without it preferred_at only means "not before" (a web form's preferred_time).
    time_chosen: bool = False
    # "Call me at 15:30" keyed in on the phone: the client's local wall time, the next one to come.
    # The store turns it into preferred_at in the client's zone.
    chosen_local: time | None = None
    # The client's IANA time zone when the source knows it (a lead form); else the number tells.
    client_tz: str | None = None
    # The number the client dialled and the queue they waited in (calls only): the callback can
    # present that number, and a queue can have its own ladder.
    did: str = ""
    queue: str | None = None
    # Only a caller who hung up can be a short abandon; a PBX that turned the caller
    # away (busy, time-out) is a miss however quick it was.
    caller_gave_up: bool = False


@dataclass(frozen=True)
class Decision:
    disposition: Disposition
    number: E164 | None
    name: str
    detail: str = ""

    @property
    def schedules(self) -> bool:
        return self.disposition is Disposition.SCHEDULE


@dataclass(frozen=True)
class IntakeRules:
    region: str = "US"
    numbers: NumberRules = field(default_factory=NumberRules)
    short_abandon: timedelta = timedelta(seconds=5)
    # A web form's ``source`` to the queue whose operators call its leads back.
    source_queues: Mapping[str, str] = field(default_factory=dict, hash=False)


def decide(contact: Contact, rules: IntakeRules) -> Decision:
    name = sanitize_caller_name(contact.name)
    try:
        number = parse_caller_id(contact.raw_number, rules.region)
    except InvalidNumber as exc:
        return Decision(Disposition.INVALID, None, name, exc.reason)
    if number is None:
        return Decision(Disposition.ANONYMOUS, None, name, "withheld caller ID")
    blocked = rules.numbers.verdict(number)
    if blocked:
        return Decision(Disposition.BLOCKED, number, name, blocked)
    if (
        contact.caller_gave_up
        and contact.waited is not None
        and contact.waited < rules.short_abandon.total_seconds()
    ):
        return Decision(Disposition.SHORT, number, name, f"waited {contact.waited}s")
    return Decision(Disposition.SCHEDULE, number, name)


def limit(decision: Decision, refusal: str | None) -> Decision:
    """The decision once the abuse limits have had their say (``refusal`` from the AbuseGuard).

    Applied after :func:`decide` because whether a contact opens a new request, the only
    thing the limits count, is known from the store, not from the contact.
    """
    if refusal is None or not decision.schedules:
        return decision
    return replace(decision, disposition=Disposition.RATE_LIMITED, detail=refusal)


def keyed_time(digits: str) -> time | None:
    """'1530' or '930' keyed on a phone as a time of day; None when it is not one."""
    if not digits.isdigit() or len(digits) not in (3, 4):
        return None
    hours, minutes = int(digits[:-2]), int(digits[-2:])
    if hours > 23 or minutes > 59:
        return None
    return time(hours, minutes)
