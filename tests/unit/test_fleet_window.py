"""Maintenance windows: the grammar, its errors, and when a window is open, in time zones and
across daylight saving time (unit tests at known instants, property tests at random ones)."""

from __future__ import annotations

import itertools
import shutil
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amber.fleet import window
from amber.fleet.window import ALL_DAYS, Period, Window, WindowError, parse

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
ZONEINFO = Path("/usr/share/zoneinfo")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(zone: tzinfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0,
          fold: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone, fold=fold)


# ---- grammar ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "periods"), [
    ("Sat,Sun 02:00-04:00", [({5, 6}, 120, 240)]),
    ("Mon-Fri 22:00-06:00", [({0, 1, 2, 3, 4}, 1320, 360)]),
    ("daily 03:00-05:00", [(set(range(7)), 180, 300)]),
    ("03:00-05:00", [(set(range(7)), 180, 300)]),
    ("*", [(set(range(7)), 0, 1440)]),
    ("* 01:00-02:00", [(set(range(7)), 60, 120)]),
    ("Sat", [({5}, 0, 1440)]),
    ("Fri-Mon", [({4, 5, 6, 0}, 0, 1440)]),
    ("Sun-Sun 01:00-02:00", [({6}, 60, 120)]),
    ("sat , SUN 2:00 - 4:00", [({5, 6}, 120, 240)]),
    ("Saturday,sunday 02:00-04:00", [({5, 6}, 120, 240)]),
    ("Mon,Wed-Thu,Sat 22:00-00:00", [({0, 2, 3, 5}, 1320, 1440)]),
    ("Mon 00:00-24:00", [({0}, 0, 1440)]),
    ("Sat 01:00-05:00; Sun 03:00-04:00", [({5}, 60, 300), ({6}, 180, 240)]),
])
def test_parse(text: str, periods: list[tuple[set[int], int, int]]) -> None:
    parsed = parse(text, default_zone=UTC)
    assert parsed.periods == tuple(Period(frozenset(d), s, e) for d, s, e in periods)
    assert parsed.zone is UTC


@pytest.mark.parametrize(("text", "zone"), [
    ("Sat 02:00-04:00 Europe/Berlin", "Europe/Berlin"),
    ("Sat 02:00-04:00; Sun 01:00-02:00 America/New_York", "America/New_York"),
    ("Sat UTC", "UTC"),
    ("02:00-04:00 Etc/GMT-1", "Etc/GMT-1"),
    ("* America/Port-au-Prince", "America/Port-au-Prince"),
])
def test_parse_zone(text: str, zone: str) -> None:
    assert parse(text, default_zone=UTC).zone is ZoneInfo(zone)


@pytest.mark.parametrize(("text", "canonical"), [
    ("Sat,Sun 02:00-04:00 Europe/Berlin", "Sat,Sun 02:00-04:00 Europe/Berlin"),
    ("Mon-Fri 22:00-06:00 UTC", "Mon-Fri 22:00-06:00 UTC"),
    ("Fri-Mon 22:00-00:00 UTC", "Mon,Fri-Sun 22:00-24:00 UTC"),
    ("daily 03:00-05:00 UTC", "daily 03:00-05:00 UTC"),
    ("Mon-Sun UTC", "* UTC"),
    ("sun;sat 01:00-02:00 UTC", "Sun; Sat 01:00-02:00 UTC"),
])
def test_str_is_canonical(text: str, canonical: str) -> None:
    assert str(parse(text)) == canonical
    assert parse(canonical) == parse(text)


