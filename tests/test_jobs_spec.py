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
