"""Missed-call detection fed with plain event sequences (field names as Asterisk 22 sends them)."""

from datetime import UTC, datetime, timedelta

from callbackd.domain.detection import (
    Answered,
    CallEnded,
    DetectionRules,
    Detector,
    Missed,
    MissReason,
)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
LID = "1795400063.5"


def ev(name, **fields):
    base = {"Event": name, "Linkedid": LID, "Uniqueid": LID}
    base.update(fields)
    return base


def newchannel(caller="79990001122", context="from-pstn", exten="100", uid=LID):
    return ev(
        "Newchannel", CallerIDNum=caller, CallerIDName="Caller", Context=context, Exten=exten, Uniqueid=uid
    )


def run(det, events):
    out = []
    for i, e in enumerate(events):
        out.extend(det.feed(e, T0 + timedelta(seconds=i)))
    return out


def test_queue_abandon_reports_at_once_and_once():
    det = Detector()
    out = run(
        det,
        [
            newchannel(),
            ev("QueueCallerJoin", Queue="support", Count="1"),
            ev("Newchannel", Uniqueid="1795400063.6", Context="from-operators", CallerIDNum="<unknown>"),
            ev("AgentCalled", Queue="support"),
            ev("DialBegin", DestChannel="PJSIP/op1-00000006"),
            ev("HangupRequest"),  # the caller's BYE, before the queue lets go
            ev("DialEnd", DialStatus="CANCEL"),
        ],
    )
    assert out == []
    out = det.feed(
        ev("QueueCallerAbandon", Queue="support", HoldTime="6", Position="1"), T0 + timedelta(seconds=7)
    )
    assert len(out) == 1 and isinstance(out[0], Missed)
    miss = out[0]
    assert miss.caller_gave_up
    assert (miss.reason, miss.waited, miss.queue, miss.caller_num) == (
        MissReason.QUEUE_ABANDON,
        6,
        "support",
        "79990001122",
    )
    out = run(det, [ev("QueueCallerLeave", Queue="support", Count="0"), ev("Hangup", Cause="16")])
    assert [type(o) for o in out] == [CallEnded]
    call = out[0].call
    assert call.missed is MissReason.QUEUE_ABANDON and not call.answered and call.hold_time == 6
    assert det.calls == {}


def test_queue_timeout_raising_an_abandon_event_is_judged_at_the_hangup():
    """Asterisk 22 sends QueueCallerAbandon on a queue time-out; no HangupRequest precedes it."""
    det = Detector()
    out = run(
        det,
        [
            newchannel(),
            ev("QueueCallerJoin", Queue="support"),
            ev("QueueCallerAbandon", Queue="support", HoldTime="8"),
            ev("QueueCallerLeave", Queue="support"),
            ev("Newexten", Application="Playback"),
        ],
    )
    assert out == []
    out = run(det, [ev("SoftHangupRequest"), ev("Hangup")])  # the dialplan hangs up, not the caller
    assert out[0].reason is MissReason.QUEUE_TIMEOUT and out[1].call.hold_time == 8
    assert out[0].caller_gave_up is False


def test_queue_timeout_answered_later_in_the_dialplan_is_not_missed():
    det = Detector()
    out = run(
        det,
        [
            newchannel(),
            ev("QueueCallerJoin", Queue="support"),
            ev("QueueCallerAbandon", Queue="support", HoldTime="8"),
            ev("DialEnd", DialStatus="ANSWER", DestCallerIDNum="301"),
            ev("Hangup"),
        ],
    )
    assert [type(o) for o in out] == [Answered, CallEnded]


def test_queue_timeout_without_abandon_event_is_missed_at_hangup():
    det = Detector()
    out = run(
        det, [newchannel(), ev("QueueCallerJoin", Queue="support"), ev("QueueCallerLeave", Queue="support")]
    )
    assert out == []
    out = run(det, [ev("Hangup")])
    assert isinstance(out[0], Missed) and out[0].reason is MissReason.QUEUE_TIMEOUT
    assert isinstance(out[1], CallEnded)


def test_answered_queue_call_is_not_missed_and_reports_answer():
    det = Detector()
    out = run(
        det,
        [
            newchannel(),
            ev("QueueCallerJoin", Queue="support"),
            ev("AgentConnect", Queue="support", MemberName="op1", Interface="PJSIP/op1", HoldTime="4"),
            ev("Hangup"),
        ],
    )
    # The operator's identity is the member interface (the same key as attempts); the name is kept.
    assert isinstance(out[0], Answered) and out[0].agent == "PJSIP/op1"
    assert isinstance(out[1], CallEnded) and out[1].call.answered and out[1].call.hold_time == 4
    assert out[1].call.agent_name == "op1"
    assert not any(isinstance(o, Missed) for o in out)


