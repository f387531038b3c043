"""Webhooks on real SQLite and PostgreSQL against a real local HTTP receiver that is down for a
while, then answers 500s, then answers slowly; the dispatcher is restarted in between."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

from callbackd import cli
from callbackd.adapters import db
from callbackd.adapters import models as m
from callbackd.adapters.store import Store
from callbackd.adapters.webhooks import Dispatcher, Endpoint, Outbox, Policy
from callbackd.app import CLAIM_LEASE
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.intake import Contact, IntakeRules, Source, decide
from callbackd.domain.ladder import Schedule
from callbackd.domain.outcomes import Outcome
from callbackd.domain.retry import OperatorFailover
from callbackd.domain.states import RequestEvent

SECRET = b"webhook-secret-0123456789abcdef"
RULES = IntakeRules(region="US")
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
# Short backoffs: the same code paths as minutes, in a test's time.
FAST = Policy(
    timeout=3.0, backoff_min=0.05, backoff_max=0.4, max_tries=10_000, poll_interval=0.02, concurrency=4
)


class Receiver:
    """A real HTTP server on a fixed port: stopped (connection refused), failing (500) or slow."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.fail_next = 0
        self.delay = 0.0
        self.accepted: list[tuple[dict[str, str], bytes]] = []
        self.refused = 0
        self.bitrix: list[tuple[str, dict]] = []
        self._server: ThreadingHTTPServer | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(outer.delay)
                with outer.lock:
                    if outer.fail_next > 0:
                        outer.fail_next -= 1
                        outer.refused += 1
                        code, answer = 500, b"{}"
                    elif self.path.startswith("/rest/"):
                        method = self.path.rsplit("/", 1)[-1].removesuffix(".json")
                        outer.bitrix.append((method, json.loads(body)))
                        code, answer = (
                            200,
                            json.dumps({"result": {"CALL_ID": f"externalCall.{len(outer.bitrix)}"}}).encode(),
                        )
                    else:
                        outer.accepted.append((dict(self.headers), body))
                        code, answer = 204, b""
                self.send_response(code)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def contact(ref: str, number: str, at: datetime = NOW) -> Contact:
    return Contact(
        source=Source.AMI,
        source_ref=ref,
        raw_number=number,
        reason="queue_abandon",
        at=at,
        waited=30,
        caller_gave_up=True,
    )


@pytest.fixture
async def engine(db_url):
    e = db.make_engine(db_url)
    await db.upgrade(e)
    yield e
    await e.dispose()


def store_with(engine, *endpoints: Endpoint) -> Store:
    store = Store(engine, node="n1", schedule=Schedule(calendar=BusinessCalendar.always_open("UTC")),
                  claim_lease=CLAIM_LEASE)  # fmt: skip
    store.outbox = Outbox(endpoints)
    return store


async def pending(engine) -> int:
    async with db.sessionmaker(engine)() as s:
        q = select(func.count()).select_from(m.OutboxEvent).where(m.OutboxEvent.status == "pending")
        return (await s.execute(q)).scalar_one()


async def until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def a_callback(store: Store, rid: int, outcome: Outcome, now: datetime) -> None:
    [req] = await store.claim_due(now, 5)
    assert req.id == rid
    att = await store.start_attempt(rid, "PJSIP/op1", now, token=req.claim_token)
    await store.finish_attempt(
        att.id, outcome, now, failover=OperatorFailover(3, timedelta(seconds=30)),
        **({"talk_seconds": 42} if outcome is Outcome.ANSWERED else {}),
    )  # fmt: skip


EXPECTED = {
    "r1": [
        "request.created",
        "request.merged",
        "attempt.started",
        "attempt.outcome",
        "attempt.started",
        "attempt.outcome",
        "request.reached",
        "request.closed",
    ],
    "r2": ["request.created", "request.closed"],
}


