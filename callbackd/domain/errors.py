"""Errors raised by the domain core.

Adapters translate these into HTTP statuses, AMI rejections or log lines, so they
carry a machine-readable ``reason`` where the caller needs to branch on it.
"""

from __future__ import annotations

_SHOWN_CHARS = 40


def _shown(raw: object) -> str:
    """Quote untrusted input for a message: escaped, so it cannot forge log lines, and bounded."""
    text = raw if isinstance(raw, str) else str(raw)
    if len(text) > _SHOWN_CHARS:
        return repr(text[:_SHOWN_CHARS]) + "..."
    return repr(text)


class DomainError(Exception):
    """Base class, so adapters can catch every rule violation in one place."""


class InvalidNumber(DomainError):
    """A phone number we refuse to store or dial.

    ``reason`` is a short stable code (``empty``, ``too_long``, ``bad_chars``,
    ``misplaced_plus``, ``unparseable``, ``invalid``, ``not_e164``) for metrics and API errors.
    """

    def __init__(self, raw: object, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid phone number {_shown(raw)}: {reason}")


class InvalidSchedule(DomainError):
    """Business hours, retry ladder or schedule settings that cannot work."""


class NoCommonHours(InvalidSchedule):
    """The client's window and the business hours never overlap: the client cannot be called.

    ``reason`` is the close reason stored on the request.
    """

    reason = "no_common_hours"


class IllegalTransition(DomainError):
    """A status change the state table does not allow."""

    def __init__(self, machine: str, status: str, event: str) -> None:
        self.machine, self.status, self.event = machine, status, event
        super().__init__(f"{machine} in status {status!r} cannot take {event!r}")


class IntakeUnavailable(RuntimeError):
    """A contact neither stored nor spooled: the database is unreachable and the spool is full."""
