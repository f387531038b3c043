from callbackd.domain.outcomes import (
    Outcome,
    client_leg_outcome,
    operator_leg_outcome,
    originate_reason_text,
    verdict,
)
from callbackd.domain.states import RequestEvent


def test_operator_leg():
    assert operator_leg_outcome("4") is None
    for reason in ("0", "1", "3", "5", "8", "", None, "junk"):
        assert operator_leg_outcome(reason) is Outcome.OPERATOR_NO_ANSWER
    assert originate_reason_text("3") == "no_answer"
    assert originate_reason_text("5") == "busy"
    assert originate_reason_text(None) == "unknown"


def test_client_leg_by_dialstatus_and_cause():
    assert client_leg_outcome("client", "ANSWER", "16") is Outcome.ANSWERED
    assert client_leg_outcome("client", "BUSY", "17") is Outcome.CLIENT_BUSY
    assert client_leg_outcome("client", "NOANSWER", "19") is Outcome.CLIENT_NO_ANSWER
    assert client_leg_outcome("client", "CONGESTION", "34") is Outcome.CLIENT_CONGESTION
    assert client_leg_outcome("client", "CHANUNAVAIL", "20") is Outcome.CLIENT_UNAVAILABLE
    # Q.850 1 (unallocated) and 28 (invalid format) close the request whatever DIALSTATUS says.
    assert client_leg_outcome("client", "CHANUNAVAIL", "1") is Outcome.INVALID_NUMBER
    assert client_leg_outcome("client", "CONGESTION", "28") is Outcome.INVALID_NUMBER


def test_operator_hangup_before_the_client_answered():
    assert client_leg_outcome("", "", "") is Outcome.OPERATOR_HANGUP  # during the whisper
    assert client_leg_outcome("client", "CANCEL", "16") is Outcome.OPERATOR_HANGUP


def test_verdicts():
    assert verdict(Outcome.ANSWERED, 1, 5).event is RequestEvent.REACH
    v = verdict(Outcome.CLIENT_BUSY, 1, 5)
    assert (v.event, v.counted) == (RequestEvent.RETRY_LATER, True)
    v = verdict(Outcome.CLIENT_BUSY, 5, 5)
    assert (v.event, v.close_reason) == (RequestEvent.FAIL, "max_attempts")
    v = verdict(Outcome.INVALID_NUMBER, 1, 5)
    assert (v.event, v.close_reason) == (RequestEvent.FAIL, "invalid_number")
    v = verdict(Outcome.OPERATOR_NO_ANSWER, 0, 5)
    assert (v.event, v.counted) == (RequestEvent.RETRY_LATER, False)
    # An operator failure never exhausts the client's tries.
    assert verdict(Outcome.OPERATOR_NO_ANSWER, 5, 5).event is RequestEvent.RETRY_LATER