async def test_every_event_delivered_once_in_order_and_signed_across_outage_errors_and_restart(engine):
    rx = Receiver(free_port())
    hook = Endpoint("crm", f"http://127.0.0.1:{rx.port}/hook", secret=SECRET)
    store = store_with(engine, hook)
    first = Dispatcher(engine, (hook,), FAST)
    first.start()
    try:
        # While the receiver is down: events pile up in the outbox and fail with backoff.
        r1 = (await store.record_contact(c := contact("L1", "2025550123"), decide(c, RULES))).request_id
        await store.record_contact(c := contact("L2", "+1 202 555 0123"), decide(c, RULES))
        await a_callback(store, r1, Outcome.CLIENT_NO_ANSWER, NOW)
        await until(lambda: _tried(engine))
    finally:
        await first.stop()  # the daemon restarts: only the database remembers
    assert rx.accepted == [] and first.delivered == 0 and first.failed > 0

    second = Dispatcher(engine, (hook,), FAST)
    second.start()
    try:
        await asyncio.sleep(0.3)
        rx.fail_next = 6  # then it answers 500s ...
        rx.start()
        r2 = (await store.record_contact(c := contact("L3", "2025550199"), decide(c, RULES))).request_id
        await until(lambda: _refused_all(rx))
        rx.delay = 0.15  # ... and then slowly
        await store.admin_event(r2, RequestEvent.CANCEL, NOW, actor="token:crm")
        await a_callback(store, r1, Outcome.ANSWERED, NOW + timedelta(days=1))
        await until(lambda: _none_pending(engine))
    finally:
        await second.stop()
        rx.stop()

    assert rx.refused == 6
    seen: dict[int, list[str]] = {}
    deliveries = []
    for headers, body in rx.accepted:
        ts = headers["X-Callbackd-Timestamp"]
        want = "v1=" + hmac.new(SECRET, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Callbackd-Signature"], want)
        assert abs(int(ts) - time.time()) < 120
        event = json.loads(body)
        assert headers["X-Callbackd-Event"] == event["event"]
        assert str(event["delivery"]) == headers["X-Callbackd-Delivery"]
        deliveries.append(event["delivery"])
        rid = event["request"]["id"] if "request" in event else None
        seen.setdefault(rid or _attempt_request(event, r1, r2), []).append(event["event"])
    assert len(deliveries) == len(set(deliveries)), "an event was delivered twice"
    assert seen == {r1: EXPECTED["r1"], r2: EXPECTED["r2"]}
    closed = [json.loads(b) for _, b in rx.accepted if json.loads(b)["event"] == "request.closed"]
    assert {e["request"]["status"] for e in closed} == {"reached", "cancelled"}


def _attempt_request(event: dict, r1: int, r2: int) -> int:
    assert event["event"].startswith("attempt.")
    return r1  # only r1 has attempts


async def _tried(engine) -> bool:
    async with db.sessionmaker(engine)() as s:
        q = select(func.max(m.OutboxEvent.tries))
        return ((await s.execute(q)).scalar() or 0) >= 3


async def _refused_all(rx: Receiver) -> bool:
    return rx.fail_next == 0


async def _none_pending(engine) -> bool:
    return await pending(engine) == 0


async def test_dead_letters_are_listed_and_sent_again_from_the_command_line(engine, db_url, tmp_path, capsys):
    rx = Receiver(free_port())
    hook = Endpoint("crm", f"http://127.0.0.1:{rx.port}/hook", secret=SECRET)
    store = store_with(engine, hook)
    await store.record_contact(c := contact("L1", "2025550123"), decide(c, RULES))
    give_up = Dispatcher(engine, (hook,), Policy(timeout=1, backoff_min=0.01, backoff_max=0.02, max_tries=3))
    try:
        for _ in range(3):
            await give_up.run_once()
            await asyncio.sleep(0.05)
    finally:
        await give_up.stop()
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n')
    config.chmod(0o600)
    run = lambda *a: asyncio.to_thread(cli.main, ["-c", str(config), "webhooks", *a])  # noqa: E731
    capsys.readouterr()  # the dispatcher's log lines
    assert await run("list", "--status", "dead", "--json") == 0
    [dead] = json.loads(capsys.readouterr().out)
    assert (dead["event"], dead["tries"], dead["status"]) == ("request.created", 3, "dead")
    assert "connect" in dead["last_error"].lower() or "connection" in dead["last_error"].lower()
    assert await run("retry") == 2
    assert await run("retry", "--dead") == 0
    assert "1 event(s) due again" in capsys.readouterr().out
    rx.start()
    try:
        again = Dispatcher(engine, (hook,), FAST)
        again.start()
        await until(lambda: _none_pending(engine), 20)
        await again.stop()
    finally:
        rx.stop()
    assert [json.loads(b)["event"] for _, b in rx.accepted] == ["request.created"]
    assert await run("list") == 0
    assert "delivered" in capsys.readouterr().out


async def test_bitrix24_registers_the_missed_call_and_finishes_it_with_the_callbacks_outcome(engine):
    rx = Receiver(free_port())
    portal = Endpoint("b24", f"http://127.0.0.1:{rx.port}/rest/7/k3y/", kind="bitrix24", bitrix_user_id=7)
    store = store_with(engine, portal)
    rx.start()
    sender = Dispatcher(engine, (portal,), FAST)
    sender.start()
    try:
        r1 = (await store.record_contact(c := contact("L1", "2025550123"), decide(c, RULES))).request_id
        await a_callback(store, r1, Outcome.ANSWERED, NOW)
        r2 = (await store.record_contact(c := contact("L2", "2025550124"), decide(c, RULES))).request_id
        await store.admin_event(r2, RequestEvent.CANCEL, NOW)
        await until(lambda: _none_pending(engine), 20)
    finally:
        await sender.stop()
        rx.stop()
    calls = [(method, p.get("PHONE_NUMBER") or p["CALL_ID"]) for method, p in rx.bitrix]
    assert sorted(calls) == sorted(
        [
            ("telephony.externalcall.register", "+12025550123"),
            ("telephony.externalcall.register", "+12025550124"),
            ("telephony.externalcall.finish", calls_id(rx, "+12025550123")),
            ("telephony.externalcall.finish", calls_id(rx, "+12025550124")),
        ]
    )  # only the two events Bitrix24 takes; attempts and merges are not sent
    register = next(
        p for meth, p in rx.bitrix if meth.endswith("register") and p["PHONE_NUMBER"] == "+12025550123"
    )
    assert (register["USER_ID"], register["TYPE"], register["CRM_CREATE"]) == (7, 2, 1)
    finishes = {p["CALL_ID"]: p for meth, p in rx.bitrix if meth.endswith("finish")}
    reached = finishes[calls_id(rx, "+12025550123")]
    assert (reached["STATUS_CODE"], reached["DURATION"], reached["USER_ID"]) == ("200", 42, 7)
    assert finishes[calls_id(rx, "+12025550124")]["STATUS_CODE"] == "603-S"


def calls_id(rx: Receiver, number: str) -> str:
    """The CALL_ID the receiver answered to the register call for *number*."""
    for i, (method, params) in enumerate(rx.bitrix, 1):
        if method.endswith("register") and params["PHONE_NUMBER"] == number:
            return f"externalCall.{i}"
    raise AssertionError(number)


def test_webhook_config_is_validated_and_read(tmp_path):
    from callbackd.adapters.webhooks import from_config
    from callbackd.config import ConfigError, load

    path = tmp_path / "c.toml"

    def problems(toml: str) -> str:
        path.write_text(toml)
        path.chmod(0o600)
        with pytest.raises(ConfigError) as exc:
            load(path)
        return str(exc.value)

    assert "exactly one of secret and secret_file" in problems(
        '[[webhooks.endpoints]]\nname = "a"\nurl = "http://x/"\n'
    )
    assert "http:// or https://" in problems(
        '[[webhooks.endpoints]]\nname = "a"\nurl = "ftp://x"\nkind = "bitrix24"\n'
    )
    one = '[[webhooks.endpoints]]\nname = "a"\nurl = "https://b24.example/rest/1/key/"\nkind = "bitrix24"\n'
    assert "endpoint names must differ" in problems(one + "\n" + one)
    assert "webhooks.endpoints.0.events.0" in problems(one + 'events = ["call.rang"]\n')
    path.write_text('[webhooks]\nbackoff_min = "2s"\nmax_tries = 5\n\n' + one)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):  # the Bitrix24 URL holds its key
        load(path)
    path.chmod(0o600)
    [endpoint], policy = from_config(load(path))
    assert (
        endpoint.kind == "bitrix24"
        and endpoint.wants("request.closed")
        and not endpoint.wants("attempt.started")
    )
    assert (policy.backoff_min, policy.max_tries) == (2.0, 5)
    assert [policy.delay(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0] and policy.delay(60) == 3600.0


async def test_a_cancel_from_the_command_line_is_audited_and_queued_for_the_crm(
    engine, db_url, tmp_path, capsys
):
    import getpass

    store = store_with(engine)  # the daemon's store: no endpoints needed to record the request
    rid = (await store.record_contact(c := contact("L1", "2025550123"), decide(c, RULES))).request_id
    config = tmp_path / "c.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n\n[[webhooks.endpoints]]\nname = "crm"\n'
        f'url = "http://127.0.0.1:9/hook"\nsecret = "{SECRET.decode()}"\n'
    )
    config.chmod(0o600)
    assert await asyncio.to_thread(cli.main, ["-c", str(config), "requests", "cancel", str(rid)]) == 0
    assert f"request {rid}: cancelled" in capsys.readouterr().out
    async with db.sessionmaker(engine)() as s:
        queued = (await s.execute(select(m.OutboxEvent.event, m.OutboxEvent.request_id))).all()
    assert queued == [("request.closed", rid)]
    [entry] = await store.audit_trail(rid)
    assert (entry.actor, entry.action) == (f"cli:{getpass.getuser()}", "cancel")
