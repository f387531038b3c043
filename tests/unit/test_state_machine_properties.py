"""Property: random event sequences through the request table never reach a forbidden state.

The machine plays the dialer (claim, then an attempt outcome through the retry policy,
:func:`callbackd.domain.retry.next_step`, which the store applies) and the outside world
(recovery, expiry, admin cancel and retry) in any order, and tries illegal events on the way.
"""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.errors import IllegalTransition
from callbackd.domain.ladder import RetryLadder, Schedule
from callbackd.domain.outcomes import COUNTED, Outcome
from callbackd.domain.retry import OperatorFailover, RequestSnapshot, next_step
from callbackd.domain.states import (
    CLOSED_STATUSES,
    REQUEST_TRANSITIONS,
    RequestEvent,
    RequestStatus,
    request_transition,
)

R = RequestStatus
E = RequestEvent
ABSORBING = frozenset({R.REACHED, R.RECOVERED})
ADMIN_REOPEN = frozenset({E.RETRY_NOW, E.SCHEDULE})  # an admin's call now or at a chosen time
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
MAX_AGE = timedelta(days=1)
FAILOVER = OperatorFailover(2, timedelta(seconds=30))


class RequestLifecycle(RuleBasedStateMachine):
    @initialize(max_attempts=st.integers(1, 6))
    def open_request(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts
        self.schedule = Schedule(
            calendar=BusinessCalendar.always_open("UTC"),
            ladder=RetryLadder(max_attempts=max_attempts),
            max_age=MAX_AGE,
        )
        self.status = R.OPEN
        self.attempts = 0
        self.operator_tries = 0
        self.last_at: datetime | None = None
        self.in_flight = False  # an attempt rings; it may outlive its request's DIALLING
        self.admin_retries = 0
        self.steps: list[tuple[R, E, R]] = []
        self.seen_absorbing: R | None = None

    def _send(self, event: E) -> bool:
        """Apply ``event`` if the table allows it; an illegal one must raise and change nothing."""
        before = self.status
        if (before, event) not in REQUEST_TRANSITIONS:
            with pytest.raises(IllegalTransition):
                request_transition(before, event)
            return False
        self.status = request_transition(before.value, event.value)  # strings work the same
        self.steps.append((before, event, self.status))
        return True

    # -- the dialer ----------------------------------------------------------------

    # Like the real dialer, never a second attempt while one rings for the number.
    @precondition(lambda self: not self.in_flight)
    @rule()
    def claim(self) -> None:
        if self._send(E.CLAIM):
            self.in_flight = True

    @precondition(lambda self: self.in_flight)
    @rule(outcome=st.sampled_from(Outcome), calendar_exhausted=st.booleans())
    def attempt_ends(self, outcome: Outcome, calendar_exhausted: bool) -> None:
        """The retry policy's step, applied the way Store.finish_attempt applies it."""
        self.in_flight = False
        now = T0 + timedelta(days=len(self.steps))
        # An exhausted calendar: the request is nearly max_age old, no rung fits any more.
        age_from = now - MAX_AGE + timedelta(minutes=1) if calendar_exhausted else now
        snap = RequestSnapshot("+12025550123", self.attempts, self.operator_tries, self.last_at, age_from)
        step = next_step(outcome, snap, now, now, self.schedule, FAILOVER)
        assert step.counted is (outcome in COUNTED)
        self.attempts = step.attempts_made
        if self.status is not R.DIALLING:
            return  # recovered or cancelled while it rang: that verdict stays
        self.operator_tries, self.last_at = step.operator_tries, step.last_attempt_at
        assert self._send(step.event), f"the dialer sent an illegal {step.event} from DIALLING"
        assert (step.due_at is not None) is (step.event is E.RETRY_LATER)

    # -- everything else -------------------------------------------------------------

    @rule(event=st.sampled_from([E.RECOVER, E.EXPIRE, E.CANCEL, E.RETRY_NOW, E.SCHEDULE]))
    def outside(self, event: E) -> None:
        if self._send(event) and event in ADMIN_REOPEN:
            self.admin_retries += 1

    @rule(event=st.sampled_from(E))
    def anything(self, event: E) -> None:
        """Any event at all, as a bug or a race might send: the table alone decides."""
        if self.in_flight or event in (E.CLAIM, E.RETRY_LATER, E.REACH, E.FAIL):
            # Dialer events outside the dialer would break the attempt model; only check they raise.
            if (self.status, event) not in REQUEST_TRANSITIONS:
                self._send(event)
            return
        if self._send(event) and event in ADMIN_REOPEN:
            self.admin_retries += 1

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def dialling_only_from_open(self) -> None:
        for before, _event, after in self.steps:
            if after is R.DIALLING:
                assert before is R.OPEN
            if before in CLOSED_STATUSES and after is not before:
                assert after is R.OPEN, "a closed request may only be reopened"

    @invariant()
    def reached_and_recovered_are_absorbing(self) -> None:
        if self.seen_absorbing is not None:
            assert self.status is self.seen_absorbing
        elif self.status in ABSORBING:
            self.seen_absorbing = self.status

    @invariant()
    def attempts_stay_within_the_ladder(self) -> None:
        # Only an admin's retry or schedule can grant a try beyond the ladder, one each.
        assert self.attempts <= self.max_attempts + self.admin_retries

    @invariant()
    def dialling_means_an_attempt_rings(self) -> None:
        if self.status is R.DIALLING:
            assert self.in_flight


RequestLifecycle.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_request_lifecycle = RequestLifecycle.TestCase
