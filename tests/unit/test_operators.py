from callbackd.domain.operators import OperatorPool


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
