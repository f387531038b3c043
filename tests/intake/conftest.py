"""Lead-form intake fixtures: a real SQLite store, and the submit the daemon would use."""

from __future__ import annotations

import pytest
from leadkit import RULES

from callbackd.adapters import db
from callbackd.adapters.store import ContactResult, Store
from callbackd.app import CLAIM_LEASE
from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.intake import Contact, decide
from callbackd.domain.ladder import Schedule


@pytest.fixture
async def lead_store(sqlite_url):
    engine = db.make_engine(sqlite_url)
    await db.upgrade(engine)
    schedule = Schedule(calendar=BusinessCalendar.always_open("UTC"))
    yield Store(engine, node="test-node", schedule=schedule, claim_lease=CLAIM_LEASE)
    await engine.dispose()


@pytest.fixture
def submit(lead_store):
    """What Daemon.submit does, minus logging and waking the dialer."""

    async def submit(contact: Contact) -> ContactResult:
        return await lead_store.record_contact(contact, decide(contact, RULES))

    return submit