def test_ring_group_no_answer_and_ivr_hangup():
    det = Detector()
    out = run(
        det,
        [
            newchannel(),
            ev("DialBegin", DestChannel="PJSIP/op1-1"),
            ev("DialEnd", DialStatus="NOANSWER"),
            ev("Hangup"),
        ],
    )
    assert out[0].reason is MissReason.NO_ANSWER
    det = Detector()
    out = run(det, [newchannel(), ev("Hangup")])
    assert out[0].reason is MissReason.IVR_HANGUP


def test_direct_dial_answered():
    det = Detector()
    out = run(det, [newchannel(), ev("DialEnd", DialStatus="ANSWER", DestCallerIDNum="101"), ev("Hangup")])
    assert isinstance(out[0], Answered)
    assert not any(isinstance(o, Missed) for o in out)


def test_after_hours_mark():
    det = Detector()
    out = run(
        det, [newchannel(), ev("UserEvent", UserEvent="CallbackdMark", Reason="after_hours"), ev("Hangup")]
    )
    assert out[0].reason is MissReason.AFTER_HOURS


def test_calls_outside_the_rules_are_ignored():
    det = Detector(
        DetectionRules(inbound_contexts=frozenset({"from-pstn"}), own_numbers=frozenset({"+15550000000"}))
    )
    assert run(det, [newchannel(context="from-internal"), ev("Hangup")]) == []
    assert run(det, [newchannel(caller="101"), ev("Hangup")]) == []  # an internal extension
    assert run(det, [newchannel(caller="15550000000"), ev("Hangup")]) == []  # our own number
    det = Detector(DetectionRules(queues=frozenset({"sales"})))
    out = run(
        det, [newchannel(), ev("QueueCallerJoin", Queue="support"), ev("QueueCallerAbandon", Queue="support")]
    )
    assert out == []


def test_events_of_other_channels_and_garbage_are_harmless():
    det = Detector()
    assert det.feed({}, T0) == []
    assert det.feed({"Event": "Hangup"}, T0) == []
    assert det.feed({"Event": "NoSuchEvent", "Linkedid": "x"}, T0) == []
    run(det, [newchannel()])
    # A second channel of the same call hanging up does not end the call.
    assert det.feed(ev("Hangup", Uniqueid="1795400063.6"), T0) == []
    assert LID in det.calls


def test_stale_calls_are_forgotten():
    det = Detector(DetectionRules(stale_after=timedelta(hours=1)))
    run(det, [newchannel()])
    assert det.expire(T0 + timedelta(minutes=30)) == []
    assert [c.linkedid for c in det.expire(T0 + timedelta(hours=2))] == [LID]
    assert det.calls == {}


def test_manual_outbound_call_answered_is_reported_with_the_dialled_number():
    det = Detector(DetectionRules(outbound_contexts=frozenset({"from-internal"})))
    lid = "1795400200.1"
    begin = {
        "Event": "DialBegin",
        "Linkedid": lid,
        "Uniqueid": lid,
        "Context": "from-internal",
        "DestUniqueid": "1795400200.2",
        "DialString": "+12025550171@trunk",
    }
    assert det.feed(begin, T0) == []
    [out] = det.feed(
        {"Event": "DialEnd", "Linkedid": lid, "DestUniqueid": "1795400200.2", "DialStatus": "ANSWER"}, T0
    )
    assert out.number == "+12025550171" and out.linkedid == lid
    # Not answered, not from an outbound context, or one of our own callbacks: nothing.
    assert det.feed(begin, T0) == []
    assert det.feed({**begin, "Event": "DialEnd", "DialStatus": "BUSY"}, T0) == []
    assert det.feed({**begin, "Context": "from-pstn"}, T0) == []
    own = {**begin, "Linkedid": "cbd-abc", "DestUniqueid": "x"}
    assert det.feed(own, T0) == [] and det.outbound == {}
    # Extensions are not outside numbers.
    assert det.feed({**begin, "DialString": "PJSIP/op1", "DestUniqueid": "y"}, T0) == []
    assert det.outbound == {}


