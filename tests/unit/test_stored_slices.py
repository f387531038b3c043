"""A day slice written to the database and read back merges exactly as the one built."""

from __future__ import annotations

import json
from array import array
from datetime import UTC, datetime, timedelta

import pytest

from callbackd.domain.metrics import Accumulator, Grouping
from callbackd.domain.partials import SLICE_FORMAT, Slice, decode_slice, encode_slice

START = datetime(2026, 3, 2, 21, 0, tzinfo=UTC)
END = START + timedelta(days=1)


def filled(seed: int) -> Accumulator:
    acc = Accumulator()
    for i, name in enumerate(Accumulator.__slots__):
        if name in ("first_attempt", "reach"):
            setattr(acc, name, array("i", [seed + i, -3, 2**31 - 1, 0]))
        elif name.endswith("_sum"):
            setattr(acc, name, 0.1 * seed + 0.2 + i / 3)  # floats with all their digits
        else:
            setattr(acc, name, seed * 100 + i)
    return acc


def a_slice() -> Slice:
    groups = {
        Grouping.HOUR: {"2026-03-03 00": filled(1), "2026-03-03 01": Accumulator()},
        Grouping.QUEUE: {"support": filled(2), "(none)": filled(3)},
        Grouping.OPERATOR: {"PJSIP/op1": filled(4)},
    }
    return Slice(START, END, groups, {1: 5, 3: 2})


def test_every_slot_reads_back_the_same_value_and_type():
    part = a_slice()
    back = decode_slice(encode_slice(part), START, END)
    assert (back.start, back.end, dict(back.reach_by_try)) == (START, END, {1: 5, 3: 2})
    assert back.groups.keys() == part.groups.keys()
    for g, accs in part.groups.items():
        assert back.groups[g].keys() == accs.keys()
        for key, acc in accs.items():
            got = back.groups[g][key]
            for name in Accumulator.__slots__:
                want = getattr(acc, name)
                assert getattr(got, name) == want and type(getattr(got, name)) is type(want), (g, key, name)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        json.dumps({"v": SLICE_FORMAT + 1, "groups": {}, "reach": []}).encode(),
        json.dumps({"v": SLICE_FORMAT, "groups": {"hour": {"x": [1, 2]}}, "reach": []}).encode(),
        json.dumps({"v": SLICE_FORMAT, "groups": {"week": {}}, "reach": []}).encode(),
        json.dumps({"v": SLICE_FORMAT, "groups": {}}).encode(),
        encode_slice(a_slice()).replace(b'"support":[2', b'"support":["2'),
        encode_slice(a_slice())[:-40],
    ],
    ids=[
        "empty",
        "not-utf8",
        "not-an-object",
        "newer-format",
        "short-cell",
        "bad-grouping",
        "no-reach",
        "string-count",
        "cut-short",
    ],
)
def test_anything_else_is_a_value_error(data):
    with pytest.raises(ValueError):
        decode_slice(data, START, END)
