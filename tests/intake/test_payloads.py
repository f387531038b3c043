"""Lead forms to contacts: the idempotency key, times and text as the store will see them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from leadkit import NOW

from callbackd.adapters.payloads import MAX_PAYLOAD, LeadForm, LeadRefused, parse_lead, to_contact
from callbackd.domain.intake import Source


def form(**kw) -> LeadForm:
    return LeadForm.model_validate_json(json.dumps({"phone": "2025550123", **kw}))


def test_contact_carries_the_form():
    c = to_contact(
        form(name="Ada", comment="line 1\nline\x07 2", preferred_time="2026-03-02T15:30:00+01:00"),
        Source.HTTP,
        NOW,
    )
    assert (c.source, c.raw_number, c.reason, c.at, c.name) == (
        Source.HTTP,
        "2025550123",
        "web_form",
        NOW,
        "Ada",
    )
    assert c.comment == "line 1\nline 2"
    assert c.preferred_at == datetime(2026, 3, 2, 14, 30, tzinfo=UTC) and c.preferred_at.tzinfo is UTC


def test_source_ref_is_the_id_scoped_by_the_form_source():
    assert to_contact(form(id="a:1"), Source.MQTT, NOW).source_ref == "a:1"
    assert to_contact(form(id="a:1", source="shop"), Source.MQTT, NOW).source_ref == "shop:a:1"


def test_without_an_id_every_form_is_a_new_contact():
    refs = {to_contact(form(source="shop"), Source.HTTP, NOW).source_ref for _ in range(3)}
    assert len(refs) == 3 and all(r.startswith("shop:") for r in refs)


def test_long_refs_are_hashed_not_cut_so_distinct_ids_stay_distinct():
    a = to_contact(form(source="s" * 32, id="x" * 127 + "a"), Source.HTTP, NOW).source_ref
    b = to_contact(form(source="s" * 32, id="x" * 127 + "b"), Source.HTTP, NOW).source_ref
    assert a != b and len(a) <= 128 and a.startswith("s" * 32 + ":")
    assert a == to_contact(form(source="s" * 32, id="x" * 127 + "a"), Source.HTTP, NOW).source_ref


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"x" * (MAX_PAYLOAD + 1), "too_large"),
        (b'{"phone": "\xc3\x28"}', "malformed"),
        (b'{"phone": "1", "preferred_time": "2026-03-02T15:30:00"}', "malformed"),
        (b'{"phone": "1", "preferred_time": "2100-01-01T00:00:00Z"}', "malformed"),
        (b'{"phone": "1", "preferred_time": 1767225600}', "malformed"),
    ],
)
def test_parse_refuses(payload, kind):
    with pytest.raises(LeadRefused) as exc:
        parse_lead(payload)
    assert exc.value.kind == kind and exc.value.reason
