"""The intake writer's batch (Store.batch): one transaction, a few statements per batch, and the
same rows, results and webhook events as the same items stored one by one. Real SQLite and
PostgreSQL, each path on its own fresh database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dbfaults import pg_database
from sqlalchemy import select

from callbackd.adapters import db
from callbackd.adapters import models as m
from callbackd.adapters.store import Store
from callbackd.adapters.webhooks import Endpoint, Outbox
from callbackd.app import CLAIM_LEASE
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.intake import Contact, IntakeRules, Source, decide
from callbackd.domain.ladder import Schedule
from callbackd.domain.phone import NumberRules

RULES = IntakeRules(region="US", numbers=NumberRules(blacklist=frozenset({"+12025550166"})))
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def two_urls(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/one.db", f"sqlite+aiosqlite:///{tmp_path}/batch.db"
    else:
        async with pg_database() as one, pg_database() as batch:
            yield one, batch


def contact(ref: str, number: str, minute: int, source: Source = Source.AMI, **kw) -> Contact:
    return Contact(
        source=source,
        source_ref=ref,
        raw_number=number,
        reason="queue_abandon" if source is Source.AMI else "web_form",
        at=T0 + timedelta(minutes=minute),
        waited=30,
        caller_gave_up=True,
        **kw,
    )


# Stored before the batch: 0100 has an open request when the batch starts.
BEFORE = [contact("L0", "2025550100", 0)]
# Merges into a request the batch did not open, into one it opened, a duplicate of a contact
# stored before and of one stored earlier in the batch, a recovery that closes a request the
# batch opened and a contact that opens the number's next one, a blocked and a withheld number.
ITEMS: list[tuple[str, object]] = [
    ("contact", contact("L1", "2025550100", 1)),
    ("contact", contact("L2", "2025550101", 2, did="5550000", queue="sales")),
    ("contact", contact("form-1", "2025550101", 3, source=Source.HTTP, comment="call me")),
    ("contact", contact("L0", "2025550100", 4)),
    ("contact", contact("L2", "2025550101", 5)),
    ("recover", ("+12025550101", T0 + timedelta(minutes=6), "client_called_in")),
    ("contact", contact("L3", "2025550101", 7)),
    ("contact", contact("L4", "2025550166", 8)),
    ("contact", contact("L5", "", 9)),
    ("recover", ("+12025550199", T0 + timedelta(minutes=10), "operator_called")),
]


async def open_store(url: str, hooks: bool = True) -> Store:
    engine = db.make_engine(url)
    await db.upgrade(engine)
    store = Store(
        engine,
        node="n1",
        schedule=Schedule(calendar=BusinessCalendar.always_open("UTC")),
        claim_lease=CLAIM_LEASE,
    )
    # With endpoints each contact's change is flushed on its own (its own events); without, once.
    store.outbox = Outbox([Endpoint("crm", "http://crm.invalid/hook")] if hooks else [])
    for c in BEFORE:
        await store.record_contact(c, decide(c, RULES))
    return store


async def one_by_one(store: Store) -> list[object]:
    out: list[object] = []
    for kind, item in ITEMS:
        if kind == "contact":
            assert isinstance(item, Contact)
            out.append(await store.record_contact(item, decide(item, RULES)))
        else:
            out.append(await store.recover(*item))  # type: ignore[misc]
    return out


async def batched(store: Store) -> list[object]:
    contacts = [item for kind, item in ITEMS if kind == "contact"]
    numbers = {str(decide(c, RULES).number) for c in contacts if decide(c, RULES).number}  # type: ignore[arg-type]
    numbers |= {item[0] for kind, item in ITEMS if kind == "recover"}  # type: ignore[index]
    pending: list[object] = []
    async with store.unit() as s:
        batch = store.batch(s)
        await batch.prefetch(numbers, contacts)  # type: ignore[arg-type]
        for kind, item in ITEMS:
            if kind == "contact":
                assert isinstance(item, Contact)
                pending.append(await batch.record_contact(item, decide(item, RULES)))
            else:
                closed = await batch.recover(*item)  # type: ignore[misc]
                pending.append(lambda closed=closed: closed)
        await batch.finish()
    return [p() for p in pending]  # type: ignore[operator]


async def state(store: Store) -> dict[str, list[tuple]]:
    async with store.session() as s:
        reqs = (await s.execute(select(m.Request).order_by(m.Request.id))).scalars().all()
        contacts = (await s.execute(select(m.Contact).order_by(m.Contact.id))).scalars().all()
        events = (await s.execute(select(m.OutboxEvent).order_by(m.OutboxEvent.id))).scalars().all()
        skip = {"occurred_at"}
        return {
            "requests": [{c.key: getattr(r, c.key) for c in m.Request.__table__.columns} for r in reqs],
            "contacts": [
                {col.key: getattr(c, col.key) for col in m.Contact.__table__.columns} for c in contacts
            ],
            "events": [
                (e.event, e.request_id, {k: v for k, v in e.payload.items() if k not in skip}) for e in events
            ],
        }


@pytest.mark.parametrize("hooks", [True, False], ids=["webhooks", "no-webhooks"])
async def test_a_batch_stores_what_its_items_one_by_one_store(two_urls, hooks):
    one_url, batch_url = two_urls
    one, batch = await open_store(one_url, hooks), await open_store(batch_url, hooks)
    try:
        expected = await one_by_one(one)
        got = await batched(batch)
        assert got == expected
        want, have = await state(one), await state(batch)
    finally:
        await one.engine.dispose()
        await batch.engine.dispose()
    assert have == want
    # What the items did, so the comparison is not between two empty results.
    assert len(want["contacts"]) == 7  # BEFORE's one and ITEMS' eight, of which two are duplicates
    by_number = [(r["number"], r["status"], r["contact_count"]) for r in want["requests"]]
    assert by_number == [
        ("+12025550100", "open", 2),  # merged into the request from before the batch
        ("+12025550101", "recovered", 2),  # opened and merged in the batch, then recovered
        ("+12025550101", "open", 1),  # the number's next request
    ]
    assert (
        expected[3].duplicate and expected[4].duplicate and expected[4].request_id == expected[1].request_id
    )
    assert expected[5] == [expected[1].request_id] and expected[9] == []
    if hooks:
        assert [e[0] for e in want["events"]] == [
            "request.created",  # BEFORE
            "request.merged",
            "request.created",
            "request.merged",
            "request.closed",  # the recovery
            "request.created",
        ]


async def test_a_batch_that_fails_keeps_nothing(two_urls):
    """The batch is one transaction: an error in it rolls every item back (the intake then takes
    them one by one, see tests/intake/test_group_commit.py)."""
    url, _ = two_urls
    store = await open_store(url)
    try:
        before = await state(store)
        with pytest.raises(RuntimeError):
            async with store.unit() as s:
                batch = store.batch(s)
                await batch.record_contact(ITEMS[0][1], decide(ITEMS[0][1], RULES))  # type: ignore[arg-type]
                await batch.record_contact(ITEMS[1][1], decide(ITEMS[1][1], RULES))  # type: ignore[arg-type]
                await batch.finish()
                raise RuntimeError("a later item failed")
        assert await state(store) == before
    finally:
        await store.engine.dispose()


async def test_a_batch_answers_whether_a_number_has_an_open_request_as_of_its_earlier_items(two_urls):
    """What the abuse limits ask (a contact over them is refused only if it would open a request)."""
    url, _ = two_urls
    store = await open_store(url, hooks=False)
    new = contact("L9", "2025550109", 1)
    try:
        async with store.unit() as s:
            batch = store.batch(s)
            await batch.prefetch(["+12025550100", "+12025550109"], [new])
            seen = [
                await batch.has_open_request("+12025550100"),
                await batch.has_open_request("+12025550109"),
            ]
            await batch.record_contact(new, decide(new, RULES))
            seen.append(await batch.has_open_request("+12025550109"))
            await batch.recover("+12025550109", T0 + timedelta(minutes=2), "client_called_in")
            seen.append(await batch.has_open_request("+12025550109"))
            seen.append(await batch.has_open_request("+12025550177"))  # not prefetched: read then
            await batch.finish()
        assert seen == [True, False, True, False, False]
        assert await store.has_open_request("+12025550109") is False
        assert await store.has_open_request("+12025550100") is True
    finally:
        await store.engine.dispose()