def test_resync_follows_calls_in_progress_and_reports_ended_ones():
    det = Detector()
    run(det, [newchannel(uid="old.1") | {"Linkedid": "old.1"}])
    assert "old.1" in det.calls
    channels = [
        {
            "Event": "CoreShowChannel",
            "Uniqueid": LID,
            "Linkedid": LID,
            "Context": "from-pstn",
            "Exten": "100",
            "CallerIDNum": "79990001122",
            "CallerIDName": "Caller",
            "Application": "Queue",
            "Duration": "00:00:09",
        },
        {
            "Event": "CoreShowChannel",
            "Uniqueid": "cbd-x",
            "Linkedid": "cbd-x",
            "Context": "callbackd-bridge",
            "CallerIDNum": "+12025550100",
        },
    ]
    status = [{"Event": "QueueEntry", "Queue": "support", "Uniqueid": LID, "Wait": "7"}]
    lost = det.resync(channels, status, T0)
    assert [c.linkedid for c in lost] == ["old.1"]  # ended while nobody watched
    call = det.calls[LID]
    assert call.queue == "support" and call.started_at == T0 - timedelta(seconds=9)
    assert call.joined_at == T0 - timedelta(seconds=7)
    assert "cbd-x" not in det.calls  # our own callbacks are not inbound calls
    # The abandon that follows the restart is detected as usual.
    out = run(det, [ev("HangupRequest"), ev("QueueCallerAbandon", Queue="support", HoldTime="12")])
    assert isinstance(out[0], Missed) and out[0].reason is MissReason.QUEUE_ABANDON and out[0].waited == 12


def test_a_callback_leg_is_never_an_offered_call():
    """The Originate's operator channel (Uniqueid and Linkedid ``cbd-...``) shows the client's number as its
    caller ID. Were it followed like an inbound call (detection.inbound_contexts empty, i.e. any context), its
    answer would be stored as an answered call whose wait is the operator's ring, the whisper and the client's
    ring: callback time inside ASA, and a callback "recovering" its own request."""
    det = Detector(DetectionRules(inbound_contexts=frozenset()))
    lid = "cbd-6f1c2a"
    leg = {"Linkedid": lid, "Uniqueid": lid}
    events = [
        {**newchannel(caller="+12025550143", context="callbackd-bridge", exten="s"), **leg},
        {**ev("DialBegin", DestChannel="PJSIP/pstn-00000007", DialString="+12025550143@pstn"), **leg},
        {**ev("DialEnd", DialStatus="ANSWER", DestCallerIDNum="+12025550143"), **leg},
        {**ev("Hangup"), **leg},
    ]
    assert run(det, events) == []
    assert det.calls == {}
    channel = {"Linkedid": lid, "Uniqueid": lid, "Context": "callbackd-bridge", "CallerIDNum": "+12025550143"}
    assert det.resync([{**channel, "Duration": "00:00:09", "BridgeId": "b1"}], [], T0) == []
    assert det.calls == {}


# -- calls the PBX placed, late caller numbers, queue answers and waits --------------------------


def originate_dial(uid=LID, dialstring="+15551230041@pstn"):
    """An Originate's first DialBegin: no calling channel, only the dialled one."""
    return {
        "Event": "DialBegin",
        "DestChannel": "PJSIP/pstn-00000000",
        "DestUniqueid": uid,
        "DestLinkedid": uid,
        "DialString": dialstring,
    }


def test_an_originate_with_a_caller_id_into_the_trunk_context_is_not_an_inbound_call():
    """Failed before the fix: a missed call (and an offered call) from the Originate's CallerID."""
    det = Detector()
    down = ev("Newchannel", CallerIDNum="15550000000", Context="from-pstn", Exten="s", ChannelState="0")
    out = run(
        det,
        [
            down,
            originate_dial(),
            ev("Newstate", ChannelState="6"),
            ev("QueueCallerJoin", Queue="support"),
            ev("HangupRequest"),
            ev("QueueCallerAbandon", Queue="support", HoldTime="3"),
            ev("Hangup"),
        ],
    )
    assert out == [] and det.calls == {}


def test_a_call_that_starts_down_with_no_number_and_never_gets_one_is_not_counted():
    """Other outbound shapes (call files, no DialBegin seen). Failed before: an ivr_hangup from <unknown>."""
    det = Detector()
    out = run(det, [newchannel(caller="<unknown>", exten="s") | {"ChannelState": "0"}, ev("Hangup")])
    assert out == []


def test_manual_outbound_recovery_still_works_for_an_originate_to_the_operators_phone():
    """Click-to-call: the PBX rings the operator, whose channel then dials the client."""
    det = Detector(DetectionRules(outbound_contexts=frozenset({"from-internal"})))
    lid = "1795400300.1"
    op = {"Linkedid": lid, "Uniqueid": lid}
    out = []
    for e in [
        {
            "Event": "Newchannel",
            **op,
            "Context": "from-internal",
            "ChannelState": "0",
            "CallerIDNum": "<unknown>",
        },
        originate_dial(uid=lid, dialstring="op1"),
        {
            "Event": "DialBegin",
            **op,
            "Context": "from-internal",
            "DestUniqueid": "1795400300.2",
            "DialString": "+12025550171@trunk",
        },
        {"Event": "DialEnd", **op, "DestUniqueid": "1795400300.2", "DialStatus": "ANSWER"},
    ]:
        out.extend(det.feed(e, T0))
    assert [(type(o).__name__, o.number) for o in out] == [("OutboundAnswered", "+12025550171")]


