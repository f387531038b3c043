"""Per-queue callbacks: which operators take a client's callback, and what they hear and show."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from callbackd.adapters.payloads import LeadForm, to_contact
from callbackd.config import DialerConfig, ScheduleConfig, build_schedule
from callbackd.dialer import originate_fields, whisper
from callbackd.domain.attempts import Attempt
from callbackd.domain.intake import Source
from callbackd.domain.operators import OperatorPool
from callbackd.domain.phone import E164
from callbackd.domain.routing import Routes, claimable

ROUTES = Routes(("support", "sales", "vip"), {"sales": ("support",), "vip": ("sales", "support")})


def member(interface, queue, paused="0", status="1"):
    return {
        "Event": "QueueMemberStatus",
        "Queue": queue,
        "Interface": interface,
        "StateInterface": interface,
        "MemberName": interface.split("/")[-1],
        "Status": status,
        "Paused": paused,
    }


def test_a_callback_goes_to_its_queue_then_its_fallbacks_and_unserved_requests_anywhere():
    assert ROUTES.route("sales") == ("sales", "support")
    assert ROUTES.route("support") == ("support",)
    assert ROUTES.route("vip") == ("vip", "sales", "support")
    assert ROUTES.route(None) == ROUTES.route("billing") == ("support", "sales", "vip")


def test_live_callers_hold_back_only_their_own_queues_callbacks():
    waiting = {"support": 2}
    assert ROUTES.usable("support", waiting, hold=True) == ()
    # sales' own callers are not waiting: it goes on, but support lends nobody
    assert ROUTES.usable("sales", waiting, hold=True) == ("sales",)
    assert ROUTES.usable("vip", {"sales": 1}, hold=True) == ("vip", "support")
    # a request of no served queue waits while anybody waits
    assert ROUTES.usable(None, waiting, hold=True) == ()
    assert ROUTES.usable("support", waiting, hold=False) == ("support",)


def test_fallbacks_must_be_served_queues():
    with pytest.raises(ValueError, match="billing"):
        Routes(("support",), {"support": ("billing",)})


def test_only_requests_whose_route_has_a_free_operator_are_claimed():
    free = {"support": 1, "sales": 0, "vip": 0}

    def has_free(queues):
        return any(free[q] for q in queues)

    # support's callers wait: support's requests and unserved ones wait, sales borrows nobody
    # from support, and vip finds nobody free in vip or sales.
    assert claimable(ROUTES, {"support": 1}, True, has_free) == (frozenset(), False)
    assert claimable(ROUTES, {}, True, has_free) == (frozenset({"support", "sales", "vip"}), True)
    free["support"] = 0
    assert claimable(ROUTES, {}, True, has_free) == (frozenset(), False)
    free["vip"] = 1
    assert claimable(ROUTES, {"vip": 2}, True, has_free) == (frozenset(), False)
    assert claimable(ROUTES, {"vip": 2}, False, has_free) == (frozenset({"vip"}), True)


def test_pause_is_per_queue_and_pick_prefers_the_clients_queue():
    pool = OperatorPool(["support", "sales"])
    pool.update(member("PJSIP/op1", "support"))
    pool.update(member("PJSIP/op1", "sales", paused="1"))
    pool.update(member("PJSIP/op2", "sales"))
    assert [m.interface for m in pool.free(0.0, queues=["sales"])] == ["PJSIP/op2"]
    assert [m.interface for m in pool.free(0.0, queues=["support"])] == ["PJSIP/op1"]
    assert not pool.members["PJSIP/op1"].paused  # still takes support's calls
    pool.reserve("PJSIP/op1", 5.0)
    pool.release("PJSIP/op1")
    # op1 was used last, but a sales client gets sales' member, not the least recently used one
    assert pool.pick(10.0, ("sales", "support")).interface == "PJSIP/op2"
    pool.reserve("PJSIP/op2", 10.0)
    assert pool.pick(10.0, ("sales", "support")).interface == "PJSIP/op1"  # the fall-back
    assert pool.pick(10.0, ("sales",)) is None
    pool.update(member("PJSIP/op1", "support", paused="1"))
    assert pool.members["PJSIP/op1"].paused
    assert pool.callers_waiting(["sales"]) == 0


def test_a_queue_has_its_own_whisper_and_caller_id():
    cfg = DialerConfig(
        queues=["support", "sales"],
        outbound_callerid="+15550000",
        whisper_intro=["beep"],
        by_queue={
            "sales": {"outbound_callerid": '"Sales" <+15550111>', "whisper_intro": ["custom/sales-intro"]}
        },
        callerid_by_did={"+15550999": "+15550999"},
    )
    att = Attempt("a1", "cbd-1", 1, "+12025550123", "PJSIP/op2", 1, started_at=datetime.now(UTC))
    number = E164.trusted("+12025550123")

    def variables(**kw):
        fields = originate_fields(cfg, att, "", number, "queue_abandon", **kw)
        return dict(v.split("=", 1) for v in fields["Variable"])

    assert variables(queue="sales")["CBD_OUTCID"] == '"Sales" <+15550111>'
    assert variables(queue="sales")["CBD_WHISPER"] == "custom/sales-intro&queue-callswaiting"
    assert variables(queue="support")["CBD_OUTCID"] == "+15550000"
    assert variables(queue=None)["CBD_WHISPER"] == "beep&queue-callswaiting"
    # the number the client dialled still decides first
    assert variables(queue="sales", did="+15550999")["CBD_OUTCID"] == "+15550999"
    assert whisper(cfg, "no_answer", "sales") == "custom/sales-intro&number-not-answering"


@pytest.mark.parametrize(
    "bad",
    [
        {"by_queue": {"sales": {}}},  # not a served queue
        {"queues": ["support"], "by_queue": {"support": {"fallback": ["sales"]}}},
        {"queues": ["sup port"]},
        {"source_queues": {"a b": "support"}},
        {"by_queue": {"support": {"outbound_callerid": "x;Dial(evil)"}}},
        {"by_queue": {"support": {"whisper_intro": ["../../etc/passwd"]}}},
    ],
)
def test_bad_queue_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        DialerConfig(**bad)


def test_a_web_form_chooses_its_queue_by_source():
    now = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    form = LeadForm(phone="+12025550123", source="site-sales")
    assert to_contact(form, Source.HTTP, now, source_queues={"site-sales": "sales"}).queue == "sales"
    assert to_contact(form, Source.HTTP, now, source_queues={}).queue is None
    unnamed = LeadForm(phone="+12025550123")
    assert to_contact(unnamed, Source.HTTP, now, source_queues={"site-sales": "sales"}).queue is None


def test_a_queue_keeps_its_own_business_hours():
    cfg = ScheduleConfig(
        timezone="UTC",
        hours={"mon-fri": ["09:00-18:00"]},
        queues={"sales": {"hours": {"mon-sat": ["09:00-18:00"]}}},
    )
    schedule = build_schedule(cfg)
    saturday = datetime(2026, 3, 7, 10, 0, tzinfo=UTC)
    assert schedule.calendar_for("sales").is_open(saturday)
    assert not schedule.calendar_for("support").is_open(saturday)
    assert schedule.open_for_any(saturday)
    sales = schedule.plan(0, None, saturday, queue="sales")
    support = schedule.plan(0, None, saturday, queue="support")
    assert sales.due == saturday
    assert support.due is not None and support.due.weekday() == 0  # Monday
