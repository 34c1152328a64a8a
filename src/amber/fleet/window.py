"""Maintenance windows: `[reboot] window` in amber.conf, and when such a window is open.

Grammar (case-insensitive; blanks around ',' and '-' are allowed):

    window  = period { ";" period } [ zone ]
    period  = days [ times ] | times
    days    = "daily" | "*" | day-item { "," day-item }
    day-item = day | day "-" day          Fri-Mon wraps over the week end: Fri,Sat,Sun,Mon
    day     = Mon | Tue | Wed | Thu | Fri | Sat | Sun   (or the full English name)
    times   = HH:MM "-" HH:MM             an end at or before the start ends the next day;
                                          24:00 is allowed as an end; start == end is an error
    zone    = an IANA time zone name (Europe/Berlin, America/New_York, UTC); it comes once,
              at the very end, and applies to every period

Days without times mean the whole day; times without days mean every day. The days name the day
a period *starts* on: "Mon-Fri 22:00-06:00" is open from Monday 22:00 to Tuesday 06:00, ..., and
from Friday 22:00 to Saturday 06:00. "*" alone (every day, all day) is always open. Without a
zone the system's local time zone is used.

Examples: "Sat,Sun 02:00-04:00", "Mon-Fri 22:00-06:00 Europe/Berlin", "daily 03:00-05:00",
"Sat 01:00-05:00; Sun 03:00-04:00 UTC", "*".

Daylight saving time. A period that starts on local date D is open from the first instant at which
the local clock reads its start time on D until the first instant at which it reads its end time:
- a time the clock skips (spring forward) maps forward to the moment of the jump: "02:30-03:30"
  on the day Berlin jumps from 02:00 to 03:00 is open 03:00-03:30; a period that lies wholly in
  the skipped hour ("02:15-02:45") does not occur that day;
- a time the clock reads twice (fall back) counts once, at its first reading: "02:15-02:45" on
  the day Berlin falls back from 03:00 to 02:00 is open during the first 02:15-02:45 only, while
  "02:00-04:00" that day is one stretch of three hours.

All instants given to a Window must be aware; the instants it returns are in UTC (comparing or
subtracting aware datetimes that share a DST zone ignores the fold, so amber computes in UTC).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
ALL_DAYS = frozenset(range(7))
MINUTES_PER_DAY = 24 * 60
# A stretch of open time that lasts this long never closes: the window repeats every week.
_NEVER_CLOSES = timedelta(days=8)
# next_start() looks this many days ahead; a weekly period skipped once by a DST jump recurs
# within it.
_SEARCH_DAYS = 16

_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_EXAMPLE = "like 'Sat,Sun 02:00-04:00' or 'Mon-Fri 22:00-06:00 Europe/Berlin'"


class WindowError(ValueError):
    """A malformed window; the caller names the configuration key (and exits with CONFIG)."""


@dataclass(frozen=True)
class Period:
    """Open on each of `days` (Mon = 0) from `start` to `end`, in minutes after local midnight.

    `start` is 0..1439, `end` is 1..1440; an end before the start ends on the next day."""

    days: frozenset[int]
    start: int
    end: int

    def __post_init__(self) -> None:
        if not self.days or not self.days <= ALL_DAYS:
            raise ValueError(f"days must be a non-empty set of 0..6, not {set(self.days)}")
        if not (0 <= self.start < MINUTES_PER_DAY and 0 < self.end <= MINUTES_PER_DAY
                and self.start != self.end):
            raise ValueError(f"bad minutes {self.start}-{self.end}")

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    @property
    def whole_day(self) -> bool:
        return self.start == 0 and self.end == MINUTES_PER_DAY

    def __str__(self) -> str:
        days = _format_days(self.days)
        if self.whole_day:
            return days
        return f"{days} {_format_minute(self.start)}-{_format_minute(self.end)}"


@dataclass(frozen=True)
class Window:
    """A maintenance window: open during any of its periods, read on the clock of `zone`."""

    periods: tuple[Period, ...]
    zone: tzinfo

    def __post_init__(self) -> None:
        if not self.periods:
            raise ValueError("a window needs at least one period")

    def __str__(self) -> str:
        if self.periods == (Period(ALL_DAYS, 0, MINUTES_PER_DAY),):
            text = "*"
        else:
            text = "; ".join(str(p) for p in self.periods)
        name = zone_name(self.zone)
        return f"{text} {name}" if name else text

    def contains(self, instant: datetime) -> bool:
        """Whether the window is open at `instant`."""
        at = _utc(instant)
        return any(start <= at < end for start, end in self._occurrences(at, -2, 1))

    def next_start(self, after: datetime) -> datetime:
        """The earliest instant at or after `after` at which the window is open (UTC): `after`
        itself when the window is open then."""
        at = _utc(after)
        candidates = [max(start, at) for start, end in self._occurrences(at, -2, _SEARCH_DAYS)
                      if end > at]
        if not candidates:  # every period of some weekday would have to vanish for two weeks
            raise RuntimeError(f"the window '{self}' does not open in {_SEARCH_DAYS} days")
        return min(candidates)

    def current_end(self, instant: datetime) -> datetime | None:
        """The earliest instant at or after `instant` at which the window is closed (UTC):
        `instant` itself when it is closed then, None when the window never closes ('*')."""
        at = end = _utc(instant)
        while end - at < _NEVER_CLOSES:
            ends = [e for s, e in self._occurrences(end, -2, 1) if s <= end < e]
            if not ends:
                return end
            end = max(ends)
        return None

    def _occurrences(self, around: datetime, first: int,
                     last: int) -> list[tuple[datetime, datetime]]:
        """The non-empty (start, end) intervals, in UTC, of the periods that start on the local
        dates from `first` to `last` days after the local date of `around`."""
        today = around.astimezone(self.zone).date()
        found = []
        for offset in range(first, last + 1):
            day = today + timedelta(days=offset)
            for period in self.periods:
                if day.weekday() not in period.days:
                    continue
                start = self._first_reading(day, period.start)
                end_day = day + timedelta(days=1) if period.crosses_midnight else day
                end = self._first_reading(end_day, period.end)
                if start < end:
                    found.append((start, end))
        return found

    def _first_reading(self, day: date, minute: int) -> datetime:
        """The first instant (UTC) at which the local clock reads `minute` after midnight of
        `day`, or, when the clock skips that time, the instant it jumps over it."""
        wall = datetime.combine(day, time()) + timedelta(minutes=minute)
        early = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        if _wall(early, self.zone) == wall:
            return early  # fold=0 is the first of the two readings of a repeated time
        # In a gap, fold=0 maps with the offset before the jump (later than the jump) and fold=1
        # with the offset after it (earlier). Bisect to the jump: the first second at which the
        # clock reads `wall` or later.
        low = int(wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC).timestamp())
        high = int(early.timestamp())
        while high - low > 1:
            middle = (low + high) // 2
            if _wall(datetime.fromtimestamp(middle, UTC), self.zone) >= wall:
                high = middle
            else:
                low = middle
        return datetime.fromtimestamp(high, UTC)


def _utc(instant: datetime) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{instant} has no time zone: windows need aware datetimes")
    return instant.astimezone(UTC)


def _wall(instant: datetime, zone: tzinfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


# ---- parsing --------------------------------------------------------------------------------

def parse(text: str, default_zone: tzinfo | None = None) -> Window:
    """Parse a window (see the module's grammar). Without a zone in the text, `default_zone`
    applies, else the system's local time zone."""
    chunks = text.split(";")
    if not text.strip():
        raise WindowError("the window is empty: use '*' for any time, or days and times "
                          f"{_EXAMPLE}")
    zone: tzinfo | None = None
    periods = []
    for number, chunk in enumerate(chunks, start=1):
        words = re.sub(r"\s*([,-])\s*", r"\1", chunk.strip()).split()
        if not words:
            raise WindowError(f"period {number} of '{text.strip()}' is empty (a stray ';'?)")
        last_chunk = number == len(chunks)
        if last_chunk and len(words) > 1 and _is_zone_word(words[-1]):
            zone = _zone(words.pop())
        periods.append(_period(words, last_chunk))
    if zone is None:
        zone = default_zone if default_zone is not None else local_zone()
    return Window(tuple(periods), zone)


def _period(words: list[str], last_chunk: bool) -> Period:
    days: frozenset[int] | None = None
    minutes: tuple[int, int] | None = None
    for word in words:
        if ":" in word:
            if minutes is not None:
                raise WindowError(f"two time ranges in one period ('{word}'): separate periods "
                                  "with ';', like 'Sat 01:00-03:00; Sun 04:00-06:00'")
            minutes = _times(word)
        elif _is_zone_word(word) and not _looks_like_days(word):
            where = "after the days and times" if last_chunk else "once, at the very end"
            raise WindowError(f"the time zone '{word}' must come {where} (it applies to every "
                              "period)")
        else:
            parsed = _days(word, is_last=last_chunk and word == words[-1])
            if minutes is not None:
                raise WindowError(f"the days '{word}' come after the time range: days come "
                                  f"first, {_EXAMPLE}")
            if days is not None:
                raise WindowError(f"the days '{word}' follow other days: join days with commas, "
                                  "like 'Sat,Sun'")
            days = parsed
    start, end = minutes if minutes is not None else (0, MINUTES_PER_DAY)
    return Period(ALL_DAYS if days is None else days, start, end)


def _looks_like_days(word: str) -> bool:
    return all(_day(item) is not None for item in re.split(r"[,-]", word))


def _days(word: str, is_last: bool) -> frozenset[int]:
    if word.lower() in ("daily", "*"):
        return ALL_DAYS
    days: set[int] = set()
    for item in word.split(","):
        if not item:
            raise WindowError(f"an empty day in '{word}': list days like 'Sat,Sun'")
        ends = item.split("-")
        if len(ends) > 2 or not all(ends):
            raise WindowError(f"'{item}' is not a day range: write ranges like 'Mon-Fri'")
        numbers = []
        for name in ends:
            number = _day(name)
            if number is None:
                raise WindowError(_not_a_day(name, word, is_last))
            numbers.append(number)
        first, last = numbers[0], numbers[-1]
        days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
    return frozenset(days)


def _not_a_day(name: str, word: str, is_last: bool) -> str:
    if is_last and word == name and word.lower() not in ("daily", "*"):
        return (f"'{name}' is neither a day ({', '.join(DAY_NAMES)}) nor a known time zone "
                "(like Europe/Berlin)")
    return f"'{name}' is not a day: use {', '.join(DAY_NAMES)} (or daily)"


def _day(name: str) -> int | None:
    lowered = name.lower()
    for number, full in enumerate(_FULL_DAY_NAMES):
        if lowered in (full, full[:3]):
            return number
    return None


def _times(word: str) -> tuple[int, int]:
    parts = word.split("-")
    if len(parts) != 2 or not all(parts):
        raise WindowError(f"'{word}' is not a time range: write HH:MM-HH:MM, like 02:00-04:00")
    start = _minute(parts[0], word, may_be_midnight_end=False)
    end = _minute(parts[1], word, may_be_midnight_end=True)
    if start == end:
        raise WindowError(f"'{word}' is empty (it starts when it ends): use 00:00-24:00 or "
                          "days alone for whole days")
    if end == 0:
        end = MINUTES_PER_DAY  # "22:00-00:00" ends at midnight, like "22:00-24:00"
    return start, end


def _minute(text: str, word: str, may_be_midnight_end: bool) -> int:
    match = _TIME.fullmatch(text)
    if not match:
        raise WindowError(f"'{text}' in '{word}' is not a time: write HH:MM, like 02:00")
    hour, minute = int(match[1]), int(match[2])
    if minute > 59:
        raise WindowError(f"'{text}' in '{word}' is not a time: minutes go from 00 to 59")
    if hour == 24 and minute == 0 and may_be_midnight_end:
        return MINUTES_PER_DAY
    if hour > 23:
        raise WindowError(f"'{text}' in '{word}' is not a time: hours go from 00 to 23 "
                          "(24:00 only as an end)")
    return hour * 60 + minute


def _format_minute(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _format_days(days: frozenset[int]) -> str:
    if days == ALL_DAYS:
        return "daily"
    runs: list[list[int]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    items = []
    for run in runs:
        if len(run) >= 3:
            items.append(f"{DAY_NAMES[run[0]]}-{DAY_NAMES[run[-1]]}")
        else:
            items.extend(DAY_NAMES[d] for d in run)
    return ",".join(items)


# ---- time zones -----------------------------------------------------------------------------

def _is_zone_word(word: str) -> bool:
    """Whether a word can only be meant as a time zone (not a day and not a time)."""
    if ":" in word or _looks_like_days(word) or word.lower() in ("daily", "*"):
        return False
    return "/" in word or _known_zone(word) is not None


def _zone(name: str) -> tzinfo:
    found = _known_zone(name)
    if found is None:
        from zoneinfo import available_timezones

        if not available_timezones():
            raise WindowError(f"no time zone database to look up '{name}' in: install tzdata")
        raise WindowError(f"unknown time zone '{name}': use an IANA name like Europe/Berlin "
                          "(see timedatectl list-timezones)")
    return found


def _known_zone(name: str) -> tzinfo | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def zone_name(zone: tzinfo) -> str | None:
    """The IANA name of a zone, if it has one."""
    key = getattr(zone, "key", None)
    if isinstance(key, str):
        return key
    return "UTC" if zone is UTC else None


def local_zone(root: Path = Path("/")) -> tzinfo:
    """The local time zone of a system root: $TZ (for /), /etc/localtime (a link into a zoneinfo
    directory, or a copy of a zone file), /etc/timezone; UTC when none is set."""
    from zoneinfo import ZoneInfo

    if root == Path("/") and os.environ.get("TZ"):
        found = _known_zone(os.environ["TZ"].removeprefix(":"))
        if found is not None:
            return found
    localtime = root / "etc/localtime"
    if localtime.is_symlink():
        target = os.readlink(localtime)
        if "zoneinfo/" in target:
            found = _known_zone(target.rsplit("zoneinfo/", 1)[1])
            if found is not None:
                return found
    try:
        resolved = _inside(root, localtime)
        with resolved.open("rb") as file:
            return ZoneInfo.from_file(file, key=None)
    except (OSError, ValueError):
        pass
    try:
        name = (root / "etc/timezone").read_text().strip()
    except OSError:
        name = ""
    return (_known_zone(name) if name else None) or UTC


def _inside(root: Path, path: Path) -> Path:
    """Follow the symbolic links of `path` as if `root` were /."""
    for _ in range(40):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    raise OSError(f"too many symbolic links at {path}")
