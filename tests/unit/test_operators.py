import pytest

from callbackd.domain.operators import OperatorPool, UndialableMember, device_of, dial_channel


def member(interface, status="1", paused="0", queue="support", **extra):
    return {
        "Event": "QueueMemberStatus",
        "Queue": queue,
        "Interface": interface,
        "StateInterface": interface,
        "MemberName": interface.split("/")[-1],
        "Status": status,
        "Paused": paused,
        **extra,
    }


def test_only_not_inuse_unpaused_members_are_free_and_lru_first():
    pool = OperatorPool(["support"])
    pool.update(member("PJSIP/op1"))
    pool.update(member("PJSIP/op2"))
    pool.update(member("PJSIP/op3", status="2"))  # in use
    pool.update(member("PJSIP/op4", paused="1"))
    pool.update(member("PJSIP/op5", status="6"))  # ringing for someone else
    pool.update(member("PJSIP/op6", status="5"))  # unavailable: registered is not enough
    pool.update(member("PJSIP/op7", queue="other"))  # not our queue
    assert [m.interface for m in pool.free(1000.0)] == ["PJSIP/op1", "PJSIP/op2"]
    pool.reserve("PJSIP/op1", 1000.0)
    assert [m.interface for m in pool.free(1000.0)] == ["PJSIP/op2"]
    pool.release("PJSIP/op1")
    # op1 was used last, so op2 comes first.
    assert [m.interface for m in pool.free(1001.0)] == ["PJSIP/op2", "PJSIP/op1"]


def test_wrapup_keeps_an_operator_busy_after_a_call():
    pool = OperatorPool(["support"], wrapup_seconds=30)
    pool.update(member("PJSIP/op1", LastCall="1000"))
    assert pool.free(1010.0) == []
    assert [m.interface for m in pool.free(1031.0)] == ["PJSIP/op1"]


def test_resync_replaces_state_but_keeps_lru_and_counts_waiting_callers():
    pool = OperatorPool(["support"])
    pool.update(member("PJSIP/op1"))
    pool.reserve("PJSIP/op1", 500.0)
    pool.release("PJSIP/op1")
    pool.update({"Event": "QueueCallerJoin", "Queue": "support", "Count": "2"})
    assert pool.callers_waiting() == 2
    pool.resync(
        [
            {"Event": "QueueParams", "Queue": "support", "Calls": "0"},
            {
                "Event": "QueueMember",
                "Queue": "support",
                "Location": "PJSIP/op1",
                "StateInterface": "PJSIP/op1",
                "Name": "op1",
                "Status": "1",
                "Paused": "0",
                "InCall": "0",
            },
            {
                "Event": "QueueMember",
                "Queue": "support",
                "Location": "PJSIP/op2",
                "StateInterface": "PJSIP/op2",
                "Name": "op2",
                "Status": "1",
                "Paused": "0",
                "InCall": "0",
            },
        ]
    )
    assert pool.callers_waiting() == 0
    assert [m.interface for m in pool.free(600.0)] == ["PJSIP/op2", "PJSIP/op1"]
    # The member's name comes from QueueStatus's Name as well as QueueMemberStatus's MemberName.
    assert [m.name for m in pool.free(600.0)] == ["op2", "op1"]


def test_removed_member_is_forgotten():
    pool = OperatorPool(["support"])
    pool.update(member("PJSIP/op1"))
    pool.update({"Event": "QueueMemberRemoved", "Queue": "support", "Interface": "PJSIP/op1"})
    assert pool.free(0.0) == []


def test_every_member_type_is_dialled_by_its_interface_and_watched_by_its_state_interface():
    """FreePBX members are Local/201@from-queue/n with StateInterface hint:201@ext-local; the
    pool used to key (and so dial) them by the hint, which is no channel (failed before the fix)."""
    pool = OperatorPool(["support", "sales"])
    rows = [
        ("Local/201@from-queue/n", "hint:201@ext-local", "Anna"),
        ("PJSIP/202", "PJSIP/202", "Boris"),
        ("SIP/203", "SIP/203", "Clara"),
        ("IAX2/204", "IAX2/204", "Dmitri"),
        ("Agent:1001", "Agent:1001", "Eva"),
    ]
    for queue in ("support", "sales"):
        for interface, state, name in rows:
            pool.update(
                {
                    "Event": "QueueMemberStatus",
                    "Queue": queue,
                    "Interface": interface,
                    "StateInterface": state,
                    "MemberName": name,
                    "Status": "1",
                    "Paused": "0",
                }
            )
    free = pool.free(0.0)
    # One member per person across both queues, keyed by the interface.
    assert sorted(m.interface for m in free) == sorted(r[0] for r in rows)
    anna = pool.members["Local/201@from-queue/n"]
    assert (anna.name, anna.state_interface, anna.queues) == (
        "Anna",
        "hint:201@ext-local",
        {"support", "sales"},
    )
    assert [dial_channel(m.interface) for m in sorted(free, key=lambda m: m.name)] == [
        "Local/201@from-queue/n",
        "PJSIP/202",
        "SIP/203",
        "IAX2/204",
        "Local/1001@callbackd-agent",
    ]
    # The device's state follows the state interface: busy on the hint, busy member.
    pool.update(
        {
            "Event": "QueueMemberStatus",
            "Queue": "support",
            "Interface": "Local/201@from-queue/n",
            "StateInterface": "hint:201@ext-local",
            "Status": "2",
        }
    )
    assert "Local/201@from-queue/n" not in [m.interface for m in pool.free(0.0)]