@pytest.mark.parametrize(("text", "message"), [
    ("", "the window is empty: use '*'"),
    ("   ", "the window is empty"),
    ("Sta 02:00-04:00", "'Sta' is not a day: use Mon, Tue"),
    ("Sat,,Sun", "an empty day in 'Sat,,Sun'"),
    ("Mon-", "'Mon-' is not a day range"),
    ("Mon-Fri-Sat", "'Mon-Fri-Sat' is not a day range"),
    ("Sat,* 02:00-04:00", "'*' is not a day"),
    ("Sat 02:00", "'02:00' is not a time range: write HH:MM-HH:MM"),
    ("Sat 02:00-04:00-05:00", "is not a time range"),
    ("Sat 2pm:00-04:00", "'2pm:00' in '2pm:00-04:00' is not a time"),
    ("Sat 25:00-04:00", "hours go from 00 to 23"),
    ("Sat 24:00-04:00", "24:00 only as an end"),
    ("Sat 02:60-03:00", "minutes go from 00 to 59"),
    ("Sat 02:00-02:00", "'02:00-02:00' is empty"),
    ("Sat 00:00-00:00", "'00:00-00:00' is empty"),
    ("Sat 02:00-04:00 Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ("Sat 02:00-04:00 foo", "'foo' is neither a day (Mon, Tue"),
    ("Sat foo 02:00-04:00", "'foo' is not a day"),
    ("Sat Sun 02:00-04:00", "the days 'Sun' follow other days: join days with commas"),
    ("02:00-04:00 Sat", "the days 'Sat' come after the time range"),
    ("Sat 02:00-04:00 03:00-05:00", "two time ranges in one period"),
    ("Sat 02:00-04:00;", "period 2 of 'Sat 02:00-04:00;' is empty"),
    (";Sat", "period 1"),
    ("Sat 02:00-04:00 UTC; Sun", "the time zone 'UTC' must come once, at the very end"),
    ("Sat UTC 02:00-04:00", "the time zone 'UTC' must come after the days and times"),
    ("Europe/Berlin", "the time zone 'Europe/Berlin' must come after the days and times"),
])
def test_malformed(text: str, message: str) -> None:
    with pytest.raises(WindowError) as caught:
        parse(text, default_zone=UTC)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_no_time_zone_database(monkeypatch: pytest.MonkeyPatch) -> None:
    import zoneinfo

    monkeypatch.setattr(zoneinfo, "available_timezones", set)
    with pytest.raises(WindowError, match="no time zone database to look up 'Mars/Olympus' in: "
                                          "install tzdata"):
        parse("Sat Mars/Olympus")


def test_window_error_is_a_value_error() -> None:
    assert issubclass(WindowError, ValueError)


def test_period_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="days"):
        Period(frozenset(), 0, 60)
    with pytest.raises(ValueError, match="days"):
        Period(frozenset({7}), 0, 60)
    with pytest.raises(ValueError, match="minutes"):
        Period(ALL_DAYS, 60, 60)
    with pytest.raises(ValueError, match="minutes"):
        Period(ALL_DAYS, 0, 1441)
    with pytest.raises(ValueError, match="at least one period"):
        Window((), UTC)


def test_naive_instants_are_refused() -> None:
    w = parse("*", default_zone=UTC)
    with pytest.raises(ValueError, match="no time zone"):
        w.contains(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="no time zone"):
        w.next_start(datetime(2024, 1, 1))


# ---- the local time zone ----------------------------------------------------------------------

def test_default_zone_is_the_local_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", ":Asia/Tokyo")
    assert window.local_zone() is ZoneInfo("Asia/Tokyo")
    assert parse("Sat").zone is ZoneInfo("Asia/Tokyo")
    assert parse("Sat", default_zone=BERLIN).zone is BERLIN
    assert parse("Sat UTC", default_zone=BERLIN).zone is ZoneInfo("UTC")


def test_local_zone_of_a_root_from_a_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # $TZ is the caller's, not the root's
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/localtime").symlink_to("../usr/share/zoneinfo/Europe/Berlin")
    assert window.local_zone(tmp_path) is BERLIN


@pytest.mark.skipif(not (ZONEINFO / "America/New_York").exists(), reason="no tzdata files")
def test_local_zone_of_a_root_from_a_copied_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    shutil.copy(ZONEINFO / "America/New_York", tmp_path / "etc/localtime")
    zone = window.local_zone(tmp_path)
    assert local(zone, 2024, 7, 1).utcoffset() == timedelta(hours=-4)
    assert local(zone, 2024, 12, 1).utcoffset() == timedelta(hours=-5)


def test_local_zone_of_a_root_from_etc_timezone(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/timezone").write_text("America/New_York\n")
    assert window.local_zone(tmp_path) is NEW_YORK


def test_local_zone_of_a_root_without_one_is_utc(tmp_path: Path) -> None:
    assert window.local_zone(tmp_path) is UTC
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/localtime").symlink_to("/nowhere/zoneinfo/Not/A_Zone")
    assert window.local_zone(tmp_path) is UTC


# ---- open or closed, in UTC -------------------------------------------------------------------

def test_weekend_nights() -> None:
    w = parse("Sat,Sun 02:00-04:00 UTC")
    # 2024-06-01 is a Saturday.
    assert not w.contains(utc(2024, 6, 1, 1, 59, 59))
    assert w.contains(utc(2024, 6, 1, 2, 0))
    assert w.contains(utc(2024, 6, 1, 3, 59, 59))
    assert not w.contains(utc(2024, 6, 1, 4, 0))
    assert w.contains(utc(2024, 6, 2, 3, 0))
    assert not w.contains(utc(2024, 6, 3, 3, 0))
    assert w.next_start(utc(2024, 5, 29, 12)) == utc(2024, 6, 1, 2)
    assert w.next_start(utc(2024, 6, 1, 4)) == utc(2024, 6, 2, 2)
    assert w.next_start(utc(2024, 6, 2, 4)) == utc(2024, 6, 8, 2)
    assert w.next_start(utc(2024, 6, 1, 3)) == utc(2024, 6, 1, 3)  # open: now
    assert w.current_end(utc(2024, 6, 1, 3)) == utc(2024, 6, 1, 4)
    assert w.current_end(utc(2024, 6, 1, 5)) == utc(2024, 6, 1, 5)  # closed: now


def test_instants_in_other_zones_are_the_same_instants() -> None:
    w = parse("Sat 02:00-04:00 UTC")
    assert w.contains(local(NEW_YORK, 2024, 5, 31, 22, 30))  # Sat 02:30 UTC
    assert not w.contains(local(NEW_YORK, 2024, 6, 1, 2, 30))  # Sat 06:30 UTC
    start = w.next_start(local(BERLIN, 2024, 6, 1, 0, 0))
    assert start == utc(2024, 6, 1, 2) and start.tzinfo is UTC


def test_across_midnight() -> None:
    w = parse("Mon-Fri 22:00-06:00 UTC")
    # 2024-06-03 is a Monday.
    assert not w.contains(utc(2024, 6, 3, 3))  # Monday early: Sunday night never opened
    assert w.contains(utc(2024, 6, 3, 22))
    assert w.contains(utc(2024, 6, 4, 5, 59))
    assert not w.contains(utc(2024, 6, 4, 6))
    assert w.contains(utc(2024, 6, 7, 23))  # Friday night
    assert w.contains(utc(2024, 6, 8, 5))  # ... into Saturday morning
    assert not w.contains(utc(2024, 6, 8, 22))  # no Saturday night
    assert not w.contains(utc(2024, 6, 9, 23))  # no Sunday night
    assert w.next_start(utc(2024, 6, 8, 6)) == utc(2024, 6, 10, 22)
    assert w.current_end(utc(2024, 6, 7, 23)) == utc(2024, 6, 8, 6)


def test_across_the_week_end() -> None:
    w = parse("Sun 22:00-02:00 UTC")
    assert w.contains(utc(2024, 6, 9, 23))
    assert w.contains(utc(2024, 6, 10, 1, 59))  # Monday
    assert not w.contains(utc(2024, 6, 10, 2))
    assert w.next_start(utc(2024, 6, 10, 2)) == utc(2024, 6, 16, 22)
    days = parse("Sat-Mon UTC")
    assert days.contains(utc(2024, 6, 10, 12)) and not days.contains(utc(2024, 6, 11, 0))
    assert days.current_end(utc(2024, 6, 8, 0)) == utc(2024, 6, 11, 0)


def test_adjacent_periods_are_one_stretch() -> None:
    w = parse("daily 22:00-24:00; daily 00:00-02:00 UTC")
    assert w.current_end(utc(2024, 6, 1, 23)) == utc(2024, 6, 2, 2)
    overlapping = parse("Sat 01:00-03:00; Sat 02:00-05:00 UTC")
    assert overlapping.current_end(utc(2024, 6, 1, 1)) == utc(2024, 6, 1, 5)


def test_always() -> None:
    for text in ("*", "daily", "Mon-Sun 00:00-24:00", "daily 12:00-12:01; daily 12:01-12:00"):
        w = parse(text, default_zone=BERLIN)
        for instant in (utc(2024, 3, 31, 1), utc(2024, 10, 27, 1, 30), utc(2025, 1, 1)):
            assert w.contains(instant)
            assert w.next_start(instant) == instant
            assert w.current_end(instant) is None


def test_zone_of_the_window() -> None:
    w = parse("Sat 02:00-04:00 America/New_York")
    assert w.next_start(utc(2024, 6, 1)) == utc(2024, 6, 1, 6)  # EDT is UTC-4
    assert w.next_start(utc(2024, 12, 1)) == utc(2024, 12, 7, 7)  # EST is UTC-5
    tokyo = parse("Mon 01:00-02:00 Asia/Tokyo")
    assert tokyo.contains(utc(2024, 6, 2, 16, 30))  # Monday 01:30 in Tokyo is Sunday in UTC


# ---- daylight saving time ---------------------------------------------------------------------
# Europe/Berlin: 2024-03-31 02:00 CET -> 03:00 CEST (at 01:00 UTC);
#                2024-10-27 03:00 CEST -> 02:00 CET (at 01:00 UTC).
# America/New_York: 2024-03-10 02:00 EST -> 03:00 EDT (at 07:00 UTC);
#                   2024-11-03 02:00 EDT -> 01:00 EST (at 06:00 UTC).

def test_spring_forward_start_maps_to_the_jump() -> None:
    w = parse("Sun 02:30-03:30 Europe/Berlin")
    assert w.next_start(utc(2024, 3, 30)) == utc(2024, 3, 31, 1)  # 03:00 CEST
    assert w.current_end(utc(2024, 3, 31, 1)) == utc(2024, 3, 31, 1, 30)  # 03:30 CEST
    assert not w.contains(utc(2024, 3, 31, 0, 59, 59))  # 01:59:59 CET


def test_spring_forward_end_maps_to_the_jump() -> None:
    w = parse("Sun 01:00-02:30 Europe/Berlin")
    assert w.next_start(utc(2024, 3, 30)) == utc(2024, 3, 31, 0)  # 01:00 CET
    assert w.current_end(utc(2024, 3, 31, 0)) == utc(2024, 3, 31, 1)  # the jump


def test_spring_forward_skips_a_period_inside_the_gap() -> None:
    w = parse("Sun 02:15-02:45 Europe/Berlin")
    assert w.next_start(utc(2024, 3, 30)) == utc(2024, 4, 7, 0, 15)  # next Sunday, CEST
    assert not any(w.contains(utc(2024, 3, 31, 0) + timedelta(minutes=m)) for m in range(120))


def test_spring_forward_shortens_a_window() -> None:
    w = parse("daily 02:00-04:00 Europe/Berlin")
    start = w.next_start(utc(2024, 3, 30, 12))
    assert (start, w.current_end(start)) == (utc(2024, 3, 31, 1), utc(2024, 3, 31, 2))
    night = parse("Sat 23:00-03:30 Europe/Berlin")  # crosses midnight into the jump
    start = night.next_start(utc(2024, 3, 30, 12))
    assert (start, night.current_end(start)) == (utc(2024, 3, 30, 22), utc(2024, 3, 31, 1, 30))


def test_fall_back_counts_a_repeated_time_once() -> None:
    w = parse("Sun 02:15-02:45 Europe/Berlin")
    start = w.next_start(utc(2024, 10, 26))
    assert start == utc(2024, 10, 27, 0, 15)  # the first 02:15, CEST
    assert w.current_end(start) == utc(2024, 10, 27, 0, 45)
    assert not w.contains(utc(2024, 10, 27, 1, 30))  # 02:30 again, CET
    assert not w.contains(local(BERLIN, 2024, 10, 27, 2, 30, fold=1))
    assert w.contains(local(BERLIN, 2024, 10, 27, 2, 30, fold=0))
    assert w.next_start(utc(2024, 10, 27, 0, 45)) == utc(2024, 11, 3, 1, 15)


def test_fall_back_keeps_a_window_one_stretch() -> None:
    w = parse("Sun 02:00-04:00 Europe/Berlin")
    start = w.next_start(utc(2024, 10, 26))
    assert start == utc(2024, 10, 27, 0)  # 02:00 CEST
    assert w.current_end(start) == utc(2024, 10, 27, 3)  # 04:00 CET: three hours
    assert w.contains(utc(2024, 10, 27, 1, 30))  # 02:30 CET, the second pass
    assert w.next_start(utc(2024, 10, 27, 1, 30)) == utc(2024, 10, 27, 1, 30)


def test_fall_back_end_is_its_first_reading() -> None:
    w = parse("Sun 01:00-02:30 Europe/Berlin")
    start = w.next_start(utc(2024, 10, 26))
    assert (start, w.current_end(start)) == (utc(2024, 10, 26, 23), utc(2024, 10, 27, 0, 30))
    assert not w.contains(utc(2024, 10, 27, 1, 15))  # 02:15 CET, the clock read 02:30 before


def test_new_york() -> None:
    w = parse("daily 01:30-02:30 America/New_York")
    spring = w.next_start(utc(2024, 3, 10))
    assert (spring, w.current_end(spring)) == (utc(2024, 3, 10, 6, 30), utc(2024, 3, 10, 7))
    fall = w.next_start(utc(2024, 11, 3))
    assert (fall, w.current_end(fall)) == (utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 7, 30))
    assert w.contains(utc(2024, 11, 3, 6, 15))  # 01:15 EST, inside the longer stretch
    once = parse("Sun 01:15-01:45 America/New_York")
    assert once.next_start(utc(2024, 11, 3)) == utc(2024, 11, 3, 5, 15)  # EDT
    assert not once.contains(utc(2024, 11, 3, 6, 30))  # 01:30 EST
    assert once.next_start(utc(2024, 11, 3, 5, 45)) == utc(2024, 11, 10, 6, 15)


def test_a_jump_at_midnight() -> None:
    # America/Santiago: 2024-09-08 00:00 -04 -> 01:00 -03 (at 04:00 UTC); Sunday 00:00 never is.
    w = parse("Sun 00:00-02:00 America/Santiago")
    start = w.next_start(utc(2024, 9, 6))
    assert (start, w.current_end(start)) == (utc(2024, 9, 8, 4), utc(2024, 9, 8, 5))
    saturday = parse("Sat 22:00-24:00 America/Santiago")
    start = saturday.next_start(utc(2024, 9, 6))
    assert (start, saturday.current_end(start)) == (utc(2024, 9, 8, 2), utc(2024, 9, 8, 4))


# ---- properties -------------------------------------------------------------------------------

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
         "America/Santiago", "Pacific/Chatham"]


