"""Client-local hours: the client's window in each of its possible zones, intersected with business hours."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from callbackd.domain.calendar import BusinessCalendar, CallingHours, ClientWindow
from callbackd.domain.errors import InvalidSchedule, NoCommonHours
from callbackd.domain.ladder import Schedule, Wait
from callbackd.domain.phone import E164, client_zones

MOSCOW = ZoneInfo("Europe/Moscow")  # UTC+3 all year
# A UTC+3 business open every day 09:00-21:00 (06:00-18:00 UTC).
MOSCOW_DESK = BusinessCalendar.from_spec("Europe/Moscow", {"mon-sun": "09:00-21:00"})
WINDOW = ClientWindow.from_spec()  # 09:00-21:00 every day, the default
ALWAYS = BusinessCalendar.always_open()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def hours(business: BusinessCalendar, *zones: str) -> CallingHours:
    return CallingHours.for_client(business, WINDOW, zones)


def common(h: CallingHours, day: datetime) -> list[tuple[datetime, datetime]]:
    return h.intervals_between(day, day + timedelta(days=1))


# --- clients far east and far west of a UTC+3 business


def test_utc_plus_12_client_is_called_in_the_moscow_morning() -> None:
    # Kamchatka (UTC+12): 09:00-21:00 local is 21:00-09:00 UTC; the desk is 06:00-18:00 UTC.
    h = hours(MOSCOW_DESK, "Asia/Kamchatka")
    assert common(h, utc(2024, 6, 4)) == [(utc(2024, 6, 4, 6), utc(2024, 6, 4, 9))]
    # 20:00 Moscow on Monday is 05:00 Tuesday for the client: wait for 09:00 Moscow (18:00 local).
    opened = h.next_open(datetime(2024, 6, 3, 20, 0, tzinfo=MOSCOW))
    assert opened == utc(2024, 6, 4, 6)
    assert opened.astimezone(ZoneInfo("Asia/Kamchatka")).hour == 18


def test_utc_minus_10_client_gets_one_hour_a_day() -> None:
    # Honolulu (UTC-10): 09:00-21:00 local is 19:00-07:00 UTC; common with the desk: 06:00-07:00 UTC,
    # which is 09:00-10:00 in Moscow and 20:00-21:00 the previous evening in Honolulu.
    h = hours(MOSCOW_DESK, "Pacific/Honolulu")
    assert common(h, utc(2024, 6, 4)) == [(utc(2024, 6, 4, 6), utc(2024, 6, 4, 7))]
    assert h.next_open(utc(2024, 6, 4, 7, 0)) == utc(2024, 6, 5, 6)
    assert h.is_open(utc(2024, 6, 4, 6, 59)) and not h.is_open(utc(2024, 6, 4, 7, 0))


def test_client_window_follows_the_clients_weekday() -> None:
    # Weekdays only for the client: Monday 06:00 UTC is Sunday 20:00 in Honolulu, so not callable.
    weekdays = ClientWindow.from_spec({"mon-fri": "09:00-21:00"})
    h = CallingHours.for_client(MOSCOW_DESK, weekdays, ["Pacific/Honolulu"])
    assert not h.is_open(utc(2024, 6, 3, 6, 30))  # Sunday evening in Honolulu
    assert h.next_open(utc(2024, 6, 3, 0, 0)) == utc(2024, 6, 4, 6)  # Monday 20:00 in Honolulu


# --- DST on either side


def test_client_side_dst_moves_the_common_window() -> None:
    # New York: EST (UTC-5) until Sunday 2024-03-10, EDT (UTC-4) after; 09:00 local is 14:00 then 13:00 UTC.
    h = hours(MOSCOW_DESK, "America/New_York")
    assert common(h, utc(2024, 3, 9)) == [(utc(2024, 3, 9, 14), utc(2024, 3, 9, 18))]
    assert common(h, utc(2024, 3, 11)) == [(utc(2024, 3, 11, 13), utc(2024, 3, 11, 18))]
    assert h.next_open(utc(2024, 3, 9, 12)) == utc(2024, 3, 9, 14)
    assert h.next_open(utc(2024, 3, 10, 12)) == utc(2024, 3, 10, 13)


def test_business_side_dst_moves_the_common_window() -> None:
    # A Berlin office (CET UTC+1 -> CEST UTC+2 on Sunday 2024-03-31) calling Tokyo (UTC+9, 00:00-12:00 UTC).
    office = BusinessCalendar.from_spec("Europe/Berlin", {"mon-fri": "09:00-18:00"})
    h = hours(office, "Asia/Tokyo")
    assert common(h, utc(2024, 3, 29)) == [(utc(2024, 3, 29, 8), utc(2024, 3, 29, 12))]
    assert common(h, utc(2024, 4, 1)) == [(utc(2024, 4, 1, 7), utc(2024, 4, 1, 12))]
    # Friday after Tokyo's evening: next is Monday 09:00 Berlin, an hour earlier in UTC than before.
    assert h.next_open(utc(2024, 3, 29, 13)) == utc(2024, 4, 1, 7)


def test_southern_hemisphere_dst_against_northern_business() -> None:
    # Auckland is UTC+12 in June and UTC+13 in December: its 09:00 is 21:00 then 20:00 UTC the day before.
    h = hours(MOSCOW_DESK, "Pacific/Auckland")
    assert common(h, utc(2024, 6, 4)) == [(utc(2024, 6, 4, 6), utc(2024, 6, 4, 9))]
    assert common(h, utc(2024, 12, 4)) == [(utc(2024, 12, 4, 6), utc(2024, 12, 4, 8))]


# --- zones from the number


def test_fixed_line_zone_comes_from_the_area_code() -> None:
    assert client_zones(E164("+74232123456")) == ("Asia/Vladivostok",)
    assert client_zones(E164("+74951234567")) == ("Europe/Moscow",)
    assert client_zones(E164("+18085550123")) == ("Pacific/Honolulu",)


def test_russian_mobile_uses_the_hours_common_to_every_zone() -> None:
    zones = client_zones(E164("+79141234567"))
    assert {"Europe/Moscow", "Asia/Vladivostok", "Asia/Kamchatka"} <= set(zones)
    # In June the westernmost listed zones are UTC+3 and the easternmost UTC+12:
    # 09:00 UTC+3 = 06:00 UTC, 21:00 UTC+12 = 09:00 UTC.
    h = hours(MOSCOW_DESK, *zones)
    assert common(h, utc(2024, 6, 4)) == [(utc(2024, 6, 4, 6), utc(2024, 6, 4, 9))]


def test_us_toll_free_spans_guam_to_newfoundland() -> None:
    zones = client_zones(E164("+18002345678"))
    assert {"Pacific/Guam", "America/St_Johns", "Pacific/Pago_Pago"} <= set(zones)
    # July: Guam 09:00 (UTC+10) = 23:00 UTC; St John's 21:00 (UTC-2:30) = 23:30 UTC.
    h = CallingHours.for_client(ALWAYS, WINDOW, zones)
    assert common(h, utc(2024, 7, 3, 12)) == [(utc(2024, 7, 3, 23), utc(2024, 7, 3, 23, 30))]
    # A Moscow desk is closed then: never callable, and said so.
    with pytest.raises(NoCommonHours, match="never meet the business hours"):
        hours(MOSCOW_DESK, *zones).next_open(utc(2024, 7, 3))


def test_configured_range_and_form_zone_override_the_numbering_plan() -> None:
    mobile = E164("+79141234567")
    refined = {"+7914": ("Asia/Vladivostok",), "+79": ("Europe/Moscow",)}
    assert client_zones(mobile, refinements=refined) == ("Asia/Vladivostok",)  # longest prefix
    assert client_zones(mobile, "Asia/Yakutsk", refined) == ("Asia/Yakutsk",)
    assert client_zones(mobile, "Mars/Olympus", refined) == ("Asia/Vladivostok",)  # unknown zone ignored


# --- the schedule: every due time in the common hours, and why it waits


def test_vladivostok_client_abandoned_at_20_moscow_waits_for_9_local() -> None:
    vladivostok = ZoneInfo("Asia/Vladivostok")
    abandoned = datetime(2024, 6, 3, 20, 0, tzinfo=MOSCOW)  # 03:00 Tuesday in Vladivostok
    # A round-the-clock desk rings at 09:00 Vladivostok (02:00 Moscow).
    schedule = Schedule(calendar=ALWAYS, client_window=WINDOW, opening_spread=timedelta(0))
    zones = schedule.zones_for(E164("+74232123456"))
    plan = schedule.plan(0, None, abandoned, client_zones=zones)
    assert (plan.due, plan.wait) == (datetime(2024, 6, 4, 9, 0, tzinfo=vladivostok), Wait.CLIENT_HOURS)
    # A Moscow 09:00-21:00 desk rings when both are open: 09:00 Moscow, 16:00 Vladivostok.
    schedule = Schedule(calendar=MOSCOW_DESK, client_window=WINDOW, opening_spread=timedelta(0))
    plan = schedule.plan(0, None, abandoned, client_zones=zones)
    assert (plan.due, plan.wait) == (datetime(2024, 6, 4, 16, 0, tzinfo=vladivostok), Wait.CLIENT_HOURS)
    # Without the client window the desk would have rung at once, 03:00 for the client.
    assert Schedule(calendar=MOSCOW_DESK).plan(0, None, abandoned).due == abandoned


def test_opening_spread_stays_inside_the_common_stretch() -> None:
    # Honolulu: common stretch 06:00-07:00 UTC; a 2 h spread must be cut to that hour.
    schedule = Schedule(calendar=MOSCOW_DESK, client_window=WINDOW, opening_spread=timedelta(hours=2))
    h = schedule.hours_for(["Pacific/Honolulu"])
    for key in (f"+1808555{i:04d}" for i in range(50)):
        due = schedule.due_at(0, None, utc(2024, 6, 3, 12), spread_key=key, client_zones=["Pacific/Honolulu"])
        assert due is not None and utc(2024, 6, 4, 6) <= due < utc(2024, 6, 4, 7)
        assert h.is_open(due)


def test_retries_land_in_client_hours_and_say_why() -> None:
    schedule = Schedule(calendar=MOSCOW_DESK, client_window=WINDOW, opening_spread=timedelta(0))
    zones = ["Asia/Kamchatka"]  # common stretch 06:00-09:00 UTC
    first = utc(2024, 6, 4, 6, 0)
    # 1 h later is still inside: the ladder alone decides.
    plan = schedule.plan(1, first, first, client_zones=zones)
    assert (plan.due, plan.wait) == (utc(2024, 6, 4, 7), Wait.LADDER)
    # 6 h later (after the third try) the desk is open but Kamchatka sleeps.
    plan = schedule.plan(3, first, first, client_zones=zones)
    assert (plan.due, plan.wait) == (utc(2024, 6, 5, 6), Wait.CLIENT_HOURS)
    # After the desk closes it is the business's hours that hold it.
    plan = schedule.plan(0, None, utc(2024, 6, 4, 19), client_zones=["Europe/Moscow"])
    assert (plan.due, plan.wait) == (utc(2024, 6, 5, 6), Wait.BUSINESS_HOURS)


def test_never_intersecting_window_is_a_refusal_not_a_park() -> None:
    # A desk open 14:00-18:00 Moscow (11:00-15:00 UTC) never meets Honolulu's 19:00-07:00 UTC.
    afternoon = BusinessCalendar.from_spec("Europe/Moscow", {"mon-fri": "14:00-18:00"})
    schedule = Schedule(calendar=afternoon, client_window=WINDOW)
    plan = schedule.plan(0, None, utc(2024, 6, 3, 12), client_zones=["Pacific/Honolulu"])
    assert plan.due is None and plan.close_reason == "no_common_hours"
    assert schedule.next_callable(utc(2024, 6, 3, 12), ["Pacific/Honolulu"]).close_reason == "no_common_hours"
    # The same desk reaches a Moscow client as before.
    assert schedule.plan(0, None, utc(2024, 6, 3, 12), client_zones=["Europe/Moscow"]).due == utc(
        2024, 6, 3, 12
    )


def test_no_zone_known_means_business_hours_only() -> None:
    schedule = Schedule(calendar=MOSCOW_DESK, client_window=WINDOW)
    assert schedule.hours_for(()) is MOSCOW_DESK
    assert Schedule(calendar=MOSCOW_DESK).hours_for(["Pacific/Honolulu"]) is MOSCOW_DESK  # window off


def test_client_window_closed_every_day_is_refused() -> None:
    with pytest.raises(InvalidSchedule, match="closed every day"):
        ClientWindow.from_spec({"mon-sun": "closed"})


# --- chosen times


def test_a_keyed_in_time_is_the_clients_local_time() -> None:
    schedule = Schedule(calendar=ALWAYS, client_window=WINDOW)
    wall = datetime(2026, 3, 3, 15, 0)
    assert schedule.chosen_instant(wall, ["Asia/Vladivostok"]) == datetime(2026, 3, 3, 5, 0, tzinfo=UTC)
    # Several possible zones: the business's clock (here UTC) is the one both sides share.
    assert schedule.chosen_instant(wall, ["Asia/Vladivostok", "Europe/Moscow"]) == datetime(
        2026, 3, 3, 15, 0, tzinfo=UTC
    )
    # 02:30 on the US spring-forward night does not exist: the first instant after the gap.
    assert schedule.chosen_instant(datetime(2026, 3, 8, 2, 30), ["America/New_York"]) == datetime(
        2026, 3, 8, 7, 0, tzinfo=UTC
    )


def test_a_chosen_time_survives_merges_and_a_new_choice_replaces_it() -> None:
    schedule = Schedule(
        calendar=ALWAYS, client_window=WINDOW, opening_spread=timedelta(0), max_age=timedelta(days=7)
    )
    zones = ["Europe/Moscow"]
    chosen = utc(2024, 6, 5, 12)  # 15:00 Moscow, two days ahead
    missed = utc(2024, 6, 3, 9)
    # Without a choice the earliest need wins; with one, a missed call does not pull it in.
    assert schedule.merged_due(chosen, missed, client_zones=zones) == missed
    assert schedule.merged_due(chosen, missed, client_zones=zones, kept_choice=True) == chosen
    # A new choice, even a later one, replaces the standing due time, fitted into client hours.
    later = utc(2024, 6, 6, 19)  # 22:00 Moscow: the client's evening is over
    got = schedule.merged_due(missed, missed, later, client_zones=zones, new_choice=True)
    assert got == utc(2024, 6, 7, 6)  # 09:00 Moscow next morning
