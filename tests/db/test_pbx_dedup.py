"""Calls and contacts are unique per PBX, on real SQLite and PostgreSQL, and migration 0002
keeps the rows an 0001 database already holds."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from callbackd.adapters import db
from callbackd.adapters import models as m
from callbackd.adapters.store import Store
from callbackd.app import CLAIM_LEASE
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.detection import CallTrack, MissReason
from callbackd.domain.intake import Contact, IntakeRules, Source, decide
from callbackd.domain.ladder import Schedule

RULES = IntakeRules(region="US")
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
LINKEDID = "1764500000.42"  # what two Asterisks without systemname both raise


def make_store(engine, node: str, **kw) -> Store:
    """A daemon's store; its PBX identity is its node name unless ``pbx`` is given."""
    schedule = Schedule(calendar=BusinessCalendar.always_open("UTC"))
    return Store(engine, node=node, schedule=schedule, claim_lease=CLAIM_LEASE, **kw)


def missed(number: str, source: Source = Source.AMI, ref: str = LINKEDID) -> Contact:
    return Contact(
        source=source, source_ref=ref, raw_number=number, reason="queue_abandon", at=NOW, waited=40
    )


def call(number: str) -> CallTrack:
    return CallTrack(
        linkedid=LINKEDID,
        caller_num=number,
        caller_name="",
        did="100",
        context="from-pstn",
        started_at=NOW,
        ended_at=NOW + timedelta(seconds=40),
        missed=MissReason.QUEUE_ABANDON,
    )


async def count(engine, model) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(model))).scalar_one()


async def test_two_pbxs_with_colliding_linkedids_both_keep_their_call_and_contact(db_url):
    """Regression: contacts were unique on (source, Linkedid) and calls on Linkedid, so the
    second server's call and contact were taken for duplicates and lost."""
    engine = db.make_engine(db_url)
    await db.upgrade(engine)
    try:
        a, b = make_store(engine, "pbx-a"), make_store(engine, "pbx-b")
        first = await a.record_contact(missed("2025550123"), decide(missed("2025550123"), RULES))
        second = await b.record_contact(missed("3125550188"), decide(missed("3125550188"), RULES))
        assert first.created and second.created and first.request_id != second.request_id
        await a.record_call(call("2025550123"), "+12025550123")
        await b.record_call(call("3125550188"), "+13125550188")
        assert (await count(engine, m.Call), await count(engine, m.Contact)) == (2, 2)
        # Each PBX still stores its own call once when AMI replays it after a reconnect.
        again = await b.record_contact(missed("3125550188"), decide(missed("3125550188"), RULES))
        assert again.duplicate and again.request_id == second.request_id
        await b.record_call(call("3125550188"), "+13125550188")
        assert (await count(engine, m.Call), await count(engine, m.Contact)) == (2, 2)
        # A web lead's id is not a PBX's: whichever daemon reads it, it is one contact.
        lead = missed("2025550123", source=Source.MQTT, ref="form-7")
        assert (await a.record_contact(lead, decide(lead, RULES))).merged
        assert (await b.record_contact(lead, decide(lead, RULES))).duplicate
        async with engine.connect() as conn:
            rows = (await conn.execute(select(m.Call.pbx, m.Call.number).order_by(m.Call.pbx))).all()
        assert [tuple(r) for r in rows] == [("pbx-a", "+12025550123"), ("pbx-b", "+13125550188")]
    finally:
        await engine.dispose()


async def test_a_standby_on_the_same_pbx_shares_its_identity(db_url):
    engine = db.make_engine(db_url)
    await db.upgrade(engine)
    try:
        main, standby = make_store(engine, "lab"), make_store(engine, "lab-standby", pbx="lab")
        for store in (main, standby):
            await store.record_call(call("2025550123"), "+12025550123")
            await store.record_contact(missed("2025550123"), decide(missed("2025550123"), RULES))
        assert (await count(engine, m.Call), await count(engine, m.Contact)) == (1, 1)
        async with engine.connect() as conn:
            assert (await conn.execute(select(m.Call.pbx))).scalar_one() == "lab"
    finally:
        await engine.dispose()


