"""The Asterisk lab seen through AMI as callbackd sees it (account callbackd, panoramisk 1.4).

Needs root and, on first use, network access to build the cached chroot (asterisk/README.md).
These tests fail, never skip, when the lab cannot be started.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
from panoramisk import Manager

pytestmark = pytest.mark.lab

AMI = {"host": "127.0.0.1", "port": 5038, "username": "callbackd", "secret": "callbackd-lab-secret"}
DIAL_PATTERN = "PJSIP/{number}@pstn"


class Events:
    """Every AMI event the callbackd account receives, with waiting helpers."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.changed = asyncio.Event()

    def __call__(self, manager, event) -> None:
        self.items.append(dict(event))
        self.changed.set()

    async def wait_for(self, predicate, timeout: float, what: str) -> dict:
        async def _wait():
            seen = 0
            while True:
                for event in self.items[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.items)
                self.changed.clear()
                await self.changed.wait()

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            kinds = sorted({e.get("Event", "?") for e in self.items})
            pytest.fail(f"no {what} within {timeout:.0f} s; events seen: {kinds}")


@pytest.fixture
async def ami(lab):
    events = Events()
    manager = Manager(
        loop=asyncio.get_running_loop(), forgetable_actions=("ping", "login", "originate"), **AMI
    )
    manager.register_event("*", events)
    try:
        await asyncio.wait_for(manager.connect(), 10)
        for _ in range(100):
            if manager.authenticated:
                break
            await asyncio.sleep(0.05)
    except (OSError, TimeoutError) as exc:
        pytest.fail(f"cannot reach AMI at {AMI['host']}:{AMI['port']}: {exc!r}")
    if not manager.authenticated:
        pytest.fail("AMI login as callbackd failed")
    yield manager, events
    manager.close()


def outside_number() -> str:
    return "1555" + "".join(random.choices("0123456789", k=7))


async def originate(manager, client: str, *, operator: str = "PJSIP/op1", ring: int = 20) -> str:
    """callbackd's operator-first Originate; returns the attempt id (ChannelId is cbd-<attempt>)."""
    attempt = uuid.uuid4().hex[:12]
    response = await manager.send_action(
        {
            "Action": "Originate",
            "Channel": operator,
            "Context": "callbackd-bridge",
            "Exten": "s",
            "Priority": 1,
            "Async": "true",
            "ChannelId": f"cbd-{attempt}",
            "OtherChannelId": f"cbd-{attempt}-2",
            "CallerID": f'"Client" <{client}>',
            "Timeout": 20000,
            "Variable": [
                f"CBD_ATTEMPT={attempt}",
                f"CBD_DIAL={DIAL_PATTERN.format(number=client)}",
                f"CBD_DIAL_TIMEOUT={ring}",
                'CBD_OUTCID="Company" <+15550000000>',
                "CBD_WHISPER=beep",
                "CBD_TRY=1",
            ],
        }
    )
    first = response[0] if isinstance(response, list) else response
    assert first.get("Response") == "Success", f"Originate refused: {dict(first)}"
    return attempt


def is_result(attempt: str):
    return lambda e: (
        e.get("Event") == "UserEvent"
        and e.get("UserEvent") == "CallbackdResult"
        and e.get("Attempt") == attempt
    )


def test_lab_is_up(lab):
    status = lab.status()
    assert status["up"], status
    assert status["ami"]["callbackd_login"], status["ami"]
    for name in ("op1", "op2"):
        assert status["operators"][name]["running"], status["operators"]
    assert status["pstn"]["running"], status["pstn"]


async def test_actions_callbackd_needs_are_allowed(ami):
    manager, _ = ami
    for action in ("Ping", "QueueStatus", "CoreShowChannels"):
        response = await manager.send_action({"Action": action})
        first = response[0] if isinstance(response, list) else response
        assert first.get("Response") == "Success", f"{action}: {dict(first)}"


async def test_abandoned_queue_call_raises_queue_caller_abandon(lab, ami):
    _, events = ami
    caller = outside_number()
    lab.operator("all", "noanswer")
    try:
        await asyncio.to_thread(lab.call, caller, 4)
        abandon = await events.wait_for(
            lambda e: e.get("Event") == "QueueCallerAbandon" and e.get("CallerIDNum") == caller,
            10,
            f"QueueCallerAbandon for {caller}",
        )
    finally:
        lab.operator("all", "answer")
    assert abandon["Queue"] == "support"
    assert 3 <= int(abandon["HoldTime"]) <= 6, abandon
    joined = [
        e for e in events.items if e.get("Event") == "QueueCallerJoin" and e.get("CallerIDNum") == caller
    ]
    assert joined and joined[0]["Linkedid"] == abandon["Linkedid"]


async def test_originate_bridges_operator_and_answering_client(lab, ami):
    manager, events = ami
    client = "+15551230001"
    lab.operator("op1", "answer")
    lab.pstn(client, "answer:2")  # answers, hangs up after 2 s
    attempt = await originate(manager, client)
    result = await events.wait_for(is_result(attempt), 40, f"CallbackdResult for attempt {attempt}")
    assert result["DialStatus"] == "ANSWER", result
    linked = [e for e in events.items if e.get("Linkedid") == f"cbd-{attempt}"]
    client_leg = [
        e
        for e in linked
        if e.get("Event") == "DialEnd" and e.get("DestChannel", "").startswith("PJSIP/pstn-")
    ]
    assert [e["DialStatus"] for e in client_leg] == ["ANSWER"], client_leg
    bridged = [e["Channel"].split("-")[0] for e in linked if e.get("Event") == "BridgeEnter"]
    assert sorted(bridged) == ["PJSIP/op1", "PJSIP/pstn"], bridged


async def test_scripted_client_is_busy_then_answers(lab, ami):
    manager, events = ami
    client = "+1555777" + "".join(random.choices("0123459", k=4))
    lab.operator("op1", "answer")
    lab.pstn(client, "busy,answer:2")
    outcomes = []
    for _ in range(2):
        attempt = await originate(manager, client)
        result = await events.wait_for(is_result(attempt), 40, f"CallbackdResult for attempt {attempt}")
        outcomes.append((result["DialStatus"], result["HangupCause"]))
        await asyncio.sleep(0.5)  # let op1 finish the previous call (ringinuse-free)
    assert outcomes == [("BUSY", "17"), ("ANSWER", "16")], outcomes
