"""Three groupings of a report filled in one pass, and reports merged from day slices.

The console shows a period by hour or day, by queue and by operator at once. Each
grouping used to be its own pass over the rows; here each row is folded once, into the
accumulator of its (time, queue, operator) cell, and the cells are merged into the three
groupings; a day's groups can be kept and merged into longer periods later. Merging
adds the accumulators' counts and sums and concatenates their duration arrays, so counts,
ratios of counts, medians and p90 are exactly those of one grouping's pass. A mean of
waits or talk times (ASA, ATA, AHT) is a float sum added up in another order, which can
differ in the last bit (about 1e-16 of it), far below the tenth of a second shown.
"""

from __future__ import annotations

import base64
import json
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from callbackd.domain.metrics import (
    NONE_KEY,
    Accumulator,
    AttemptRow,
    CallRow,
    Grouping,
    Report,
    ReportBuilder,
    RequestRow,
    Thresholds,
    _day,
    _hour,
)

Groups = Mapping[str, Accumulator]


def merge_into(into: Accumulator, acc: Accumulator) -> None:
    """:meth:`Accumulator.merge` written out, for the thousands of cells of a day (5x faster).

    *into* must be this module's own (its arrays are extended in place); a test checks that
    it gives what :meth:`Accumulator.merge` gives on every slot.
    """
    into.abandon_wait_n += acc.abandon_wait_n
    into.abandon_wait_sum += acc.abandon_wait_sum
    into.abandoned += acc.abandoned
    into.answer_wait_n += acc.answer_wait_n
    into.answer_wait_sum += acc.answer_wait_sum
    into.attempted += acc.attempted
    into.cancelled += acc.cancelled
    into.expired += acc.expired
    into.failed += acc.failed
    into.first_attempt += acc.first_attempt
    into.handled += acc.handled
    into.lost_in_queue += acc.lost_in_queue
    into.net_lost += acc.net_lost
    into.offered += acc.offered
    into.open += acc.open
    into.queued += acc.queued
    into.reach += acc.reach
    into.reached += acc.reached
    into.reached_attempts += acc.reached_attempts
    into.recovered += acc.recovered
    into.requests += acc.requests
    into.short += acc.short
    into.talk_n += acc.talk_n
    into.talk_sum += acc.talk_sum
    into.within_sl += acc.within_sl


class CellBuilder:
    """A period's calls and requests folded by (hour or day, queue, operator) at once.

    Each row goes into one accumulator, that of its cell; :meth:`groups` then merges the
    cells into the time, queue and operator groups. Three groupings cost about one pass's
    folding instead of three: a day has a few thousand cells, against tens of thousands of
    rows. Keys follow :func:`~callbackd.domain.metrics.call_key` and ``request_key``.
    """

    def __init__(self, by: Grouping, tz: tzinfo, thresholds: Thresholds) -> None:
        if by not in (Grouping.DAY, Grouping.HOUR):
            raise ValueError(f"cells are by day or hour, not {by}")
        self.by, self.tz = by, tz
        self._short = thresholds.short_abandon.total_seconds()
        self._service_level = thresholds.service_level.total_seconds()
        self._key = _day if by is Grouping.DAY else _hour
        self._memo: dict[float, str] = {}
        self.cells: dict[tuple[str, str | None, str | None], Accumulator] = {}

    def _time_key(self, at: datetime) -> str:
        """As :meth:`ReportBuilder._time_key`: a local day or hour per UTC quarter hour."""
        bucket = at.timestamp() // 900
        key = self._memo.get(bucket)
        if key is None:
            key = self._memo[bucket] = self._key(at, self.tz)
        return key

    def add_calls(self, calls: Iterable[CallRow]) -> None:
        cells, time_key = self.cells, self._time_key
        short, service_level = self._short, self._service_level
        for c in calls:
            key = (time_key(c.started_at), c.queue, c.agent)
            acc = cells.get(key)
            if acc is None:
                acc = cells[key] = Accumulator()
            acc.add_call(c, short, service_level)

    def add_request(self, r: RequestRow, attempts: Sequence[AttemptRow]) -> None:
        operator = max(attempts, key=lambda a: a.started_at).operator if attempts else None
        key = (self._time_key(r.created_at), r.queue, operator)
        acc = self.cells.get(key)
        if acc is None:
            acc = self.cells[key] = Accumulator()
        acc.add_request(r, attempts)

    def groups(self) -> dict[Grouping, Groups]:
        by_time: dict[str, Accumulator] = {}
        by_queue: dict[str, Accumulator] = {}
        by_operator: dict[str, Accumulator] = {}
        for (when, queue, operator), acc in self.cells.items():
            for groups, key in ((by_time, when), (by_queue, queue), (by_operator, operator)):
                key = key or NONE_KEY
                into = groups.get(key)
                if into is None:
                    into = groups[key] = Accumulator()
                merge_into(into, acc)
        for groups in (by_time, by_queue, by_operator):
            _sort_durations(groups)
        return {self.by: by_time, Grouping.QUEUE: by_queue, Grouping.OPERATOR: by_operator}


