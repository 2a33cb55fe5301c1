"""One rule for times shown to operators (issue 8, item 10).

The API and the logs give UTC with an explicit offset (``2026-03-02T10:05:00+00:00``); the
CLI tables give UTC and say so (``2026-03-02 10:05:00 UTC``). A job's own zone shows only
where a person reads its schedule (its ``timezone`` field, the validate preview).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import redis

from stocksched.cli.output import fmt_time, format_jobs, format_runs
from stocksched.clock import iso_utc, to_utc
from stocksched.views import JobView, RunView
from tests.fakes import FakeClock
from tests.helpers import Rig, make_spec

NY = ZoneInfo("America/New_York")
T0 = datetime(2026, 3, 2, 10, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("dt", "text"),
    [
        (datetime(2026, 3, 2, 5, 5, tzinfo=NY), "2026-03-02T10:05:00+00:00"),
        (datetime(2026, 7, 1, 17, 0, tzinfo=NY), "2026-07-01T21:00:00+00:00"),  # EDT
        (datetime(2026, 3, 2, 10, 5, tzinfo=UTC), "2026-03-02T10:05:00+00:00"),
        (
            datetime(2026, 3, 2, 11, 5, tzinfo=timezone(timedelta(hours=1))),
            "2026-03-02T10:05:00+00:00",
        ),
        (datetime(2026, 3, 2, 10, 5), "2026-03-02T10:05:00+00:00"),  # naive: taken as UTC
        (datetime(2026, 3, 2, 10, 5, 0, 250000, tzinfo=UTC), "2026-03-02T10:05:00.250000+00:00"),
    ],
)
def test_iso_utc(dt: datetime, text: str) -> None:
    assert iso_utc(dt) == text
    assert to_utc(dt).utcoffset() == timedelta(0)


def test_iso_utc_of_nothing_and_with_timespec() -> None:
    assert iso_utc(None) == "-"
    assert iso_utc(datetime(2026, 3, 2, 5, 5, 7, 9, tzinfo=NY), "seconds") == (
        "2026-03-02T10:05:07+00:00"
    )


def test_views_hold_and_serialise_utc_whatever_zone_they_are_given() -> None:
    slot = datetime(2026, 3, 2, 17, 0, tzinfo=NY)
    run = RunView(
        run_id="a:1",
        job_id="a",
        trigger="schedule",
        status="success",
        scheduled_for=slot,
        started_at=slot,
        finished_at=slot + timedelta(seconds=3),
        duration_s=3.0,
        fetched=["AAA"],
        failed=[],
        errors={},
        rows_stored=1,
    )
    assert run.scheduled_for is not None and run.scheduled_for.tzinfo == UTC
    assert run.scheduled_for == slot  # the same instant
    body = run.model_dump(mode="json")
    assert body["scheduled_for"] == body["started_at"] == "2026-03-02T22:00:00+00:00"
    assert body["finished_at"] == "2026-03-02T22:00:03+00:00"  # not pydantic's "Z"
    # The documented schema still says what the strings are.
    prop = JobView.model_json_schema(mode="serialization")["properties"]["created_at"]
    assert prop == {"format": "date-time", "title": "Created At", "type": "string"}


@pytest.mark.parametrize(
    "value",
    ["2026-03-02T10:05:00+00:00", "2026-03-02T10:05:00Z", "2026-03-02T05:05:00-05:00"],
)
def test_cli_tables_show_utc_and_say_so(value: str) -> None:
    assert fmt_time(value) == "2026-03-02 10:05:00 UTC"


def test_every_table_uses_the_same_utc_cells() -> None:
    job = {
        "job_id": "ny",
        "enabled": True,
        "running": False,
        "status": "completed",
        "schedule": "0 17 * * 1-5",
        "timezone": "America/New_York",
        "tickers": ["AAA"],
        "last_run": "2026-03-02T22:00:03+00:00",
        "last_result": {"status": "success"},
        "next_run": "2026-03-03T17:00:00-05:00",
    }
    jobs = format_jobs([job])
    assert "2026-03-02 22:00:03 UTC" in jobs and "2026-03-03 22:00:00 UTC" in jobs
    assert "America/New_York" in jobs  # the schedule's zone stays in its own column
    run = {
        "run_id": "ny:1",
        "trigger": "schedule",
        "status": "success",
        "started_at": "2026-03-02T17:00:00-05:00",
        "duration_s": 3.0,
        "fetched": ["AAA"],
        "failed": [],
        "rows_stored": 5,
    }
    assert "2026-03-02 22:00:00 UTC" in format_runs([run])


def test_scheduler_log_messages_print_slots_in_utc(
    fake_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A New York job's catch-up after downtime: the slots in the log are UTC."""
    spec = make_spec(
        "a", schedule="*/10 * * * *", timezone="America/New_York", catchup="1h", tickers=["AAA"]
    )
    first = Rig(fake_redis, FakeClock(T0))
    first.load(spec)  # persisted next_run = 10:10 UTC (05:10 in New York)
    first.scheduler.stop(1)
    restarted = Rig(fake_redis, FakeClock(T0 + timedelta(minutes=33)))  # up again at 10:35
    caplog.set_level(logging.INFO, logger="stocksched.scheduling")
    try:
        restarted.load(spec)
        restarted.scheduler.tick()
        restarted.settle()
    finally:
        restarted.scheduler.stop(1)
    messages = [
        r.getMessage() for r in caplog.records if r.name.startswith("stocksched.scheduling.")
    ]
    assert "catching up job=a slot=2026-03-02T10:30:00+00:00 (missed while down)" in messages
    missed = "job=a missed 2 slot(s) from 2026-03-02T10:10:00+00:00 to 2026-03-02T10:20:00+00:00"
    assert any(m.startswith(missed) for m in messages), messages
    assert not any("-05:00" in m for m in messages), messages