def test_new_callerid_updates_the_number_until_the_call_is_decided():
    """Failed before the fix: the number stayed what Newchannel said (empty here)."""
    det = Detector()
    out = run(
        det,
        [
            newchannel(caller="") | {"ChannelState": "4"},
            ev("NewCallerid", CallerIDNum="79990001122", CallerIDName="Late Number"),
            ev("QueueCallerJoin", Queue="support"),
            ev("HangupRequest"),
            ev("QueueCallerAbandon", Queue="support", HoldTime="5"),
            ev("NewCallerid", CallerIDNum="79990009999"),  # decided already: not followed
            ev("Hangup"),
        ],
    )
    miss = out[0]
    assert isinstance(miss, Missed) and (miss.caller_num, miss.caller_name) == ("79990001122", "Late Number")
    assert out[1].call.caller_num == "79990001122"
    # A dialplan that rewrites CALLERID(num) to an extension: not a client after all.
    det = Detector()
    assert run(det, [newchannel(), ev("NewCallerid", CallerIDNum="201"), ev("Hangup")]) == []


def test_a_queue_members_dial_answer_waits_for_agent_connect():
    """Failed before the fix: answered at DialEnd with agent '202' and no hold time."""
    det = Detector()
    leg = "1795400063.7"
    out = run(
        det,
        [
            newchannel(),
            ev("QueueCallerJoin", Queue="support"),
            ev("AgentCalled", Queue="support", DestUniqueid=leg, Interface="Local/202@from-queue/n"),
            ev("DialEnd", DialStatus="ANSWER", DestUniqueid=leg, DestCallerIDNum="202"),
            ev("QueueCallerLeave", Queue="support"),
        ],
    )
    assert out == []
    [answered] = det.feed(
        ev(
            "AgentConnect",
            Queue="support",
            Interface="Local/202@from-queue/n",
            MemberName="Anna",
            HoldTime="3",
            DestUniqueid=leg,
        ),
        T0 + timedelta(seconds=5),
    )
    assert answered.agent == "Local/202@from-queue/n"
    assert det.calls[LID].hold_time == 3 and det.calls[LID].agent_name == "Anna"


def test_a_plain_dial_answer_names_the_device_not_a_caller_id():
    det = Detector()
    out = run(
        det,
        [
            newchannel(),
            ev("DialEnd", DialStatus="ANSWER", DestChannel="PJSIP/op1-0000002a", DestCallerIDNum="201"),
        ],
    )
    assert out[0].agent == "PJSIP/op1"


def test_a_queue_time_out_without_a_hold_time_waited_from_join_to_leave():
    """Failed before the fix: waited was the whole call (0 s to the hang-up at 9 s here)."""
    det = Detector()
    at = {
        0: newchannel(),
        2: ev("QueueCallerJoin", Queue="support"),
        7: ev("QueueCallerLeave", Queue="support"),
        9: ev("Hangup"),
    }
    out = []
    for sec, e in at.items():
        out.extend(det.feed(e, T0 + timedelta(seconds=sec)))
    assert out[0].reason is MissReason.QUEUE_TIMEOUT and out[0].waited == 5


def test_a_local_members_inner_dial_is_not_the_answer():
    """FreePBX: the queue rings Local/201@from-queue/n, whose ;2 half dials PJSIP/op1; that inner
    DialEnd ANSWER comes first and named PJSIP/op1 as the agent (seen in the freepbx lab profile)."""
    det = Detector()
    local1, local2, phone = "1795400063.7", "1795400063.8", "1795400063.9"
    out = run(
        det,
        [
            newchannel(),
            ev("QueueCallerJoin", Queue="support"),
            ev("AgentCalled", Queue="support", DestUniqueid=local1, Interface="Local/201@from-queue/n"),
            ev(
                "DialEnd",
                Uniqueid=local2,
                DialStatus="ANSWER",
                DestUniqueid=phone,
                DestChannel="PJSIP/op1-0000002a",
            ),
            ev(
                "DialEnd",
                DialStatus="ANSWER",
                DestUniqueid=local1,
                DestChannel="Local/201@from-queue-00000003;1",
            ),
            ev(
                "AgentConnect",
                Queue="support",
                Interface="Local/201@from-queue/n",
                HoldTime="2",
                DestUniqueid=local1,
            ),
        ],
    )
    assert [(type(o).__name__, o.agent) for o in out] == [("Answered", "Local/201@from-queue/n")]
