"""How one callback attempt ended, and what that means for its request.

Inputs are the raw values Asterisk reports: the OriginateResponse ``Reason``
for the operator leg, and ``DIALSTATUS`` plus the Q.850 cause of the client
leg (from the bridge context's ``CallbackdResult`` user event).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from callbackd.domain.states import RequestEvent

# OriginateResponse Reason codes (enum ast_control_frame_type values).
ORIGINATE_ANSWERED = 4
_ORIGINATE_REASONS = {0: "failed", 1: "hangup", 3: "no_answer", 5: "busy", 8: "congestion"}

# Q.850 causes that mean the number itself is wrong: retrying cannot help.
INVALID_NUMBER_CAUSES = frozenset({1, 28})


class Outcome(StrEnum):
    ANSWERED = "answered"
    OPERATOR_NO_ANSWER = "operator_no_answer"  # rang out, busy, rejected or failed
    OPERATOR_HANGUP = "operator_hangup"  # operator left before the client answered
    CLIENT_BUSY = "client_busy"
    CLIENT_NO_ANSWER = "client_no_answer"
    CLIENT_CONGESTION = "client_congestion"
    CLIENT_UNAVAILABLE = "client_unavailable"
    VOICEMAIL = "voicemail"  # answering-machine detection heard a machine; hung up on it
    INVALID_NUMBER = "invalid_number"
    UNKNOWN = "unknown"  # older rows: the result was lost; counted to stay safe
    # No result came before the stage's deadline, or the channel was gone at a resync
    # (AMI gap, PBX restart). Counted: the client may have been rung.
    RESULT_LOST = "result_lost"


# Outcomes that use up one of the client's tries. The operator's failures do not:
# the client never heard a ring.
COUNTED = frozenset(
    {
        Outcome.ANSWERED,
        Outcome.CLIENT_BUSY,
        Outcome.CLIENT_NO_ANSWER,
        Outcome.CLIENT_CONGESTION,
        Outcome.CLIENT_UNAVAILABLE,
        Outcome.VOICEMAIL,
        Outcome.INVALID_NUMBER,
        Outcome.UNKNOWN,
        Outcome.RESULT_LOST,
    }
)

# The bridge context's Stage once AMD() on the client leg said MACHINE (see dialplans/callbackd.conf).
MACHINE_STAGE = "machine"

_DIALSTATUS = {
    "BUSY": Outcome.CLIENT_BUSY,
    "NOANSWER": Outcome.CLIENT_NO_ANSWER,
    "CONGESTION": Outcome.CLIENT_CONGESTION,
    "CHANUNAVAIL": Outcome.CLIENT_UNAVAILABLE,
    "DONTCALL": Outcome.CLIENT_UNAVAILABLE,
    "TORTURE": Outcome.CLIENT_UNAVAILABLE,
    "INVALIDARGS": Outcome.INVALID_NUMBER,
}


def _int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def operator_leg_outcome(reason: object) -> Outcome | None:
    """None when the operator answered (the client leg decides), else why not."""
    code = _int(reason)
    if code == ORIGINATE_ANSWERED:
        return None
    return Outcome.OPERATOR_NO_ANSWER


def originate_reason_text(reason: object) -> str:
    code = _int(reason)
    if code == ORIGINATE_ANSWERED:
        return "answered"
    return _ORIGINATE_REASONS.get(code, f"reason_{code}") if code is not None else "unknown"


def client_leg_outcome(stage: str, dial_status: str, client_cause: object) -> Outcome:
    """Classify the bridge context's result.

    ``stage`` is empty when the operator hung up during the whisper, before the
    client was dialled, and ``machine`` when answering-machine detection hung up on
    a machine (Dial then reports ANSWER, which must not count as reaching the client).
    """
    if (stage or "").strip().lower() == MACHINE_STAGE:
        return Outcome.VOICEMAIL
    status = (dial_status or "").strip().upper()
    if status == "ANSWER":
        return Outcome.ANSWERED
    if not stage or status in ("", "CANCEL"):
        return Outcome.OPERATOR_HANGUP
    if _int(client_cause) in INVALID_NUMBER_CAUSES:
        return Outcome.INVALID_NUMBER
    return _DIALSTATUS.get(status, Outcome.CLIENT_UNAVAILABLE)


@dataclass(frozen=True)
class Verdict:
    """What an attempt's outcome does to its request."""

    event: RequestEvent
    counted: bool
    close_reason: str | None = None


def verdict(outcome: Outcome, tries_used: int, max_tries: int) -> Verdict:
    """``tries_used`` includes this attempt when it is counted."""
    counted = outcome in COUNTED
    if outcome is Outcome.ANSWERED:
        return Verdict(RequestEvent.REACH, counted)
    if outcome is Outcome.INVALID_NUMBER:
        return Verdict(RequestEvent.FAIL, counted, "invalid_number")
    if counted and tries_used >= max_tries:
        return Verdict(RequestEvent.FAIL, counted, "max_attempts")
    return Verdict(RequestEvent.RETRY_LATER, counted)