def _transitions(zone: ZoneInfo, year: int) -> list[datetime]:
    instants = [utc(year, 1, 1) + timedelta(hours=2 * i) for i in range(366 * 12)]
    return [b for a, b in itertools.pairwise(instants)
            if a.astimezone(zone).utcoffset() != b.astimezone(zone).utcoffset()]


TRANSITIONS = sorted(t for name in ZONES for year in (2024, 2025)
                     for t in _transitions(ZoneInfo(name), year))

minutes = st.one_of(st.integers(0, 1439), st.sampled_from([0, 60, 90, 120, 135, 150, 180, 1410]))


@st.composite
def periods(draw: st.DrawFn) -> Period:
    days = draw(st.frozensets(st.integers(0, 6), min_size=1))
    start = draw(minutes)
    end = draw(st.one_of(minutes, st.just(1440)).filter(lambda m: m != start and m != 0))
    return Period(days, start, end)


windows = st.builds(Window, st.lists(periods(), min_size=1, max_size=3).map(tuple),
                    st.sampled_from(ZONES).map(ZoneInfo))
near_transitions = st.builds(lambda t, s: t + timedelta(seconds=s), st.sampled_from(TRANSITIONS),
                             st.integers(-3 * 86400, 3 * 86400))
anywhere = st.datetimes(datetime(2023, 1, 1), datetime(2026, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC))
instants = st.one_of(near_transitions, anywhere)
fractions = st.lists(st.floats(0, 1, exclude_max=True), min_size=20, max_size=20)