def test_queue_status_rows_key_members_by_location():
    pool = OperatorPool(["support"])
    pool.resync(
        [
            {
                "Event": "QueueMember",
                "Queue": "support",
                "Location": "Local/201@from-queue/n",
                "StateInterface": "hint:201@ext-local",
                "Name": "Anna",
                "Status": "1",
                "Paused": "0",
                "InCall": "0",
            }
        ]
    )
    assert [m.interface for m in pool.free(0.0)] == ["Local/201@from-queue/n"]


def test_undiallable_interfaces_are_refused_and_never_offered():
    for bad in ("hint:201@ext-local", "PJSIP/op1\r\nAction: Command", "PJSIP/a&PJSIP/b", "op1", "Local/1,2"):
        with pytest.raises(UndialableMember):
            dial_channel(bad)
    pool = OperatorPool(["support"])
    pool.update(member("PJSIP/a&PJSIP/b"))
    assert pool.free(0.0) == []


def test_device_of_a_channel_is_the_interface_it_was_dialled_on():
    assert device_of("PJSIP/op1-0000002a") == "PJSIP/op1"
    assert device_of("SIP/203-000000f1") == "SIP/203"
    assert device_of("Local/201@from-queue-00000003;1") == "Local/201@from-queue"
    assert device_of("PJSIP/op1") == "PJSIP/op1"


def test_the_originate_rings_the_members_dial_channel():
    from types import SimpleNamespace

    from callbackd.config import DialerConfig
    from callbackd.dialer import originate_fields
    from callbackd.domain.phone import E164

    for operator, channel in [
        ("Local/201@from-queue/n", "Local/201@from-queue/n"),
        ("Agent:1001", "Local/1001@callbackd-agent"),
        ("PJSIP/op1", "PJSIP/op1"),
    ]:
        run = SimpleNamespace(attempt_id="a1", channel_id="cbd-a1", operator=operator, try_no=1)
        fields = originate_fields(DialerConfig(), run, "Ada", E164("+12025550123"), "queue_abandon")
        assert fields["Channel"] == channel


def test_an_operator_who_also_answers_a_queue_with_callers_waiting_is_held_for_them():
    """The dialer serves support; op1 and op2 answer sales too. A sales caller waiting holds
    both (Asterisk is about to ring them), unless paused in sales; status still shows them free."""
    pool = OperatorPool(["support"])
    for op in ("PJSIP/op1", "PJSIP/op2", "PJSIP/op3"):
        pool.update(member(op))
    pool.update(member("PJSIP/op1", queue="sales"))
    pool.update(member("PJSIP/op2", queue="sales"))
    pool.update({"Event": "QueueCallerJoin", "Queue": "sales", "Count": "1"})
    held = [m.interface for m in pool.free(1000.0, hold=True)]
    assert held == ["PJSIP/op3"]  # only the one who does not answer sales
    assert [m.interface for m in pool.free(1000.0)] == ["PJSIP/op1", "PJSIP/op2", "PJSIP/op3"]
    assert pool.callers_waiting() == 0  # the figure counts the dialer's queues
    assert pool.pick(1000.0, ["support"], exclude=["PJSIP/op3"], hold=True) is None
    pool.update(member("PJSIP/op1", queue="sales", paused="1"))  # Asterisk will not ring op1 for sales
    assert [m.interface for m in pool.free(1000.0, hold=True)] == ["PJSIP/op1", "PJSIP/op3"]
    pool.update({"Event": "QueueCallerLeave", "Queue": "sales", "Count": "0"})
    assert len(pool.free(1000.0, hold=True)) == 3
    # Removed from sales: no longer held by it; a resync forgets what it no longer lists.
    pool.update({"Event": "QueueMemberRemoved", "Queue": "sales", "Interface": "PJSIP/op2"})
    pool.update(member("PJSIP/op1", queue="sales", paused="0"))
    pool.update({"Event": "QueueCallerJoin", "Queue": "sales", "Count": "1"})
    assert [m.interface for m in pool.free(1000.0, hold=True)] == ["PJSIP/op2", "PJSIP/op3"]
    pool.resync([{"Event": "QueueParams", "Queue": "sales", "Calls": "1"}])
    assert pool.elsewhere == {} and pool.waiting == {"sales": 1}


def test_callers_waiting_in_the_dialers_own_queue_hold_its_members():
    pool = OperatorPool(["support"])
    pool.update(member("PJSIP/op1"))
    pool.update({"Event": "QueueCallerJoin", "Queue": "support", "Count": "1"})
    assert pool.free(1000.0, hold=True) == [] and len(pool.free(1000.0)) == 1
