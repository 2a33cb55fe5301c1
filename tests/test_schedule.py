"""Schedule parsing and fire times: a table of (expression, zone, after) -> next slot.

Expected values were worked out by hand from the calendar (2026-01-01 is a Thursday;
US DST 2026: Mar 8 02:00 -> 03:00, Nov 1 02:00 -> 01:00; UK: Mar 29 01:00 -> 02:00,
Oct 25 02:00 -> 01:00), not copied from the code's output.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from stocksched.schedule import ScheduleError, parse_schedule

NY = ZoneInfo("America/New_York")
LON = ZoneInfo("Europe/London")
Z = ZoneInfo("UTC")


def at(text: str) -> datetime:
    """An aware datetime from ISO text with its offset (offsets make DST cases unambiguous)."""
    t = datetime.fromisoformat(text)
    assert t.tzinfo is not None
    return t


NEXT_TABLE = [
    # plain cron, in the job's zone; strictly after
    ("0 17 * * 1-5", NY, "2026-01-09T17:00:00-05:00", "2026-01-12T17:00:00-05:00"),  # Fri->Mon
    ("0 17 * * 1-5", NY, "2026-01-12T16:59:59-05:00", "2026-01-12T17:00:00-05:00"),
    ("*/15 * * * *", Z, "2026-01-01T00:07:00+00:00", "2026-01-01T00:15:00+00:00"),
    ("*/15 * * * *", Z, "2026-01-01T00:15:00+00:00", "2026-01-01T00:30:00+00:00"),
    ("* * * * *", Z, "2026-01-01T00:00:00.500000+00:00", "2026-01-01T00:01:00+00:00"),
    ("0 9 * * *", NY, "2026-07-01T12:00:00+00:00", "2026-07-01T09:00:00-04:00"),  # after in UTC
    ("0 0 * * mon-fri", Z, "2026-01-02T12:00:00+00:00", "2026-01-05T00:00:00+00:00"),
    ("0 0 L * *", Z, "2026-02-01T00:00:00+00:00", "2026-02-28T00:00:00+00:00"),
    ("0 0 * * 5-7", Z, "2026-01-03T12:00:00+00:00", "2026-01-04T00:00:00+00:00"),  # 7 = Sunday
    # six fields: leading seconds
    ("*/20 * * * * *", Z, "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:20+00:00"),
    ("30 0 12 * * *", Z, "2026-01-01T00:00:00+00:00", "2026-01-01T12:00:30+00:00"),
    ("5 * * * * *", Z, "2026-01-01T00:00:05+00:00", "2026-01-01T00:01:05+00:00"),
    # macros
    ("@hourly", NY, "2026-01-01T10:20:00-05:00", "2026-01-01T11:00:00-05:00"),
    ("@daily", NY, "2026-01-01T10:20:00-05:00", "2026-01-02T00:00:00-05:00"),
    ("@midnight", NY, "2026-01-01T10:20:00-05:00", "2026-01-02T00:00:00-05:00"),
    ("@weekly", Z, "2026-01-01T10:20:00+00:00", "2026-01-04T00:00:00+00:00"),  # Sunday
    ("@monthly", Z, "2026-01-15T00:00:00+00:00", "2026-02-01T00:00:00+00:00"),
    ("@yearly", Z, "2026-01-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"),
    ("@annually", Z, "2026-06-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"),
    # @every: slot k = epoch + k * interval (1767225600 = 2026-01-01Z is 2677614.5 * 660)
    ("@every 11m", Z, "2026-01-01T00:00:00+00:00", "2026-01-01T00:05:00+00:00"),
    ("@every 11m", NY, "2025-12-31T19:00:00-05:00", "2025-12-31T19:05:00-05:00"),
    ("@every 90s", Z, "2026-01-01T00:00:00+00:00", "2026-01-01T00:01:30+00:00"),
    ("@every 1h30m", Z, "2026-01-01T00:00:00+00:00", "2026-01-01T01:30:00+00:00"),
    ("@every 1h", NY, "2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00"),  # real hour
    # HH:MM shorthand
    ("17:30", Z, "2026-01-01T18:00:00+00:00", "2026-01-02T17:30:00+00:00"),
    ("00:00", NY, "2026-01-01T12:00:00-05:00", "2026-01-02T00:00:00-05:00"),
    ("9:05", Z, "2026-01-01T00:00:00+00:00", "2026-01-01T09:05:00+00:00"),
    # DST spring forward, fixed hour: the nonexistent 02:30 runs once at 03:00 EDT
    ("30 2 * * *", NY, "2026-03-07T12:00:00-05:00", "2026-03-08T03:00:00-04:00"),
    ("30 2 * * *", NY, "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"),
    ("30 1 * * *", LON, "2026-03-28T12:00:00+00:00", "2026-03-29T02:00:00+01:00"),
    # DST spring forward, every hour: no slot inside the gap, real-time cadence kept
    ("30 * * * *", NY, "2026-03-08T01:30:00-05:00", "2026-03-08T03:30:00-04:00"),
    # DST fall back, fixed hour: only the first 01:30 runs
    ("30 1 * * *", NY, "2026-10-31T12:00:00-04:00", "2026-11-01T01:30:00-04:00"),
    ("30 1 * * *", NY, "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"),
    ("30 1 * * *", NY, "2026-11-01T01:10:00-05:00", "2026-11-02T01:30:00-05:00"),
    ("30 1 * * *", LON, "2026-10-25T01:30:00+01:00", "2026-10-26T01:30:00+00:00"),
    # DST fall back, every hour: both copies of the repeated hour run
    ("*/30 * * * *", NY, "2026-11-01T01:30:00-04:00", "2026-11-01T01:00:00-05:00"),
    ("*/30 * * * *", NY, "2026-11-01T01:00:00-05:00", "2026-11-01T01:30:00-05:00"),
    ("0 * * * *", LON, "2026-10-25T01:00:00+01:00", "2026-10-25T01:00:00+00:00"),
    # UTC has no transitions
    ("30 2 * * *", Z, "2026-03-07T12:00:00+00:00", "2026-03-08T02:30:00+00:00"),
    ("30 1 * * *", Z, "2026-11-01T01:30:00+00:00", "2026-11-02T01:30:00+00:00"),
]


@pytest.mark.parametrize(("expr", "tz", "after", "expected"), NEXT_TABLE)
def test_next_after_table(expr: str, tz: ZoneInfo, after: str, expected: str) -> None:
    got = parse_schedule(expr).next_after(at(after), tz)
    assert got.astimezone(UTC) == at(expected).astimezone(UTC)
    assert got.utcoffset() == at(expected).utcoffset()  # reported in the job's zone
    assert got.tzinfo is tz


def fires(expr: str, tz: ZoneInfo, after: str, n: int) -> list[str]:
    out, t, sched = [], at(after), parse_schedule(expr)
    for _ in range(n):
        t = sched.next_after(t, tz)
        out.append(t.isoformat())
    return out


def test_fall_back_night_fixed_hour_runs_once() -> None:
    assert fires("30 1 * * *", NY, "2026-10-30T12:00:00-04:00", 3) == [
        "2026-10-31T01:30:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]


def test_fall_back_night_hourly_keeps_every_real_hour() -> None:
    assert fires("0 * * * *", NY, "2026-10-31T23:30:00-04:00", 5) == [
        "2026-11-01T00:00:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T02:00:00-05:00",
        "2026-11-01T03:00:00-05:00",
    ]


def test_spring_forward_night_fixed_hour_runs_once() -> None:
    assert fires("30 2 * * *", NY, "2026-03-06T12:00:00-05:00", 3) == [
        "2026-03-07T02:30:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]


def test_every_is_the_same_instant_in_every_zone() -> None:
    after = at("2026-03-08T06:59:00+00:00")
    got = {parse_schedule("@every 1h").next_after(after, tz).astimezone(UTC) for tz in (NY, LON, Z)}
    assert got == {at("2026-03-08T07:00:00+00:00")}


def test_seconds_and_macros_equal_their_cron() -> None:
    after = at("2026-05-05T05:05:05+00:00")
    assert parse_schedule("@daily").next_after(after, NY) == parse_schedule("0 0 * * *").next_after(
        after, NY
    )
    assert parse_schedule("0 30 17 * * *").next_after(after, Z) == parse_schedule(
        "17:30"
    ).next_after(after, Z)


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("* * *", "expected 5 fields"),
        ("* * * * * * 2026", "got 7 field"),
        ("61 * * * *", "out of range"),
        ("0 24 * * *", "out of range"),
        ("0 0 1 13 *", "out of range"),
        ("0 0 * * 8", "out of range"),
        ("a b c d e", "invalid cron"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("@reboot", "unknown macro"),
        ("@every", "needs a duration"),
        ("@every 0s", "at least 1s"),
        ("@every 500ms", "at least 1s"),
        ("@every soon", "invalid duration"),
        ("24:00", "between 00:00 and 23:59"),
        ("12:60", "between 00:00 and 23:59"),
        ("1:2", "HH:MM"),
    ],
)
def test_invalid_schedules_are_rejected(expr: str, fragment: str) -> None:
    with pytest.raises(ScheduleError, match=fragment):
        parse_schedule(expr)


def test_schedule_error_is_a_value_error() -> None:
    # pydantic turns ValueErrors raised in validators into field errors.
    assert issubclass(ScheduleError, ValueError)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_schedule("@daily").next_after(datetime(2026, 1, 1), Z)
    with pytest.raises(ValueError, match="aware"):
        parse_schedule("@every 1m").next_after(datetime(2026, 1, 1), Z)


PREV_TABLE = [
    ("0 17 * * 1-5", NY, "2026-01-12T17:00:00-05:00", "2026-01-12T17:00:00-05:00"),  # itself
    ("0 17 * * 1-5", NY, "2026-01-12T16:59:00-05:00", "2026-01-09T17:00:00-05:00"),
    ("30 1 * * *", NY, "2026-11-01T03:00:00-05:00", "2026-11-01T01:30:00-04:00"),  # first copy
    ("30 2 * * *", NY, "2026-03-08T04:00:00-04:00", "2026-03-08T03:00:00-04:00"),
    ("*/30 * * * *", NY, "2026-11-01T01:10:00-05:00", "2026-11-01T01:00:00-05:00"),
    ("@every 11m", Z, "2026-01-01T00:05:00+00:00", "2026-01-01T00:05:00+00:00"),
    ("@every 11m", Z, "2026-01-01T00:04:59+00:00", "2025-12-31T23:54:00+00:00"),
    ("*/20 * * * * *", Z, "2026-01-01T00:00:59+00:00", "2026-01-01T00:00:40+00:00"),
]


@pytest.mark.parametrize(("expr", "tz", "t", "expected"), PREV_TABLE)
def test_prev_at_or_before_table(expr: str, tz: ZoneInfo, t: str, expected: str) -> None:
    got = parse_schedule(expr).prev_at_or_before(at(t), tz)
    assert got is not None
    assert got.astimezone(UTC) == at(expected).astimezone(UTC)


@pytest.mark.parametrize(
    ("expr", "tz"),
    [
        ("30 1 * * *", NY),
        ("30 2 * * *", NY),
        ("*/30 * * * *", NY),
        ("0 * * * *", LON),
        ("45 1 * * *", LON),
        ("@every 7m", NY),
        ("0 17 * * 1-5", NY),
    ],
)
@pytest.mark.parametrize("day", ["2026-03-08", "2026-03-29", "2026-10-25", "2026-11-01"])
def test_prev_and_next_agree_across_transitions(expr: str, tz: ZoneInfo, day: str) -> None:
    """prev_at_or_before(t) is the last slot next_after would yield up to t: catch-up and the
    scheduler see the same slots."""
    sched = parse_schedule(expr)
    t = at(f"{day}T00:00:00+00:00")
    for _ in range(60):  # every 23 minutes for about a day around the transition
        p = sched.prev_at_or_before(t, tz)
        assert p is not None
        assert p.astimezone(UTC) <= t.astimezone(UTC)
        assert sched.next_after(p, tz).astimezone(UTC) > t.astimezone(UTC)
        # (UTC arithmetic: Python adds timedeltas to aware datetimes in wall-clock time.)
        just_before = p.astimezone(UTC) - timedelta(microseconds=1)
        assert sched.next_after(just_before, tz).astimezone(UTC) == p.astimezone(UTC)
        t += timedelta(minutes=23)


def test_slots_between_is_half_open_and_keeps_repeated_hour() -> None:
    got = list(
        parse_schedule("*/30 * * * *").slots_between(
            at("2026-11-01T00:00:00-04:00"), at("2026-11-01T03:00:00-05:00"), NY
        )
    )
    assert [s.isoformat() for s in got] == [
        "2026-11-01T00:30:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T01:30:00-05:00",
        "2026-11-01T02:00:00-05:00",
        "2026-11-01T02:30:00-05:00",
        "2026-11-01T03:00:00-05:00",
    ]


def test_slots_between_downtime_and_limit() -> None:
    sched = parse_schedule("*/15 * * * *")
    a, b = at("2026-01-01T10:00:00+00:00"), at("2026-01-01T13:00:00+00:00")
    slots = list(sched.slots_between(a, b, Z))
    assert len(slots) == 12
    assert slots[0] == at("2026-01-01T10:15:00+00:00") and slots[-1] == b
    assert len(list(sched.slots_between(a, b, Z, limit=5))) == 5
    assert list(sched.slots_between(b, a, Z)) == []


def test_parsing_is_cached() -> None:
    assert parse_schedule("7 7 * * *") is parse_schedule("7 7 * * *")


def test_shared_schedule_is_thread_safe() -> None:
    sched = parse_schedule("*/7 * * * *")
    starts = [at("2026-11-01T00:00:00-04:00") + timedelta(minutes=i) for i in range(200)]
    expected = [sched.next_after(s, NY) for s in starts]
    results: dict[int, list[datetime]] = {}

    def work(k: int) -> None:
        results[k] = [sched.next_after(s, NY) for s in starts]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(r == expected for r in results.values())


def test_ten_thousand_jobs_next_fire_quickly() -> None:
    exprs = [f"{i % 60} {i // 60 % 24} * * {i % 7}" for i in range(10_000)]
    now = at("2026-06-01T12:00:00+00:00")
    t0 = time.perf_counter()
    for e in exprs:
        parse_schedule(e).next_after(now, NY)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"10,000 next-fire computations took {elapsed:.2f}s"
