"""Client-local hours through the store on real SQLite and PostgreSQL: the stored due time, the
refusal when hours never meet, the wait reason, and no claim outside the client's day."""

import asyncio
import functools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from callbackd.adapters import db
from callbackd.adapters.store import OutsideHours, Store
from callbackd.app import CLAIM_LEASE
from callbackd.domain.calendar import BusinessCalendar, ClientWindow
from callbackd.domain.intake import Contact, IntakeRules, Source, decide
from callbackd.domain.ladder import Schedule
from callbackd.domain.outcomes import Outcome
from callbackd.domain.retry import OperatorFailover
from callbackd.domain.states import RequestStatus

MOSCOW = ZoneInfo("Europe/Moscow")
VLADIVOSTOK = ZoneInfo("Asia/Vladivostok")
RULES = IntakeRules(region="RU")


async def make_store(url: str, calendar: BusinessCalendar) -> Store:
    engine = db.make_engine(url)
    await db.upgrade(engine)
    schedule = Schedule(
        calendar=calendar, client_window=ClientWindow.from_spec(), opening_spread=timedelta(0)
    )
    return Store(engine, node="t", schedule=schedule, claim_lease=CLAIM_LEASE)


def abandon(ref: str, number: str, at: datetime, **kw) -> Contact:
    return Contact(
        source=Source.AMI,
        source_ref=ref,
        raw_number=number,
        reason="queue_abandon",
        at=at,
        waited=30,
        caller_gave_up=True,
        **kw,
    )


@pytest.fixture
async def desk(db_url):
    store = await make_store(db_url, BusinessCalendar.always_open("Europe/Moscow"))
    yield store
    await store.engine.dispose()


async def test_vladivostok_abandon_at_20_moscow_is_due_at_9_vladivostok(desk):
    at = datetime(2026, 3, 2, 20, 0, tzinfo=MOSCOW)
    c = abandon("v1", "+74232123456", at)
    res = await desk.record_contact(c, decide(c, RULES))
    req, _, _ = await desk.get_request(res.request_id)
    assert req.client_zones == ["Asia/Vladivostok"]
    assert req.due_at == datetime(2026, 3, 3, 9, 0, tzinfo=VLADIVOSTOK)
    assert req.wait_reason == "client_hours"
    assert await desk.claim_due(datetime(2026, 3, 3, 8, 59, tzinfo=VLADIVOSTOK), 5) == []
    [claimed] = await desk.claim_due(datetime(2026, 3, 3, 9, 0, tzinfo=VLADIVOSTOK), 5)
    assert claimed.id == req.id


async def test_form_zone_wins_over_the_number(desk):
    at = datetime(2026, 3, 2, 20, 0, tzinfo=MOSCOW)
    c = abandon("v2", "+74232123456", at, client_tz="Europe/Moscow")
    res = await desk.record_contact(c, decide(c, RULES))
    req, _, _ = await desk.get_request(res.request_id)
    assert req.client_zones == ["Europe/Moscow"] and req.due_at == at


async def test_hours_that_never_meet_close_the_request_with_a_reason(db_url):
    afternoon = BusinessCalendar.from_spec("Europe/Moscow", {"mon-fri": "14:00-18:00"})
    store = await make_store(db_url, afternoon)
    try:
        c = abandon("h1", "+18085550123", datetime(2026, 3, 2, 12, 0, tzinfo=UTC))  # Honolulu
        res = await store.record_contact(c, decide(c, IntakeRules(region="US")))
        req, _, _ = await store.get_request(res.request_id)
        assert req.status == RequestStatus.FAILED
        assert req.close_reason == "no_common_hours" and req.due_at is None
        # Closed, so the number can open a new request later (e.g. after the hours change).
        assert not await store.has_open_request("+18085550123")
    finally:
        await store.engine.dispose()


async def test_due_request_not_claimed_after_the_clients_evening_ends(desk):
    # Due at 20:59 Vladivostok but no operator was free until 21:00: wait for the next morning.
    at = datetime(2026, 3, 3, 20, 59, tzinfo=VLADIVOSTOK)
    c = abandon("v3", "+74232123456", at)
    res = await desk.record_contact(c, decide(c, RULES))
    assert await desk.claim_due(datetime(2026, 3, 3, 21, 0, tzinfo=VLADIVOSTOK), 5) == []
    req, _, _ = await desk.get_request(res.request_id)
    assert req.status == RequestStatus.OPEN
    assert req.due_at == datetime(2026, 3, 4, 9, 0, tzinfo=VLADIVOSTOK)
    assert req.wait_reason == "client_hours"


