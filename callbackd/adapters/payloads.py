"""Web lead forms, whichever transport carries them (HTTP or MQTT).

Both transports parse with :func:`parse_lead` and store with :func:`submit_lead`,
so a form is refused for the same reasons, with the same words, either way. A
lead that would not be called back (invalid, withheld or blocked number) is
refused and not stored: the sender can fix it, and junk cannot fill the database.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from callbackd.adapters.store import ContactResult
from callbackd.domain.intake import Contact, Disposition, IntakeRules, Source, decide

MAX_PAYLOAD = 16 * 1024
REASON = "web_form"
_SOURCE_REF_MAX = 128  # contacts.source_ref
# C0 controls except tab and newlines, DEL: PostgreSQL refuses NUL, and none belong in a note.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Far outside this range the calendar arithmetic overflows; inside it nothing real is lost.
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)

Submit = Callable[[Contact], Awaitable[ContactResult]]
RefusalKind = Literal["too_large", "malformed", "invalid", "blocked", "rate_limited"]
# queued: safe in the local spool while the database is away; its request id comes later.
Status = Literal["created", "merged", "duplicate", "queued"]


class LeadForm(BaseModel):
    """What a web form sends. Strict: a number where a string belongs is a client bug, not input."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    phone: Annotated[
        str,
        Field(
            max_length=64,
            description="The number to call back, as typed",
            examples=["(202) 555-0123", "+44 20 7946 0958"],
        ),
    ]
    name: Annotated[str, Field(max_length=80)] = ""
    source: Annotated[
        str | None,
        Field(
            max_length=32,
            pattern=r"^[A-Za-z0-9_.-]+$",
            description="Which form or site sent the lead; scopes `id`",
        ),
    ] = None
    comment: Annotated[str, Field(max_length=2000)] = ""
    preferred_time: Annotated[
        AwareDatetime | None,
        Field(description="ISO 8601 with an offset, e.g. 2026-03-02T15:30:00+01:00; not before this"),
    ] = None
    timezone: Annotated[
        str | None,
        Field(
            max_length=64,
            description="The client's IANA time zone, e.g. Asia/Vladivostok; default: from the number",
        ),
    ] = None
    id: Annotated[
        str | None,
        Field(
            max_length=128,
            pattern=r"^[A-Za-z0-9_.:-]+$",
            description="Idempotency key: a form sent again with the same id is stored once",
        ),
    ] = None

    @field_validator("comment")
    @classmethod
    def _printable(cls, v: str) -> str:
        return _CONTROL.sub("", v)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        from callbackd.domain.phone import check_zone

        return check_zone(v) if v else None

    @field_validator("preferred_time")
    @classmethod
    def _in_range(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        try:
            utc = v.astimezone(UTC)
        except OverflowError:
            raise ValueError("out of range") from None
        if not _EARLIEST <= utc < _LATEST:
            raise ValueError("out of range (years 2000 to 2099)")
        return utc


class LeadRefused(Exception):
    """A lead that was not stored; ``kind`` lets each transport pick its status code."""

    def __init__(self, kind: RefusalKind, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class LeadAccepted:
    request_id: int | None
    status: Status


def describe(exc: ValidationError) -> str:
    """Pydantic's errors as one line: 'phone: Field required; extra: Extra inputs are not permitted'."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def parse_lead(data: bytes) -> LeadForm:
    """Bytes off the wire to a form; the size is checked before any parsing."""
    if len(data) > MAX_PAYLOAD:
        raise LeadRefused("too_large", f"payload over {MAX_PAYLOAD} bytes")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise LeadRefused("malformed", "payload is not UTF-8") from None
    try:
        return LeadForm.model_validate_json(data)
    except ValidationError as exc:
        raise LeadRefused("malformed", describe(exc)) from None


def to_contact(
    form: LeadForm,
    source: Source,
    now: datetime,
    fallback_key: str | None = None,
    source_queues: Mapping[str, str] | None = None,
) -> Contact:
    """The lead as a contact; ``fallback_key`` names a lead without ``id`` (else it is always new).

    ``source_queues`` maps the form's ``source`` to the queue whose operators call it back.
    """
    key = form.id or fallback_key or uuid.uuid4().hex
    ref = f"{form.source}:{key}" if form.source else key
    if len(ref) > _SOURCE_REF_MAX:
        # The store cuts longer refs, which could make two different ids look alike.
        ref = f"{form.source}:{hashlib.sha256(key.encode()).hexdigest()}"
    return Contact(
        source=source,
        source_ref=ref,
        raw_number=form.phone,
        reason=REASON,
        at=now,
        name=form.name,
        comment=form.comment,
        preferred_at=form.preferred_time,
        client_tz=form.timezone,
        queue=(source_queues or {}).get(form.source or ""),
    )


async def submit_lead(
    form: LeadForm,
    *,
    source: Source,
    rules: IntakeRules,
    submit: Submit,
    now: datetime,
    fallback_key: str | None = None,
) -> LeadAccepted:
    """Store a lead that will be called back; raise :class:`LeadRefused` for any other."""
    contact = to_contact(form, source, now, fallback_key, rules.source_queues)
    decision = decide(contact, rules)
    match decision.disposition:
        case Disposition.SCHEDULE:
            pass
        case Disposition.BLOCKED:
            raise LeadRefused("blocked", f"phone: number refused ({decision.detail})")
        case Disposition.ANONYMOUS:
            raise LeadRefused("invalid", "phone: no number given")
        case _:
            raise LeadRefused("invalid", f"phone: not a valid phone number ({decision.detail})")
    result = await submit(contact)
    if result.disposition is Disposition.RATE_LIMITED:
        raise LeadRefused("rate_limited", "too many callback requests; try again later")
    if result.spooled:
        return LeadAccepted(None, "queued")
    if result.request_id is None:
        raise RuntimeError(f"contact {result.contact_id} stored without a request")
    status: Status = "duplicate" if result.duplicate else "merged" if result.merged else "created"
    return LeadAccepted(result.request_id, status)
