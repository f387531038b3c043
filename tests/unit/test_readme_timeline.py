"""The README's example timeline, computed by the real ladder and calendar."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from callbackd.domain.calendar import BusinessCalendar
from callbackd.domain.ladder import Schedule

NY = ZoneInfo("America/New_York")


def at(day, hh, mm):
    return datetime(2026, 3, day, hh, mm, tzinfo=NY)


def test_readme_example_timeline():
    cal = BusinessCalendar.from_spec("America/New_York", {"mon-fri": ["09:00-13:00", "14:00-18:00"]})
    s = Schedule(calendar=cal, max_age=timedelta(days=7))  # the config default
    created = at(6, 12, 20)  # a Friday
    key = "+12025550143"
    assert s.due_at(0, None, created, spread_key=key) == created  # try 1 at once
    due2 = s.due_at(1, created, created, spread_key=key)  # 13:20 is lunch
    assert at(6, 14, 0) <= due2 < at(6, 14, 5)
    try2 = at(6, 14, 2)
    assert s.due_at(2, try2, created, spread_key=key) == at(6, 17, 2)  # + 3 h
    due4 = s.due_at(3, at(6, 17, 2), created, spread_key=key)  # Friday 23:02 is closed: Monday
    assert at(9, 9, 0) <= due4 < at(9, 9, 5)
    assert s.due_at(4, at(9, 9, 3), created, spread_key=key) == at(9, 15, 3)  # + 6 h, the last delay again
    assert s.due_at(5, at(9, 15, 3), created, spread_key=key) is None  # five tries used
    # Elapsed time, not wall time: this week spans the spring-forward change of 8 March.
    assert s.is_expired(created, created.astimezone(UTC) + timedelta(days=7, seconds=1))
    assert not s.is_expired(created, created + timedelta(days=7))


def test_readme_example_with_a_client_in_honolulu():
    from callbackd.domain.calendar import ClientWindow
    from callbackd.domain.ladder import Wait
    from callbackd.domain.phone import E164

    cal = BusinessCalendar.from_spec("America/New_York", {"mon-fri": ["09:00-13:00", "14:00-18:00"]})
    s = Schedule(calendar=cal, max_age=timedelta(days=7), client_window=ClientWindow.from_spec())
    number = E164("+18085550143")
    zones = s.zones_for(number)
    assert zones == ("Pacific/Honolulu",)
    created = at(6, 10, 20)  # a Friday, 05:20 in Honolulu

    def plan(made, last, outcome=None):
        return s.plan(made, last, created, spread_key=number, client_zones=zones, outcome=outcome)

    p1 = plan(0, None)
    assert at(6, 14, 0) <= p1.due < at(6, 14, 5) and p1.wait is Wait.CLIENT_HOURS
    p2 = plan(1, at(6, 14, 2), "client_busy")
    assert (p2.due, p2.wait) == (at(6, 14, 12), Wait.OUTCOME_DELAY)
    p3 = plan(2, at(6, 14, 12), "client_no_answer")
    assert (p3.due, p3.wait) == (at(6, 17, 12), Wait.LADDER)
    p4 = plan(3, at(6, 17, 12), "client_no_answer")
    assert at(9, 15, 0) <= p4.due < at(9, 15, 5) and p4.wait is Wait.CLIENT_HOURS
    assert p4.due.astimezone(ZoneInfo("Pacific/Honolulu")).hour == 9
    p5 = plan(4, at(9, 15, 3), "client_no_answer")
    assert at(10, 15, 0) <= p5.due < at(10, 15, 5) and p5.wait is Wait.CLIENT_HOURS
    assert plan(5, at(10, 15, 3), "client_no_answer").close_reason == "max_attempts"