async def test_retry_after_an_attempt_keeps_to_client_hours(desk):
    at = datetime(2026, 3, 3, 20, 30, tzinfo=VLADIVOSTOK)
    c = abandon("v4", "+74232123456", at)
    await desk.record_contact(c, decide(c, RULES))
    [req] = await desk.claim_due(at, 5)
    att = await desk.start_attempt(req.id, "PJSIP/op1", at, token=req.claim_token)
    done = await desk.finish_attempt(
        att.id,
        Outcome.CLIENT_NO_ANSWER,
        at + timedelta(minutes=1),
        failover=OperatorFailover(3, timedelta(seconds=30)),
    )
    # One hour on the ladder is 21:30 local: past the client's evening, so 09:00 next day.
    assert done.due_at == datetime(2026, 3, 4, 9, 0, tzinfo=VLADIVOSTOK)
    req, _, _ = await desk.get_request(req.id)
    assert req.wait_reason == "client_hours"


async def test_request_keeps_the_did_and_queue_of_the_call(desk):
    at = datetime(2026, 3, 3, 12, 0, tzinfo=VLADIVOSTOK)
    c = abandon("d1", "+74232123456", at, did="100", queue="support")
    res = await desk.record_contact(c, decide(c, RULES))
    req, _, _ = await desk.get_request(res.request_id)
    assert (req.did, req.queue) == ("100", "support")
    # A later call to another DID: the callback presents the number dialled last.
    c2 = abandon("d2", "+74232123456", at + timedelta(minutes=5), did="101", queue="sales")
    await desk.record_contact(c2, decide(c2, RULES))
    req, _, _ = await desk.get_request(res.request_id)
    assert req.did == "101"


async def test_chosen_time_is_kept_on_a_merge_and_set_from_the_cli(desk, db_url, tmp_path):
    at = datetime(2026, 3, 3, 10, 0, tzinfo=VLADIVOSTOK)
    c = abandon("c1", "+74232123456", at)
    res = await desk.record_contact(c, decide(c, RULES))
    req = await desk.choose_time(res.request_id, datetime(2026, 3, 4, 15, 0), at)
    assert req.due_at == datetime(2026, 3, 4, 15, 0, tzinfo=VLADIVOSTOK) and req.wait_reason == "chosen_time"
    # The client calls again and hangs up: still called at the time they chose.
    c2 = abandon("c2", "+74232123456", at + timedelta(hours=1))
    assert (await desk.record_contact(c2, decide(c2, RULES))).merged
    req, _, _ = await desk.get_request(res.request_id)
    assert req.due_at == datetime(2026, 3, 4, 15, 0, tzinfo=VLADIVOSTOK) and req.time_chosen
    with pytest.raises(ValueError, match="in the past"):
        await desk.choose_time(res.request_id, datetime(2026, 3, 3, 9, 0), at)


async def test_cli_adds_a_request_at_the_clients_local_time(db_url, tmp_path):
    from callbackd import cli

    config = tmp_path / "callbackd.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n[numbers]\ndefault_region = "RU"\n'
        '[schedule]\ntimezone = "Europe/Moscow"\nopening_spread = "0s"\n'
        '[schedule.hours]\n"mon-sun" = "00:00-24:00"\n'
    )
    config.chmod(0o600)  # the database URL may hold a password
    run = functools.partial(asyncio.to_thread, cli.main)
    assert await run(["--config", str(config), "db", "upgrade"]) == 0
    day = (datetime.now(VLADIVOSTOK) + timedelta(days=2)).date()
    args = ["--config", str(config), "requests", "add", "+79141234567", "--at", f"{day} 15:00"]
    assert await run([*args, "--tz", "Asia/Vladivostok"]) == 0
    engine = db.make_engine(db_url)
    try:
        store = Store(
            engine,
            node="t",
            schedule=Schedule(calendar=BusinessCalendar.always_open()),
            claim_lease=CLAIM_LEASE,
        )
        [req] = await store.list_requests()
        assert req.client_zones == ["Asia/Vladivostok"] and req.time_chosen
        assert req.due_at == datetime(day.year, day.month, day.day, 15, 0, tzinfo=VLADIVOSTOK)
        assert req.wait_reason == "chosen_time"
    finally:
        await engine.dispose()
    assert await run(["--config", str(config), "requests", "add", "+79141234568", "--at", "tomorrow"]) == 2