def _between(start: datetime, end: datetime, fraction: float) -> datetime:
    """An instant in [start, end), `fraction` of the way (to the microsecond, rounded down)."""
    total = (end - start) // timedelta(microseconds=1)
    return start + timedelta(microseconds=min(int(total * fraction), total - 1))


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(windows, instants, fractions)
def test_next_start_is_the_first_open_instant(w: Window, t: datetime, at: list[float]) -> None:
    start = w.next_start(t)
    assert start >= t
    assert w.contains(start)
    assert start - t <= timedelta(days=14)
    for f in at if start > t else []:
        assert not w.contains(_between(t, start, f))
    if start - t >= timedelta(seconds=1):
        assert not w.contains(start - timedelta(seconds=1))


@PROPERTY
@given(windows, instants, fractions)
def test_current_end_is_the_first_closed_instant(w: Window, t: datetime, at: list[float]) -> None:
    end = w.current_end(t)
    if not w.contains(t):
        assert end == t
        return
    if end is None:
        assert _covers_the_week(w), "only windows open all week never close"
        for f in at:
            assert w.contains(_between(t, t + timedelta(days=15), f))
        return
    assert end > t
    assert not w.contains(end)
    for f in at:
        assert w.contains(_between(t, end, f))
    assert w.contains(end - timedelta(seconds=1))
    assert w.next_start(end) > end


