"""The retry policy: what one attempt's outcome does to its request.

One function, :func:`next_step`, takes the outcome and a snapshot of the request
and says what comes next (counted or not, another operator at once, the next rung
of the ladder fitted into business and client hours, expire or fail). The store
only applies the answer; tests call it rather than restating it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from callbackd.domain.errors import NoCommonHours
from callbackd.domain.ladder import Plan, Schedule
from callbackd.domain.outcomes import Outcome, verdict
from callbackd.domain.states import RequestEvent

_CLOSE_REASONS = {RequestEvent.REACH: "reached", RequestEvent.EXPIRE: "max_age"}


@dataclass(frozen=True)
class RequestSnapshot:
    """What the policy needs of a request."""

    number: str
    attempts_made: int
    operator_tries: int
    last_attempt_at: datetime | None
    # The start of its age: creation, or an admin's retry of an expired request.
    age_from: datetime
    client_zones: tuple[str, ...] = ()
    queue: str | None = None


@dataclass(frozen=True)
class NextStep:
    event: RequestEvent
    counted: bool
    attempts_made: int
    operator_tries: int
    last_attempt_at: datetime | None
    due_at: datetime | None  # set for RETRY_LATER only
    close_reason: str | None  # set when the event closes the request
    plan: Plan  # why it waits (or why never), for the request's wait_reason and the log


@dataclass(frozen=True)
class OperatorFailover:
    """How often another operator is tried for one client try, and the pause after the last."""

    tries: int
    retry_delay: timedelta


def next_step(
    outcome: Outcome,
    req: RequestSnapshot,
    attempt_started_at: datetime,
    now: datetime,
    schedule: Schedule,
    failover: OperatorFailover,
) -> NextStep:
    """The request's next step after an attempt that started at ``attempt_started_at`` ended."""
    max_attempts = schedule.ladder_for(req.queue).max_attempts
    counted = verdict(outcome, req.attempts_made + 1, max_attempts).counted
    tries = req.attempts_made + (1 if counted else 0)
    v = verdict(outcome, tries, max_attempts)
    last_at = attempt_started_at if counted else req.last_attempt_at
    op_tries = 0 if counted else req.operator_tries + 1
    event = v.event
    due: datetime | None = None
    plan = Plan(None)
    if event is RequestEvent.RETRY_LATER:
        if counted:
            plan = schedule.plan(
                tries,
                last_at,
                req.age_from,
                spread_key=req.number,
                client_zones=req.client_zones,
                outcome=outcome.value,
                queue=req.queue,
            )
            due = plan.due
        elif op_tries < failover.tries:
            due = now  # another free operator, at once
            plan = Plan(now)
        else:
            op_tries = 0
            plan = schedule.next_callable(now + failover.retry_delay, req.client_zones, req.queue)
            due = plan.due
            if due is not None and schedule.is_expired(req.age_from, due):
                due, plan = None, Plan(None, close_reason="max_age")
        if due is None:
            gives_up = tries >= max_attempts or plan.close_reason == NoCommonHours.reason
            event = RequestEvent.FAIL if gives_up else RequestEvent.EXPIRE
    reason = None
    if event is RequestEvent.FAIL:
        reason = v.close_reason or plan.close_reason or "max_attempts"
    elif event in _CLOSE_REASONS:
        reason = _CLOSE_REASONS[event]
    return NextStep(
        event,
        counted,
        tries,
        op_tries,
        last_at,
        due if event is RequestEvent.RETRY_LATER else None,
        reason,
        plan,
    )