class KeypadCaller:
    """Asterisk's side of the FastAGI route: confirms the number, presses 2, keys in 15:30, confirms."""

    def __init__(self, typed: str) -> None:
        self.headers = {"agi_arg_1": "+74232123456", "agi_uniqueid": "u-keypad"}
        self.typed = typed
        self.sent: list[str] = []

    async def send_command(self, command: str) -> dict:
        self.sent.append(command)
        if command.startswith("GET DATA"):
            return {"result": (self.typed, "")}
        if command.startswith("WAIT FOR DIGIT"):
            return {"result": (str(ord("1")), "")}
        if command.startswith("STREAM FILE vm-press"):
            return {"result": (str(ord("2")), "")}
        return {"result": ("0", "")}


async def test_keypad_chosen_time_over_fastagi_is_stored_in_the_clients_zone(desk):
    from callbackd.adapters.agi import CallbackAgi

    async def submit(c: Contact):
        return await desk.record_contact(c, decide(c, RULES))

    agi = CallbackAgi(submit, RULES)
    caller = KeypadCaller("1530")
    await agi.callback_request(caller)  # type: ignore[arg-type]
    assert "SET VARIABLE CB_RESULT stored" in caller.sent
    # Read back as hours and minutes before it is stored.
    assert 'SAY NUMBER 15 "12"' in caller.sent and 'SAY NUMBER 30 "12"' in caller.sent
    [req] = await desk.list_requests()
    due = req.due_at.astimezone(VLADIVOSTOK)
    assert (due.hour, due.minute) == (15, 30) and req.time_chosen and req.wait_reason == "chosen_time"
    assert timedelta(0) <= req.due_at - req.created_at <= timedelta(days=1)


@pytest.mark.parametrize("typed", ["2460", "99", "abcd"])
async def test_a_bad_keyed_time_is_asked_again_then_as_soon_as_possible(desk, typed):
    from callbackd.adapters.agi import CallbackAgi

    async def submit(c: Contact):
        return await desk.record_contact(c, decide(c, RULES))

    caller = KeypadCaller(typed)
    await CallbackAgi(submit, RULES).callback_request(caller)  # type: ignore[arg-type]
    assert caller.sent.count('STREAM FILE please-try-again ""') == 2
    [req] = await desk.list_requests()
    assert not req.time_chosen and req.preferred_at is None


async def test_an_attempt_is_not_started_once_the_hours_have_ended_since_the_claim(desk):
    # Claimed 50 ms before the client's evening ends; the attempt would start 60 ms after it
    # (a slow turn of the dialer, a busy database). The store refuses that start and puts the
    # request back for the next morning, so no attempt row is stamped outside the hours.
    due = datetime(2026, 3, 3, 20, 59, tzinfo=VLADIVOSTOK)
    c = abandon("v5", "+74232123456", due)
    res = await desk.record_contact(c, decide(c, RULES))
    closing = datetime(2026, 3, 3, 21, 0, tzinfo=VLADIVOSTOK)
    [req] = await desk.claim_due(closing - timedelta(milliseconds=50), 5)
    with pytest.raises(OutsideHours):
        late = closing + timedelta(milliseconds=60)
        await desk.start_attempt(req.id, "PJSIP/op1", late, token=req.claim_token)
    req, attempts, _ = await desk.get_request(res.request_id)
    assert attempts == []
    assert req.status == RequestStatus.OPEN and req.attempts_made == 0
    assert req.due_at == datetime(2026, 3, 4, 9, 0, tzinfo=VLADIVOSTOK)
    assert req.wait_reason == "client_hours"
    # The next morning it is claimed and started as usual.
    [again] = await desk.claim_due(req.due_at, 5)
    att = await desk.start_attempt(again.id, "PJSIP/op1", req.due_at, token=again.claim_token)
    assert att.try_no == 1
