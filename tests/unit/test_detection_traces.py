"""The detector fed with real AMI traces recorded from the lab (Asterisk 22, the callbackd AMI user).

tests/fixtures/ami/ holds them as ``asterisk/lab trace`` wrote them:
- originate-into-inbound: an AMI Originate of PJSIP/+15551230041@pstn into from-pstn,105 (what
  a CRM's click-to-call or another dialer does); the PSTN answers, then hangs up;
- queue-answered: +15551230042 calls 100, both operators ring, op2 answers after 0.5 s;
- queue-timeout: +15551230043 calls 106 (Queue with an 8 s time-out, nobody answers, a goodbye
  prompt, then the dialplan hangs up).
"""

from datetime import UTC, datetime
from pathlib import Path

from callbackd.domain.detection import Answered, CallEnded, Detector, Missed, MissReason

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "ami"


def trace(name: str) -> list[tuple[dict[str, str], datetime]]:
    """(event, time) pairs; the time is the event's own Timestamp header."""
    out = []
    for block in (TRACES / f"{name}.ami.txt").read_bytes().decode().split("\r\n\r\n"):
        ev: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(";") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            ev[key.strip()] = value.strip()
        if "Event" in ev:
            out.append((ev, datetime.fromtimestamp(float(ev["Timestamp"]), UTC)))
    return out


def replay(name: str, det: Detector | None = None) -> list:
    det = det or Detector()
    out = []
    for ev, at in trace(name):
        out.extend(det.feed(ev, at))
    assert det.calls == {}
    return out


def test_an_originate_into_the_inbound_context_is_neither_missed_nor_offered():
    """Was an ivr_hangup from <unknown> plus an offered call (failed before the fix)."""
    assert replay("originate-into-inbound") == []


def test_a_queue_answer_comes_from_agent_connect_with_its_hold_time_and_member():
    """Was answered at the first DialEnd ANSWER with agent '202' and no hold time (failed before)."""
    events = trace("queue-answered")
    connect = next(ev for ev, _ in events if ev["Event"] == "AgentConnect")
    connect_at = next(at for ev, at in events if ev["Event"] == "AgentConnect")
    out = replay("queue-answered")
    assert [type(o) for o in out] == [Answered, CallEnded]
    answered, ended = out
    assert answered.agent == connect["Interface"] == "PJSIP/op2"
    assert answered.at == connect_at
    call = ended.call
    assert call.hold_time == int(connect["HoldTime"])
    assert (call.agent, call.agent_name) == ("PJSIP/op2", "Operator Two")
    assert call.caller_num == "+15551230042" and call.queue == "support"


def test_a_queue_time_out_waited_its_hold_time_not_the_whole_call():
    """Was the call's whole length, goodbye prompt included (failed before the fix)."""
    events = trace("queue-timeout")
    abandon = next(ev for ev, _ in events if ev["Event"] == "QueueCallerAbandon")
    start, end = events[0][1], events[-1][1]
    out = replay("queue-timeout")
    [miss] = [o for o in out if isinstance(o, Missed)]
    assert miss.reason is MissReason.QUEUE_TIMEOUT and not miss.caller_gave_up
    assert miss.waited == int(abandon["HoldTime"]) == 8
    assert round((end - start).total_seconds()) > miss.waited
