"""Shared by the lead-form intake tests: the rules they run under and a way to count what was stored."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

from sqlalchemy import func, select

from callbackd.adapters import models as m
from callbackd.adapters.store import Store
from callbackd.domain.intake import IntakeRules
from callbackd.domain.phone import NumberRules

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
TOKEN = "test-token-0123456789abcdef"
BLACKLISTED = "+12025550100"
RULES = IntakeRules(
    region="US",
    numbers=NumberRules(blacklist=frozenset({BLACKLISTED}), blocked_prefixes=("+1900",)),
)
# Each would add a channel, an argument or a dialplan expression if it reached a dial string.
INJECTIONS = ["+1202555&PJSIP/x", "${EXEC(rm -rf /)}", "123,456", "2025550123;x"]


async def counts(store: Store) -> tuple[int, int]:
    """(contacts, requests) stored."""
    async with store.session() as s:
        contacts = (await s.execute(select(func.count()).select_from(m.Contact))).scalar_one()
        requests = (await s.execute(select(func.count()).select_from(m.Request))).scalar_one()
    return contacts, requests


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]
