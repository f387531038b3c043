"""The callback request's and the attempt's state machines, as data.

Every status change in the daemon goes through :func:`request_transition` (the
store) or :func:`attempt_transition` (the attempt tracker, and the store when it
finishes an attempt), so the tables below are the one place that says what may
follow what. Tests walk the tables; nothing else encodes these rules.
"""

from __future__ import annotations

from enum import StrEnum

from callbackd.domain.errors import IllegalTransition


class RequestStatus(StrEnum):
    OPEN = "open"  # waiting for its due time and a free operator
    DIALLING = "dialling"  # one attempt in flight; no other may start
    REACHED = "reached"  # a callback reached the client
    RECOVERED = "recovered"  # the client was reached some other way
    FAILED = "failed"  # invalid number or every try used
    EXPIRED = "expired"  # older than the configured maximum age
    CANCELLED = "cancelled"  # an admin cancelled it


OPEN_STATUSES = frozenset({RequestStatus.OPEN, RequestStatus.DIALLING})
CLOSED_STATUSES = frozenset(set(RequestStatus) - OPEN_STATUSES)


class RequestEvent(StrEnum):
    CLAIM = "claim"  # the dialer took it for an attempt
    RETRY_LATER = "retry_later"  # attempt over, more tries left (or try not counted)
    REACH = "reach"  # attempt reached the client
    FAIL = "fail"  # number invalid or tries exhausted
    RECOVER = "recover"  # client called in / was called by hand and answered
    EXPIRE = "expire"
    CANCEL = "cancel"
    RETRY_NOW = "retry_now"  # admin: make it due now
    SCHEDULE = "schedule"  # admin: call at a chosen time


_R = RequestStatus
_E = RequestEvent

REQUEST_TRANSITIONS: dict[tuple[RequestStatus, RequestEvent], RequestStatus] = {
    (_R.OPEN, _E.CLAIM): _R.DIALLING,
    (_R.OPEN, _E.RECOVER): _R.RECOVERED,
    (_R.OPEN, _E.EXPIRE): _R.EXPIRED,
    (_R.OPEN, _E.CANCEL): _R.CANCELLED,
    (_R.OPEN, _E.FAIL): _R.FAILED,
    (_R.OPEN, _E.RETRY_NOW): _R.OPEN,
    (_R.OPEN, _E.SCHEDULE): _R.OPEN,
    (_R.DIALLING, _E.RETRY_LATER): _R.OPEN,
    (_R.DIALLING, _E.REACH): _R.REACHED,
    (_R.DIALLING, _E.FAIL): _R.FAILED,
    # The client can call in while we ring an operator; the attempt then ends on its own.
    (_R.DIALLING, _E.RECOVER): _R.RECOVERED,
    (_R.DIALLING, _E.CANCEL): _R.CANCELLED,
    (_R.DIALLING, _E.EXPIRE): _R.EXPIRED,
    # A closed request can be reopened by an admin, now or for a chosen time.
    (_R.FAILED, _E.RETRY_NOW): _R.OPEN,
    (_R.EXPIRED, _E.RETRY_NOW): _R.OPEN,
    (_R.CANCELLED, _E.RETRY_NOW): _R.OPEN,
    (_R.FAILED, _E.SCHEDULE): _R.OPEN,
    (_R.EXPIRED, _E.SCHEDULE): _R.OPEN,
    (_R.CANCELLED, _E.SCHEDULE): _R.OPEN,
}


def request_transition(status: RequestStatus | str, event: RequestEvent | str) -> RequestStatus:
    """The status after *event*, or :class:`IllegalTransition`."""
    key = (RequestStatus(status), RequestEvent(event))
    try:
        return REQUEST_TRANSITIONS[key]
    except KeyError:
        raise IllegalTransition("request", key[0].value, key[1].value) from None


class AttemptStatus(StrEnum):
    DIALLING = "dialling"  # row written, Originate about to be / being sent
    OPERATOR_UP = "operator_up"  # operator answered, hears the whisper
    CLIENT_RINGING = "client_ringing"
    BRIDGED = "bridged"
    DONE = "done"  # outcome known


class AttemptEvent(StrEnum):
    OPERATOR_ANSWERED = "operator_answered"
    CLIENT_DIALLED = "client_dialled"
    CLIENT_ANSWERED = "client_answered"
    FINISHED = "finished"


_A = AttemptStatus
_AE = AttemptEvent

ATTEMPT_TRANSITIONS: dict[tuple[AttemptStatus, AttemptEvent], AttemptStatus] = {
    (_A.DIALLING, _AE.OPERATOR_ANSWERED): _A.OPERATOR_UP,
    (_A.DIALLING, _AE.FINISHED): _A.DONE,
    (_A.OPERATOR_UP, _AE.CLIENT_DIALLED): _A.CLIENT_RINGING,
    (_A.OPERATOR_UP, _AE.FINISHED): _A.DONE,
    (_A.CLIENT_RINGING, _AE.CLIENT_ANSWERED): _A.BRIDGED,
    (_A.CLIENT_RINGING, _AE.FINISHED): _A.DONE,
    (_A.BRIDGED, _AE.FINISHED): _A.DONE,
}

IN_FLIGHT_ATTEMPTS = frozenset(set(AttemptStatus) - {AttemptStatus.DONE})


def attempt_transition(status: AttemptStatus | str, event: AttemptEvent | str) -> AttemptStatus:
    """The status after *event*, or :class:`IllegalTransition`."""
    key = (AttemptStatus(status), AttemptEvent(event))
    try:
        return ATTEMPT_TRANSITIONS[key]
    except KeyError:
        raise IllegalTransition("attempt", key[0].value, key[1].value) from None