SEED_0001 = [
    "INSERT INTO requests (number, name, reason, sources, contact_count, status, created_at, "
    "updated_at, due_at, attempts_made, operator_tries, note) VALUES ('+12025550123', '', "
    "'queue_abandon', '[\"ami\", \"http\"]', 2, 'open', :at, :at, :at, 0, 0, '')",
    "INSERT INTO calls (linkedid, caller_num, caller_name, did, started_at, outcome, node) "
    "VALUES ('1764500000.42', '2025550123', '', '100', :at, 'missed', 'old-node')",
    "INSERT INTO calls (linkedid, caller_num, caller_name, did, started_at, outcome, node) "
    "VALUES ('1764500000.43', '2025550199', '', '100', :at, 'answered', 'old-node')",
    "INSERT INTO contacts (source, source_ref, raw_number, number, name, reason, comment, at, "
    "disposition, detail, request_id) VALUES ('ami', '1764500000.42', '2025550123', "
    "'+12025550123', '', 'queue_abandon', '', :at, 'schedule', '', (SELECT id FROM requests))",
    "INSERT INTO contacts (source, source_ref, raw_number, number, name, reason, comment, at, "
    "disposition, detail, request_id) VALUES ('http', 'form-1', '2025550123', '+12025550123', "
    "'', 'web_form', '', :at, 'schedule', '', (SELECT id FROM requests))",
]


async def test_upgrade_from_0001_keeps_rows_and_scopes_them(db_url):
    engine = db.make_engine(db_url)
    try:
        await db.upgrade(engine, "0001")
        at = NOW if engine.dialect.name == "postgresql" else NOW.replace(tzinfo=None)
        async with engine.begin() as conn:
            for sql in SEED_0001:
                await conn.execute(text(sql), {"at": at})
        await db.upgrade(engine)
        assert await db.current_revision(engine) == db.head_revision()  # 0002 and what follows it
        async with engine.connect() as conn:
            calls = (
                await conn.execute(select(m.Call.id, m.Call.pbx, m.Call.linkedid).order_by(m.Call.id))
            ).all()
            contacts = (
                await conn.execute(
                    select(m.Contact.id, m.Contact.pbx, m.Contact.source_ref, m.Contact.request_id).order_by(
                        m.Contact.id
                    )
                )
            ).all()
        assert [tuple(r) for r in calls] == [
            (1, "old-node", "1764500000.42"),
            (2, "old-node", "1764500000.43"),
        ]
        assert [tuple(r) for r in contacts] == [(1, "old-node", "1764500000.42", 1), (2, "", "form-1", 1)]

        # The daemon that wrote them, under its node name, still sees its own calls as seen...
        old = make_store(engine, "old-node")
        replay = missed("2025550123")
        assert (await old.record_contact(replay, decide(replay, RULES))).duplicate
        lead = missed("2025550123", source=Source.HTTP, ref="form-1")
        assert (await old.record_contact(lead, decide(lead, RULES))).duplicate
        # ...while a second PBX's colliding Linkedid is a new call.
        other = make_store(engine, "pbx-b")
        await other.record_call(call("3125550188"), "+13125550188")
        assert (await other.record_contact(missed("3125550188"), decide(missed("3125550188"), RULES))).created
        assert (await count(engine, m.Call), await count(engine, m.Contact)) == (3, 3)
        # The new keys are real constraints, not only the store's checks.
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO calls (linkedid, pbx, caller_num, caller_name, did, started_at, "
                        "outcome, node) VALUES ('1764500000.42', 'pbx-b', '', '', '', :at, 'missed', 'x')"
                    ),
                    {"at": at},
                )
    finally:
        await engine.dispose()
