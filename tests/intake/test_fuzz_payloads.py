"""Property: whatever bytes arrive, the MQTT handler replies and stores only leads it will call back."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from leadkit import BLACKLISTED, INJECTIONS, NOW, RULES, counts

from callbackd.adapters import db
from callbackd.adapters.mqtt import MqttIntake
from callbackd.adapters.payloads import MAX_PAYLOAD, LeadForm, to_contact
from callbackd.adapters.store import Store
from callbackd.app import CLAIM_LEASE
from callbackd.config import MqttConfig
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.intake import Disposition, Source, decide
from callbackd.domain.ladder import Schedule

PHONES = st.one_of(
    st.sampled_from(["2025550123", "+1 (312) 555-0188", "+442079460958", BLACKLISTED, "+19005550123"]),
    st.sampled_from(INJECTIONS),
    st.text(alphabet="0123456789 +-().#*&,;$x", max_size=40),
    st.text(max_size=70),
)
OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
WHEN = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS).map(
        lambda d: d.isoformat()
    ),
    st.datetimes().map(lambda d: d.isoformat()),  # naive
    st.text(max_size=30),
    st.integers(),
)
REF = st.from_regex(r"[A-Za-z0-9_.:-]{1,140}", fullmatch=True)
FORMS = st.fixed_dictionaries(
    {"phone": PHONES},
    optional={
        "name": st.text(max_size=100),
        "source": st.one_of(st.from_regex(r"[A-Za-z0-9_.-]{1,40}", fullmatch=True), st.text(max_size=10)),
        "comment": st.text(max_size=2100),
        "preferred_time": WHEN,
        "id": st.one_of(REF, st.text(max_size=10)),
        "extra": st.integers(),
    },
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
PAYLOADS = st.one_of(
    st.binary(max_size=512),
    JSON.map(lambda v: json.dumps(v).encode()),
    FORMS.map(lambda v: json.dumps(v).encode()),
    FORMS.map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
    FORMS.map(lambda v: json.dumps(v).encode() + b" " * MAX_PAYLOAD),
)


def _would_schedule(payload: bytes) -> bool:
    try:
        form = LeadForm.model_validate_json(payload)
    except ValueError:
        return False
    if len(payload) > MAX_PAYLOAD:
        return False
    return decide(to_contact(form, Source.MQTT, NOW), RULES).disposition is Disposition.SCHEDULE


def test_handle_payload_never_raises_and_stores_only_callable_leads(tmp_path):
    with asyncio.Runner() as runner:
        engine = db.make_engine(f"sqlite+aiosqlite:///{tmp_path}/fuzz.db")
        runner.run(db.upgrade(engine))
        store = Store(
            engine,
            node="fuzz",
            schedule=Schedule(calendar=BusinessCalendar.always_open("UTC")),
            claim_lease=CLAIM_LEASE,
        )

        async def submit(contact):
            return await store.record_contact(contact, decide(contact, RULES))

        intake = MqttIntake(MqttConfig(), submit, RULES, clock=lambda: NOW)

        @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(payload=PAYLOADS)
        def check(payload: bytes) -> None:
            before = runner.run(counts(store))
            reply = runner.run(intake.handle_payload(payload))
            after = runner.run(counts(store))
            json.dumps(reply)  # always publishable
            assert isinstance(reply["ok"], bool)
            if reply["ok"]:
                assert _would_schedule(payload)
                assert reply["status"] in ("created", "merged", "duplicate")
                assert after[0] - before[0] == (0 if reply["status"] == "duplicate" else 1)
            else:
                assert reply["error"] and reply["code"] != "internal", reply
                assert after == before

        try:
            check()
            contacts, _requests = runner.run(counts(store))
            assert contacts > 0  # the strategies did reach the store
        finally:
            runner.run(engine.dispose())
