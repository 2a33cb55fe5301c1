"""JobSpec: values round-trip through JSON, windows, slots, durations, defaults."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import get_args

from stocksched.jobs import (
    INTRADAY_INTERVALS,
    INTRADAY_LIMIT_DAYS,
    Interval,
    JobSpec,
    merge_defaults,
)
from tests.jobs_text import GOOD, TODAY, load


def test_specs_round_trip_through_json() -> None:
    for spec in load(GOOD).jobs:
        data = spec.to_json()
        assert data == spec.model_dump(mode="json")
        assert json.loads(json.dumps(data)) == data
        assert JobSpec.model_validate(data) == spec
    tech = load(GOOD).jobs[0].to_json()
    assert tech["window"] == "30d" and tech["ttl"] == "400d" and tech["catchup"] == "1h"
    assert tech["jitter"] == "0s" and tech["tickers"] == ["AAPL", "MSFT", "BRK-B", "ON"]
    fixed = load(GOOD).jobs[1].to_json()
    assert fixed["start"] == "2025-01-01" and fixed["timeout"] == "5m"


def test_default_window_is_30_days() -> None:
    spec = JobSpec.model_validate({"id": "a", "tickers": ["X"], "schedule": "@daily"})
    assert spec.window == timedelta(days=30)
    assert spec.window_dates(TODAY) == (date(2025, 12, 16), TODAY)


def test_window_dates() -> None:
    tech, fixed, _ = load(GOOD).jobs
    assert tech.window_dates(TODAY) == (TODAY - timedelta(days=30), TODAY)
    assert fixed.window_dates(TODAY) == (date(2025, 1, 1), date(2025, 6, 30))
    open_ended = JobSpec.model_validate(
        {"id": "a", "tickers": ["X"], "schedule": "@daily", "start": "2025-03-01"}
    )
    assert open_ended.window_dates(TODAY) == (date(2025, 3, 1), TODAY)


def test_next_fire_uses_the_job_zone() -> None:
    tech, fixed, demo = load(GOOD).jobs
    after = datetime(2026, 1, 16, 23, 0, tzinfo=UTC)  # Friday 18:00 in New York
    got = tech.next_fire(after)
    assert got.isoformat() == "2026-01-19T17:00:00-05:00"
    assert got.tzinfo == tech.zone
    assert fixed.next_fire(after).isoformat() == "2026-01-17T17:30:00+00:00"
    # @every slots are epoch-anchored: 23:00Z is slot 19651160 of 90 s, so the next is +90 s
    assert demo.next_fire(after) == after + timedelta(seconds=90)


def test_durations_accept_integer_seconds() -> None:
    spec = JobSpec.model_validate(
        {"id": "a", "tickers": ["X"], "schedule": "@daily", "timeout": 90, "jitter": 0}
    )
    assert spec.timeout == timedelta(seconds=90) and spec.to_json()["timeout"] == "1m30s"


def test_stored_spec_is_not_checked_against_today() -> None:
    """A spec in Redis must stay readable as days pass; only loading a file checks dates."""
    data = {
        "id": "a",
        "tickers": ["X"],
        "schedule": "@daily",
        "interval": "1m",
        "start": "2020-01-01",
        "end": "2020-01-02",
    }
    assert JobSpec.model_validate(data).start == date(2020, 1, 1)


def test_defaults_merge_under_a_job() -> None:
    jf = JobSpec.model_validate(
        merge_defaults(
            {"timezone": "Europe/London"},
            {"id": "a", "tickers": ["x"], "schedule": "@daily"},
        )
    )
    assert jf.timezone == "Europe/London" and jf.tickers == ("X",)


def test_one_interval_table() -> None:
    """The intraday intervals (the fetcher's and the history limits) are one table."""
    assert set(INTRADAY_LIMIT_DAYS) <= set(get_args(Interval))
    assert frozenset(INTRADAY_LIMIT_DAYS) == INTRADAY_INTERVALS
    assert {"1m", "90m", "1h"} <= INTRADAY_INTERVALS and "1d" not in INTRADAY_INTERVALS


def test_next_fire_answers_every_later_question_as_a_fresh_schedule_would() -> None:
    """A schedule remembers its last answer; asking again for any later time (across the
    DST changes of 2026 in New York, and with a copy of the job in another zone asking in
    between) gives what a schedule that never answered before gives."""
    from stocksched import schedule as schedule_module

    for expr in ("30 1 * * *", "*/20 * * * *", "0 2 * * 0", "15 9 1,15 * *"):
        ny = JobSpec.model_validate(
            {"id": "a", "tickers": ["X"], "schedule": expr, "timezone": "America/New_York"}
        )
        tokyo = ny.model_copy(update={"timezone": "Asia/Tokyo"})
        t = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
        while t < datetime(2026, 11, 3, tzinfo=UTC):
            fresh = schedule_module._parse_cron(expr, expr)  # a new object: nothing remembered
            assert ny.next_fire(t) == fresh.next_after(t, ny.zone), (expr, t)
            assert tokyo.next_fire(t) == fresh.next_after(t, tokyo.zone), (expr, t)
            t += timedelta(minutes=53) if abs(t.month - 7) > 3 else timedelta(days=3, minutes=7)


def test_to_json_of_a_copy_is_the_copys_own() -> None:
    """``to_json`` is dumped once per spec; a ``model_copy`` with changes never reuses it."""
    spec = load(GOOD).jobs[0]
    assert spec.to_json()["timezone"] != "Asia/Tokyo"
    moved = spec.model_copy(update={"timezone": "Asia/Tokyo"})
    assert moved.to_json() == moved.model_dump(mode="json")
    assert moved.to_json()["timezone"] == "Asia/Tokyo"
    assert spec.to_json() == spec.model_dump(mode="json")


def test_spec_hash_and_json_are_the_sorted_dump_of_the_spec() -> None:
    """The stored record's ``spec`` and its ``spec_hash`` are what earlier versions wrote
    (a changed hash would rewrite every record once after an upgrade)."""
    import hashlib

    for spec in load(GOOD).jobs:
        text = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
        assert spec.canonical_json == text
        assert spec.content_hash == hashlib.sha256(text.encode()).hexdigest()[:16]
        assert list(spec.to_json()) == list(JobSpec.model_fields)  # the field order kept


def test_specs_sharing_their_given_fields_copy_apart() -> None:
    """Specs share one set of given field names; a copy with changes gets its own."""
    a, b = (JobSpec.model_validate({"id": i, "tickers": ["X"], "schedule": "@daily"}) for i in "ab")
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    moved = a.model_copy(update={"timezone": "Asia/Tokyo"})
    assert moved.model_dump(exclude_unset=True)["timezone"] == "Asia/Tokyo"
    assert "timezone" not in b.model_dump(exclude_unset=True)
    assert set(a.model_dump(exclude_unset=True)) == {"id", "tickers", "schedule", "window"}