def _covers_the_week(w: Window) -> bool:
    covered: set[int] = set()
    for p in w.periods:
        length = p.end - p.start if p.end > p.start else p.end + 1440 - p.start
        for day in p.days:
            covered.update((day * 1440 + p.start + m) % (7 * 1440) for m in range(length))
    return len(covered) == 7 * 1440


def _wall_clock_rule(w: Window, t: datetime) -> bool:
    wall = t.astimezone(w.zone)
    minute = wall.hour * 60 + wall.minute + wall.second / 60 + wall.microsecond / 6e7
    today, yesterday = wall.weekday(), (wall.weekday() - 1) % 7
    for p in w.periods:
        if p.crosses_midnight:
            if (today in p.days and minute >= p.start) or (yesterday in p.days and minute < p.end):
                return True
        elif today in p.days and p.start <= minute < p.end:
            return True
    return False


def _read_twice(t: datetime, zone: tzinfo) -> bool:
    wall = t.astimezone(zone)
    return wall.replace(fold=1 - wall.fold).astimezone(UTC) != t


@PROPERTY
@given(windows, instants)
def test_open_means_the_clock_reads_a_time_of_the_window(w: Window, t: datetime) -> None:
    """Where the local clock reads a time only once, the window is open exactly when that time
    is inside one of its periods. (A repeated reading counts when the stretch that began at the
    first reading is still open, whatever the clock reads: the unit tests above.)"""
    if not _read_twice(t, w.zone):
        assert w.contains(t) == _wall_clock_rule(w, t)


@PROPERTY
@given(windows)
def test_str_round_trips(w: Window) -> None:
    assert parse(str(w)) == w