@dataclass(frozen=True)
class Slice:
    """The groups of one stretch of time (a day) for each grouping, plus answered callbacks by try.

    Kept as they are once built: merging copies, never changes them.
    """

    start: datetime
    end: datetime
    groups: Mapping[Grouping, Groups]
    reach_by_try: Mapping[int, int]


def merge_report(
    slices: Iterable[Slice],
    start: datetime,
    end: datetime,
    by: Grouping | None,
    tz: tzinfo,
    thresholds: Thresholds,
) -> Report:
    """The report of the period from its slices' groups for *by* (slices must not overlap).

    ``by=None`` (one total row): every slice's queue groups merged into one.
    """
    builder = ReportBuilder(start, end, by, tz, thresholds)
    for part in slices:
        if by is None:
            into = builder._group(NONE_KEY)
            for acc in part.groups[Grouping.QUEUE].values():
                merge_into(into, acc)
            continue
        for key, acc in part.groups[by].items():
            merge_into(builder._group(key), acc)
    _sort_durations(builder.groups)
    return builder.build()


def _sort_durations(groups: Mapping[str, Accumulator]) -> None:
    """Sort the duration arrays (their order means nothing) so medians and p90 sort sorted data.

    :meth:`Accumulator.figures` sorts each array three times (median, p90, and the median's
    own sort); on a month's merged groups that was most of a cached page's time. Sorted
    day arrays concatenated are sorted runs, which one sort merges quickly.
    """
    for acc in groups.values():
        acc.first_attempt = array("i", sorted(acc.first_attempt))
        acc.reach = array("i", sorted(acc.reach))


def merge_reach(slices: Iterable[Slice]) -> dict[int, int]:
    out: dict[int, int] = {}
    for part in slices:
        for k, n in part.reach_by_try.items():
            out[k] = out.get(k, 0) + n
    return out


# -- stored slices --------------------------------------------------------------------------
# A slice kept in the database (so a restart does not read a finished day's rows again) is JSON:
# {"v": SLICE_FORMAT, "groups": {grouping: {key: [scalar slots..., first_attempt, reach]}},
#  "reach": [[try, n], ...]}. Scalars are JSON numbers (a float's repr reads back to the same
# float, an int stays an int), so a slice read back merges exactly as the one built; the
# duration arrays are base64 of little-endian 32-bit ints. A change of the accumulator's slots
# changes SLICE_FORMAT, and a slice of another format is recomputed.

SLICE_FORMAT = 1
_ARRAYS = ("first_attempt", "reach")
_SCALARS = tuple(n for n in Accumulator.__slots__ if n not in _ARRAYS)
_SWAP = sys.byteorder != "little"


def _pack(a: array) -> str:
    if _SWAP:
        a = array("i", a)
        a.byteswap()
    return base64.b64encode(a.tobytes()).decode("ascii")


def _unpack(text: str) -> array:
    a = array("i")
    a.frombytes(base64.b64decode(text, validate=True))
    if _SWAP:
        a.byteswap()
    return a


def encode_slice(part: Slice) -> bytes:
    groups = {
        str(g): {key: [*(getattr(acc, n) for n in _SCALARS), *(_pack(getattr(acc, n)) for n in _ARRAYS)]
                 for key, acc in accs.items()}
        for g, accs in part.groups.items()
    }  # fmt: skip
    body = {"v": SLICE_FORMAT, "groups": groups, "reach": sorted(part.reach_by_try.items())}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_slice(data: bytes, start: datetime, end: datetime) -> Slice:
    """The slice :func:`encode_slice` wrote; ValueError for anything else (another format, damage)."""
    try:
        body = json.loads(data)
        if body.get("v") != SLICE_FORMAT:
            raise ValueError(f"stored slice format {body.get('v')!r}, this version reads {SLICE_FORMAT}")
        width = len(_SCALARS) + len(_ARRAYS)
        groups: dict[Grouping, dict[str, Accumulator]] = {}
        for g, accs in body["groups"].items():
            out = groups[Grouping(g)] = {}
            for key, values in accs.items():
                if not isinstance(key, str) or len(values) != width:
                    raise ValueError("a stored cell of the wrong shape")
                acc = out[key] = Accumulator()
                for n, v in zip(_SCALARS, values, strict=False):
                    if type(v) not in (int, float):
                        raise ValueError(f"stored {n} is not a number")
                    setattr(acc, n, v)
                for n, v in zip(_ARRAYS, values[len(_SCALARS) :], strict=True):
                    setattr(acc, n, _unpack(v))
        reach = {int(k): int(n) for k, n in body["reach"]}
    except ValueError:
        raise
    except Exception as e:  # wrong types or keys anywhere in a damaged payload
        raise ValueError(f"unreadable stored slice: {e.__class__.__name__}: {e}") from e
    return Slice(start, end, groups, reach)
