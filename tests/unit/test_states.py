"""The state tables, walked exhaustively: no event loop, no I/O."""

import itertools

import pytest

from callbackd.domain.errors import IllegalTransition
from callbackd.domain.states import (
    ATTEMPT_TRANSITIONS,
    CLOSED_STATUSES,
    OPEN_STATUSES,
    REQUEST_TRANSITIONS,
    AttemptEvent,
    AttemptStatus,
    RequestEvent,
    RequestStatus,
    attempt_transition,
    request_transition,
)


def test_every_pair_is_either_in_the_table_or_refused():
    for status, event in itertools.product(RequestStatus, RequestEvent):
        if (status, event) in REQUEST_TRANSITIONS:
            assert request_transition(status, event) is REQUEST_TRANSITIONS[(status, event)]
        else:
            with pytest.raises(IllegalTransition):
                request_transition(status, event)


def test_only_claim_enters_dialling_and_dialling_always_leaves():
    into = {k for k, v in REQUEST_TRANSITIONS.items() if v is RequestStatus.DIALLING}
    assert into == {(RequestStatus.OPEN, RequestEvent.CLAIM)}
    out_of = {e for (s, e) in REQUEST_TRANSITIONS if s is RequestStatus.DIALLING}
    assert {RequestEvent.RETRY_LATER, RequestEvent.REACH, RequestEvent.FAIL} <= out_of


def test_closed_requests_cannot_be_dialled_or_reached():
    for status in CLOSED_STATUSES:
        for event in (RequestEvent.CLAIM, RequestEvent.REACH, RequestEvent.RETRY_LATER):
            with pytest.raises(IllegalTransition):
                request_transition(status, event)


def test_reached_and_recovered_are_final():
    for status in (RequestStatus.REACHED, RequestStatus.RECOVERED):
        assert not [e for (s, e) in REQUEST_TRANSITIONS if s is status]


def test_open_and_closed_partition_the_statuses():
    assert set(RequestStatus) == OPEN_STATUSES | CLOSED_STATUSES
    assert not OPEN_STATUSES & CLOSED_STATUSES


def test_attempt_table_reaches_done_from_every_state_and_never_leaves_it():
    for status in AttemptStatus:
        if status is AttemptStatus.DONE:
            for event in AttemptEvent:
                with pytest.raises(IllegalTransition):
                    attempt_transition(status, event)
        else:
            assert attempt_transition(status, AttemptEvent.FINISHED) is AttemptStatus.DONE
    assert (
        ATTEMPT_TRANSITIONS[(AttemptStatus.CLIENT_RINGING, AttemptEvent.CLIENT_ANSWERED)]
        is AttemptStatus.BRIDGED
    )


def test_strings_are_accepted_and_unknown_ones_refused():
    assert request_transition("open", "claim") is RequestStatus.DIALLING
    with pytest.raises(ValueError):
        request_transition("open", "teleport")
