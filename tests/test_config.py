"""jobs.yaml loading: a good file round-trips; every kind of error is reported, all at once,
as FILE:LINE:COL: path: message pointing at the offending value."""

from __future__ import annotations

import hashlib
import json
import os
import re
import textwrap
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import stocksched.config as config_module
from stocksched.config import (
    MAX_FILE_BYTES,
    ConfigError,
    JobsFile,
    JobSpec,
    LatestClash,
    LoadedJobs,
    jobs_file_json_schema,
    latest_pointer_clashes,
    load_jobs_file,
    load_jobs_text,
)

TODAY = date(2026, 1, 15)

GOOD = """\
version: 1
defaults:
  timezone: America/New_York
  window: 30d
  ttl: 400d
jobs:
  - id: daily-tech
    name: Daily Tech Stocks
    tickers: [AAPL, msft, BRK-B, ON]
    schedule: "0 17 * * 1-5"
  - id: fixed-range
    tickers: [^GSPC, EURUSD=X, 7203.T]
    schedule: 17:30
    start: 2025-01-01
    end: 2025-06-30
    timezone: UTC
    ttl: null
    retries: 3
    retry_backoff: 2s
    timeout: 5m
    jitter: 30s
    catchup: 0
    overlap: queue
    calendar: XNYS
  - id: demo-every
    tickers: [DEMO]
    schedule: "@every 90s"
    source: demo
    enabled: no
    prefix: "demo:bars"
    window: 2w
"""


def load(text: str, today: date = TODAY) -> LoadedJobs:
    return load_jobs_text(textwrap.dedent(text), "jobs.yaml", today=today)


def errors_of(text: str, today: date = TODAY) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, today)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# ------------------------------------------------------------------ a good file


def test_good_file_loads_with_defaults_merged(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(GOOD, encoding="utf-8")
    loaded = load_jobs_file(path, today=TODAY)
    assert loaded.path == path
    assert loaded.sha256 == hashlib.sha256(GOOD.encode()).hexdigest()
    tech, fixed, demo = loaded.jobs
    assert [j.id for j in loaded.jobs] == ["daily-tech", "fixed-range", "demo-every"]

    assert tech.tickers == ("AAPL", "MSFT", "BRK-B", "ON")  # ON is a ticker, not YAML's true
    assert tech.timezone == "America/New_York" and tech.window == timedelta(days=30)
    assert tech.ttl == timedelta(days=400) and tech.display_name == "Daily Tech Stocks"
    assert (tech.catchup, tech.overlap, tech.retries) == (timedelta(hours=1), "skip", 0)
    assert (tech.retry_backoff, tech.jitter, tech.timeout) == (
        timedelta(seconds=1),
        timedelta(0),
        None,
    )

    # start/end in the job replace the default window; null clears the default ttl
    assert (fixed.window, fixed.start, fixed.end) == (None, date(2025, 1, 1), date(2025, 6, 30))
    assert fixed.ttl is None and fixed.timezone == "UTC"
    assert fixed.schedule == "17:30"  # unquoted HH:MM stays text (YAML 1.1 would give 1050)
    assert (fixed.retries, fixed.retry_backoff, fixed.timeout) == (
        3,
        timedelta(seconds=2),
        timedelta(minutes=5),
    )
    assert (fixed.catchup, fixed.overlap, fixed.calendar) == (timedelta(0), "queue", "XNYS")
    assert fixed.display_name == "fixed-range"

    assert demo.enabled is False and demo.source == "demo" and demo.window == timedelta(weeks=2)
    assert demo.prefix == "demo:bars"


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


def test_jobs_file_model_merges_defaults() -> None:
    jf = JobsFile.model_validate(
        {
            "defaults": {"timezone": "Europe/London"},
            "jobs": [{"id": "a", "tickers": ["x"], "schedule": "@daily"}],
        }
    )
    assert jf.jobs[0].timezone == "Europe/London" and jf.jobs[0].tickers == ("X",)


def test_empty_job_list_is_valid() -> None:
    assert load("jobs: []\n").jobs == ()


# ------------------------------------------------------------------ errors inside a job

JOB = """\
version: 1
jobs:
  - id: a
    tickers: [AAPL]
    schedule: "@daily"
"""


def job_with(*lines: str) -> str:
    """JOB plus extra lines for its job; the first extra line is line 6 of the file."""
    return JOB + "".join(f"    {line}\n" for line in lines)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            ["timezone: Mars/Olympus"],
            "jobs.yaml:6:15: jobs[0].timezone: unknown time zone 'Mars/Olympus': use an IANA name "
            "such as America/New_York or UTC",
        ),
        (
            ["window: 10x"],
            "jobs.yaml:6:13: jobs[0].window: invalid duration '10x': expected a number and a unit "
            "(w, d, h, m, s, ms), e.g. '90s', '1h30m', '30d', '500ms'",
        ),
        (
            ["window: 36h"],
            "jobs.yaml:6:13: jobs[0].window: window must be a positive whole number of days "
            "(e.g. 30d), got 1d12h",
        ),
        (
            ["start: 2025-06-01", "end: 2025-01-01"],
            "jobs.yaml:7:10: jobs[0].end: end 2025-01-01 is before start 2025-06-01",
        ),
        (["end: 2025-01-01"], "jobs.yaml:6:10: jobs[0].end: end needs a start date"),
        (
            ["window: 10d", "start: 2025-01-01"],
            "jobs.yaml:6:13: jobs[0].window: give either window or start/end dates, not both",
        ),
        (
            ["start: 2025-02-30"],
            "jobs.yaml:6:12: jobs[0].start: must be a date written YYYY-MM-DD, got '2025-02-30'",
        ),
        (
            ["start: 2026-02-01"],
            "jobs.yaml:6:12: jobs[0].start: start 2026-02-01 is in the future (today is 2026-01-15)",
        ),
        (
            ["interval: 2h"],
            "jobs.yaml:6:15: jobs[0].interval: must be one of '1m', '2m', '5m', '15m', '30m', '60m', "
            "'90m', '1h', '1d', '5d', '1wk', '1mo' or '3mo', got '2h'",
        ),
        (
            ["interval: 1m", "window: 8d"],
            "jobs.yaml:7:13: jobs[0].window: window 8d is too long for interval 1m: Yahoo serves "
            "1m bars for the last 7 days only",
        ),
        (
            ["interval: 5m", "window: 61d"],
            "jobs.yaml:7:13: jobs[0].window: window 61d is too long for interval 5m: Yahoo serves "
            "5m bars for the last 60 days only",
        ),
        (
            ["interval: 1h", "window: 731d"],
            "jobs.yaml:7:13: jobs[0].window: window 731d is too long for interval 1h: Yahoo serves "
            "1h bars for the last 730 days only",
        ),
        # exactly at the limit starts before Yahoo's cut-off (now minus the limit)
        (
            ["interval: 5m", "window: 60d"],
            "jobs.yaml:7:13: jobs[0].window: window 60d is too long for interval 5m: Yahoo serves "
            "5m bars for the last 60 days only",
        ),
        (
            ["interval: 1h", "window: 730d"],
            "jobs.yaml:7:13: jobs[0].window: window 730d is too long for interval 1h: Yahoo serves "
            "1h bars for the last 730 days only",
        ),
        (
            ["interval: 1m", "start: 2026-01-01"],
            "jobs.yaml:7:12: jobs[0].start: start 2026-01-01 is 14 days ago: Yahoo serves 1m bars "
            "for the last 7 days only",
        ),
        (
            ["source: demo", "interval: 1h"],
            "jobs.yaml:6:13: jobs[0].source: source demo makes daily bars only; use interval 1d, "
            "not 1h",
        ),
        (
            ["source: csv"],
            "jobs.yaml:6:13: jobs[0].source: must be one of 'yahoo' or 'demo', got 'csv'",
        ),
        (
            ['prefix: "my prefix"'],
            "jobs.yaml:6:13: jobs[0].prefix: prefix must be non-empty with no whitespace, "
            "got 'my prefix'",
        ),
        (["ttl: 0"], "jobs.yaml:6:10: jobs[0].ttl: must be longer than 0 (leave it out for none)"),
        (
            ["timeout: -1m"],
            "jobs.yaml:6:14: jobs[0].timeout: duration '-1m' is negative; durations must be >= 0",
        ),
        (
            ["catchup: soon"],
            "jobs.yaml:6:14: jobs[0].catchup: invalid duration 'soon': expected a number and a unit "
            "(w, d, h, m, s, ms), e.g. '90s', '1h30m', '30d', '500ms'",
        ),
        (["retries: 11"], "jobs.yaml:6:14: jobs[0].retries: must be at most 10, got 11"),
        (["retries: -1"], "jobs.yaml:6:14: jobs[0].retries: must be at least 0, got -1"),
        (['retries: "3"'], "jobs.yaml:6:14: jobs[0].retries: must be a whole number, got '3'"),
        (
            ["retry_backoff: [1s]"],
            "jobs.yaml:6:20: jobs[0].retry_backoff: must be a duration like '90s' or '1h30m', "
            "got a list",
        ),
        (
            ["overlap: wait"],
            "jobs.yaml:6:14: jobs[0].overlap: must be one of 'skip' or 'queue', got 'wait'",
        ),
        (["enabled: maybe"], "jobs.yaml:6:14: jobs[0].enabled: must be true or false, got 'maybe'"),
        (['name: ""'], "jobs.yaml:6:11: jobs[0].name: must not be empty"),
        (
            ["calendar: XNYZ"],
            "jobs.yaml:6:15: jobs[0].calendar: unknown exchange calendar 'XNYZ' (did you mean ",
        ),
        (
            ["colour: red"],
            "jobs.yaml:6:5: jobs[0].colour: unknown field 'colour' (allowed: id, name, tickers, "
            "schedule, timezone, window, start, end, interval, enabled, prefix, source, ttl, catchup, "
            "overlap, timeout, retries, retry_backoff, jitter, calendar)",
        ),
        (
            ["tmezone: UTC"],
            "jobs.yaml:6:5: jobs[0].tmezone: unknown field 'tmezone' (did you mean 'timezone'?)",
        ),
    ],
)
def test_job_field_errors(lines: list[str], expected: str) -> None:
    errors = errors_of(job_with(*lines))
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors[0]


def test_unknown_calendar_suggests_close_codes() -> None:
    (error,) = errors_of(job_with("calendar: XNYZ"))
    assert "XNYS" in error


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        (
            'schedule: "@daily"',
            'schedule: "61 * * * *"',
            "jobs.yaml:5:15: jobs[0].schedule: invalid cron expression '61 * * * *': "
            "[61 * * * *] is not acceptable, out of range",
        ),
        (
            'schedule: "@daily"',
            'schedule: "0 0 30 2 *"',
            "jobs.yaml:5:15: jobs[0].schedule: schedule '0 0 30 2 *' never fires (no matching date "
            "within 9 years)",
        ),
        (
            'schedule: "@daily"',
            "schedule: 25:00",
            "jobs.yaml:5:15: jobs[0].schedule: invalid time '25:00': HH:MM must be between 00:00 "
            "and 23:59",
        ),
        (
            'schedule: "@daily"',
            "schedule: 1730",
            "jobs.yaml:5:15: jobs[0].schedule: schedule must be a string; quote it, e.g. "
            '"0 17 * * 1-5" (got 1730)',
        ),
        (
            'schedule: "@daily"',
            'schedule: "@every 0s"',
            "jobs.yaml:5:15: jobs[0].schedule: invalid @every schedule '@every 0s': the interval "
            "must be at least 1s",
        ),
        (
            'schedule: "@daily"',
            'schedule: ""',
            "jobs.yaml:5:15: jobs[0].schedule: schedule is empty",
        ),
        (
            "  - id: a",
            "  - id: Daily_Tech",
            "jobs.yaml:3:9: jobs[0].id: invalid id 'Daily_Tech': use 1-64 characters a-z 0-9 _ - "
            "starting with a letter or digit",
        ),
        ("  - id: a", "  - id: 2024", "jobs.yaml:3:9: jobs[0].id: must be a string, got 2024"),
        (
            "tickers: [AAPL]",
            'tickers: [AAPL, "B@D"]',
            "jobs.yaml:4:21: jobs[0].tickers[1]: invalid ticker 'B@D': Yahoo symbols are 1-20 "
            "letters, digits and . - = (optionally starting with ^), e.g. AAPL, BRK-B, ^GSPC, "
            "EURUSD=X",
        ),
        (
            "tickers: [AAPL]",
            "tickers: [AAPL, msft, aapl]",
            "jobs.yaml:4:14: jobs[0].tickers: duplicate ticker(s): AAPL",
        ),
        (
            "tickers: [AAPL]",
            "tickers: []",
            "jobs.yaml:4:14: jobs[0].tickers: at least one ticker is required",
        ),
        (
            "tickers: [AAPL]",
            "tickers: AAPL",
            "jobs.yaml:4:14: jobs[0].tickers: must be a list, got 'AAPL'",
        ),
        (
            '    schedule: "@daily"\n',
            "",
            "jobs.yaml:3:5: jobs[0].schedule: required field is missing",
        ),
    ],
)
def test_errors_in_required_fields(replace: str, by: str, expected: str) -> None:
    assert replace in JOB
    errors = errors_of(JOB.replace(replace, by))
    assert errors == [expected]


def test_all_errors_are_reported_together_in_file_order() -> None:
    text = """\
    version: 1
    defaults:
      timezone: America/New_Yrok
      window: 90d
    jobs:
      - id: one
        tickers: [AAPL]
        schedule: "61 * * * *"
        interval: 5m
      - id: two
        tickers: []
        schedule: "@daily"
        timezone: UTC
        start: 2025-06-01
        end: 2025-01-01
      - id: one
        tickers: [MSFT]
        schedule: "@hourly"
        timezone: UTC
        retries: 99
        sched: oops
      - just text
      - tickers: [X]
        schedule: "@daily"
        timezone: UTC
    """
    assert errors_of(text) == [
        "jobs.yaml:3:13: defaults.timezone: unknown time zone 'America/New_Yrok': use an IANA "
        "name such as America/New_York or UTC",
        "jobs.yaml:4:11: jobs[0].window: window 90d is too long for interval 5m: Yahoo serves 5m "
        "bars for the last 60 days only (value from defaults)",
        "jobs.yaml:8:15: jobs[0].schedule: invalid cron expression '61 * * * *': [61 * * * *] is "
        "not acceptable, out of range",
        "jobs.yaml:11:14: jobs[1].tickers: at least one ticker is required",
        "jobs.yaml:15:10: jobs[1].end: end 2025-01-01 is before start 2025-06-01",
        "jobs.yaml:16:9: jobs[2].id: duplicate id 'one' (first used by jobs[0] on line 6)",
        "jobs.yaml:20:14: jobs[2].retries: must be at most 10, got 99",
        "jobs.yaml:21:5: jobs[2].sched: unknown field 'sched' (did you mean 'schedule'?)",
        "jobs.yaml:22:5: jobs[3]: each job must be a mapping of fields, got 'just text'",
        "jobs.yaml:23:5: jobs[4].id: required field is missing",
    ]


def test_bad_default_is_reported_once_at_the_defaults_entry() -> None:
    text = """\
    defaults:
      ttl: forever
    jobs:
      - {id: a, tickers: [A], schedule: "@daily"}
      - {id: b, tickers: [B], schedule: "@daily"}
      - {id: c, tickers: [C], schedule: "@daily", ttl: 1d}
    """
    errors = errors_of(text)
    assert errors == [
        "jobs.yaml:2:8: defaults.ttl: invalid duration 'forever': expected a "
        "number and a unit (w, d, h, m, s, ms), e.g. '90s', '1h30m', '30d', '500ms'"
    ]


def test_default_window_does_not_clash_with_job_dates() -> None:
    text = """\
    defaults: {window: 30d, interval: 1d}
    jobs:
      - {id: a, tickers: [A], schedule: "@daily", start: 2025-01-01}
      - {id: b, tickers: [B], schedule: "@daily"}
    """
    a, b = load(text).jobs
    assert (a.window, a.start) == (None, date(2025, 1, 1))
    assert (b.window, b.start) == (timedelta(days=30), None)


def test_job_values_override_defaults() -> None:
    text = """\
    defaults: {timezone: Europe/London, interval: 1wk, retries: 2, tickers: [SPY]}
    jobs:
      - {id: a, schedule: "@daily"}
      - {id: b, schedule: "@daily", timezone: UTC, retries: 0, tickers: [QQQ]}
    """
    a, b = load(text).jobs
    assert (a.timezone, a.interval, a.retries, a.tickers) == ("Europe/London", "1wk", 2, ("SPY",))
    assert (b.timezone, b.interval, b.retries, b.tickers) == ("UTC", "1wk", 0, ("QQQ",))


def test_duplicate_yaml_keys_are_errors() -> None:
    text = JOB + "    tickers: [MSFT]\n"
    assert errors_of(text) == ["jobs.yaml:6:5: duplicate key 'tickers' (first on line 4)"]


def test_yaml_merge_keys_work() -> None:
    text = """\
    jobs:
      - &base {id: a, tickers: [A], schedule: "@daily", timezone: Asia/Tokyo}
      - <<: *base
        id: b
    """
    _, b = load(text).jobs
    assert (b.id, b.timezone, b.tickers) == ("b", "Asia/Tokyo", ("A",))


# ------------------------------------------------------------------ top-level errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "jobs: []\nversion: 2\n",
            "jobs.yaml:2:10: version: unsupported version 2; this stocksched reads version 1",
        ),
        (
            "jobs: []\nextra: 1\n",
            "jobs.yaml:2:1: extra: unknown field 'extra' (allowed: version, defaults, jobs)",
        ),
        (
            "version: 1\n",
            "jobs.yaml:1:1: jobs: required key is missing (write 'jobs: []' for no jobs)",
        ),
        ("jobs:\n", "jobs.yaml:1:6: jobs: must be a list of jobs, got nothing (null)"),
        ("jobs: {id: a}\n", "jobs.yaml:1:7: jobs: must be a list of jobs, got a mapping"),
        (
            "defaults: [1]\njobs: []\n",
            "jobs.yaml:1:11: defaults: must be a mapping of job fields, got a list",
        ),
        (
            "defaults: {id: x}\njobs: []\n",
            "jobs.yaml:1:12: defaults.id: id cannot have a default; every job needs its own",
        ),
        (
            "defaults:\n  scheduel: '@daily'\njobs: []\n",
            "jobs.yaml:2:3: defaults.scheduel: unknown field 'scheduel' (did you mean 'schedule'?)",
        ),
    ],
)
def test_top_level_errors(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "jobs.yaml: file is empty; it needs at least 'jobs:'"),
        (b"# only a comment\n\n", "jobs.yaml: file is empty; it needs at least 'jobs:'"),
        (
            b"- a\n- b\n",
            "jobs.yaml:1:1: the top level must be a mapping with a 'jobs' list, got a list",
        ),
        (
            b"just text\n",
            "jobs.yaml:1:1: the top level must be a mapping with a 'jobs' list, got 'just text'",
        ),
        (b"jobs: [\n  - id: a\n", "jobs.yaml:2:3: invalid YAML: "),
        (b"jobs:\n  - id: a\n   bad: indent\n", "jobs.yaml:3:4: invalid YAML: "),
        (
            b"jobs: []\nname: \xff\xfe\n",
            "jobs.yaml:2:7: not valid UTF-8 (byte 0xff); save the file as UTF-8",
        ),
        (b"jobs: !!python/object:os.system []\n", "jobs.yaml:1:7: invalid YAML: "),
        (b"a: 1\n---\nb: 2\n", "jobs.yaml:2:1: invalid YAML: "),
    ],
)
def test_file_level_errors(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_jobs_file(path)
    (message,) = info.value.errors
    message = message.replace(str(path), "jobs.yaml")
    assert message.startswith(expected), message
    assert "\n" not in message and "Traceback" not in message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_jobs_file(tmp_path / "nope.yaml")
    assert info.value.errors == [f"{tmp_path / 'nope.yaml'}: file not found"]
    with pytest.raises(ConfigError) as info:
        load_jobs_file(tmp_path)
    assert info.value.errors == [f"{tmp_path}: not a regular file (a directory)"]


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO with no writer would block an open() for ever; the loader never opens it."""
    fifo = tmp_path / "jobs.yaml"
    os.mkfifo(fifo)
    result: list[list[str]] = []

    def load() -> None:
        try:
            load_jobs_file(fifo)
        except ConfigError as exc:
            result.append(exc.errors)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the loader blocked on a FIFO"
    assert result == [[f"{fifo}: not a regular file (a FIFO)"]]


def test_device_through_a_symlink_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "jobs.yaml"
    link.symlink_to("/dev/null")
    with pytest.raises(ConfigError) as info:
        load_jobs_file(link)
    assert info.value.errors == [f"{link}: not a regular file (a character device)"]


def test_symlink_to_a_regular_file_still_loads(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_text("version: 1\njobs: []\n", encoding="utf-8")
    link = tmp_path / "jobs.yaml"
    link.symlink_to(real)
    assert load_jobs_file(link).jobs == ()


def test_fifo_swapped_in_after_the_stat_is_caught_on_the_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race between the type check and the open: a file replaced by a FIFO just after
    ``stat`` is opened non-blocking and refused by ``fstat`` on the open descriptor."""
    path = tmp_path / "jobs.yaml"
    path.write_text("version: 1\njobs: []\n", encoding="utf-8")
    real_open = os.open

    def swap_then_open(p: Any, flags: int, *args: Any) -> int:
        if os.fspath(p) == str(path):
            os.unlink(path)
            os.mkfifo(path)
        return real_open(p, flags, *args)

    monkeypatch.setattr(config_module.os, "open", swap_then_open)
    result: list[list[str]] = []

    def load() -> None:
        try:
            load_jobs_file(path)
        except ConfigError as exc:
            result.append(exc.errors)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the open blocked on a FIFO"
    assert result == [[f"{path}: not a regular file (a FIFO)"]]


def test_oversized_file_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as fh:  # sparse: no 5 MB written to disk, and never parsed
        fh.truncate(MAX_FILE_BYTES + 1)

    def no_reading(*_a: object, **_k: object) -> None:
        raise AssertionError("the oversized file was opened")

    monkeypatch.setattr(Path, "open", no_reading)
    with pytest.raises(ConfigError) as info:
        load_jobs_file(path)
    assert info.value.errors == [
        f"{path}: file is {MAX_FILE_BYTES + 1} bytes; the limit is {MAX_FILE_BYTES} bytes (5 MB)"
    ]


def test_pydantic_wording_never_leaks() -> None:
    errors = errors_of(job_with("retries: x", "enabled: []", "start: soon", "interval: 7m"))
    assert len(errors) == 4
    for line in errors:
        assert re.match(r"^jobs\.yaml:\d+:\d+: jobs\[0\]\.\w+: ", line), line
        assert "Input should" not in line and "Value error" not in line
        assert "errors.pydantic.dev" not in line and "\n" not in line


# ------------------------------------------------------------------ schema and speed


def test_json_schema_describes_the_file_as_written() -> None:
    schema = jobs_file_json_schema()
    json.dumps(schema)  # serialisable for `stocksched schema`
    assert schema["required"] == ["jobs"] and schema["additionalProperties"] is False
    job = schema["properties"]["jobs"]["items"]
    assert job["required"] == ["id"] and job["additionalProperties"] is False
    props = job["properties"]
    window = props["window"]["anyOf"][0]
    assert {"type": "string", "pattern": window["anyOf"][0]["pattern"]} == window["anyOf"][0]
    pattern = re.compile(window["anyOf"][0]["pattern"])
    assert pattern.match("30d") and pattern.match("1h30m") and not pattern.match("30x")
    assert set(props["interval"]["enum"]) >= {"1m", "1h", "1d", "3mo"}
    assert props["catchup"]["default"] == "1h"
    defaults = schema["properties"]["defaults"]
    assert "id" not in defaults["properties"] and "timezone" in defaults["properties"]


def test_ten_thousand_jobs_load_in_seconds() -> None:
    lines = ["defaults:", "  timezone: America/New_York", "jobs:"]
    for i in range(10_000):
        lines += [
            f"  - id: job-{i}",
            f"    tickers: [AAPL, MSFT, T{i}]",
            f'    schedule: "{i % 60} {i // 60 % 24} * * {i % 7}"',
            "    ttl: 30d",
        ]
    text = "\n".join(lines) + "\n"
    t0 = time.perf_counter()
    loaded = load_jobs_text(text, "big.yaml", today=TODAY)
    elapsed = time.perf_counter() - t0
    assert len(loaded.jobs) == 10_000
    assert elapsed < 15, f"loading 10,000 jobs took {elapsed:.1f}s"


# ------------------------------------------------------------------ warnings: :latest clashes

CLASH = """\
version: 1
defaults:
  window: 30d
jobs:
  - id: a
    tickers: [AAPL, MSFT, NVDA, AMZN, GOOG]
    schedule: "@daily"
    prefix: p
  - id: b
    tickers: [TSLA, GOOG, AAPL, AMZN, MSFT, NVDA]
    schedule: "@hourly"
    prefix: p
    window: 10d
"""
CLASH_LINE = (
    "jobs.yaml:9:5: jobs[1]: job 'b' writes GOOG, AAPL (+3 more) with interval 1d under "
    "prefix 'p' like jobs[0] (id 'a' on line 5) but with a different window (window 10d, "
    "not window 30d): their :latest pointers will alternate between the two windows"
)


def test_two_windows_on_one_pointer_give_one_warning_per_pair() -> None:
    loaded = load(CLASH)
    assert [j.id for j in loaded.jobs] == ["a", "b"]  # valid: a warning, not an error
    assert loaded.warnings == (CLASH_LINE,)


def test_the_warning_lists_few_shared_tickers_in_full() -> None:
    text = CLASH.replace("[TSLA, GOOG, AAPL, AMZN, MSFT, NVDA]", "[MSFT, TSLA, AAPL, NVDA]")
    (line,) = load(text).warnings
    assert " writes MSFT, AAPL, NVDA with interval 1d " in line
    (line,) = load(text.replace("[MSFT, TSLA, AAPL, NVDA]", "[TSLA, AAPL]")).warnings
    assert " writes AAPL with interval 1d " in line


@pytest.mark.parametrize(
    "change",
    [
        ("    window: 10d\n", ""),  # the same window: the same key, rewritten
        ("    window: 10d\n", "    window: 30d\n"),
        ("    window: 10d\n", "    window: 10d\n    interval: 1h\n"),  # other keys
        ("    prefix: p\n    window: 10d\n", "    prefix: q\n    window: 10d\n"),
        ("[TSLA, GOOG, AAPL, AMZN, MSFT, NVDA]", "[TSLA, META]"),  # no ticker in common
        # a backfill that ended before today never takes the pointer from a rolling window
        ("    window: 10d\n", "    start: 2025-01-01\n    end: 2025-06-30\n"),
    ],
    ids=["same-default", "same-explicit", "interval", "prefix", "tickers", "backfill"],
)
def test_no_warning_when_the_pointers_do_not_fight(change: tuple[str, str]) -> None:
    assert load(CLASH.replace(*change)).warnings == ()


@pytest.mark.parametrize(
    ("window", "described"),
    [
        ("    start: 2025-06-01\n", "start 2025-06-01"),  # ends today, like window 30d
        ("    start: 2025-12-01\n    end: 2026-01-15\n", "2025-12-01..2026-01-15"),  # today
        ("    start: 2025-12-01\n    end: 2026-03-31\n", "2025-12-01..2026-03-31"),  # ahead
    ],
)
def test_windows_that_can_end_on_the_same_day_fight(window: str, described: str) -> None:
    (line,) = load(CLASH.replace("    window: 10d\n", window)).warnings
    assert f"different window ({described}, not window 30d)" in line


def test_fixed_windows_fight_only_with_the_same_end() -> None:
    text = """\
    version: 1
    jobs:
      - {id: a, tickers: [AAPL], schedule: "@daily", start: 2025-01-01, end: 2025-06-30}
      - {id: b, tickers: [AAPL], schedule: "@daily", start: 2025-03-01, end: 2025-06-30}
      - {id: c, tickers: [AAPL], schedule: "@daily", start: 2025-03-01, end: 2025-05-31}
    """
    assert load(text).warnings == (
        "jobs.yaml:4:5: jobs[1]: job 'b' writes AAPL with interval 1d under prefix "
        "'scheduled_stock_data' like jobs[0] (id 'a' on line 3) but with a different window "
        "(2025-03-01..2025-06-30, not 2025-01-01..2025-06-30): their :latest pointers will "
        "alternate between the two windows",
    )


def test_every_fighting_pair_is_reported_in_file_order() -> None:
    text = """\
    version: 1
    defaults: {tickers: [AAPL, MSFT], schedule: "@daily", interval: 1h}
    jobs:
      - {id: a, window: 5d}
      - {id: b, window: 5d}
      - {id: c, window: 3d}
      - {id: d, window: 3d, prefix: other}
    """
    lines = load(text).warnings
    assert [line.split(": ", 2)[1] for line in lines] == ["jobs[2]", "jobs[2]"]
    assert "like jobs[0] (id 'a' on line 4)" in lines[0]
    assert "like jobs[1] (id 'b' on line 5)" in lines[1]
    assert all(line.startswith("jobs.yaml:6:5: ") for line in lines)
    assert all(" with interval 1h " in line for line in lines)


def test_good_file_and_repo_file_have_no_warnings() -> None:
    assert load(GOOD).warnings == ()
    repo = Path(__file__).resolve().parents[1] / "jobs.yaml"
    assert load_jobs_file(repo).warnings == ()


def test_latest_pointer_clashes_is_a_pure_function_of_the_specs() -> None:
    def spec(job_id: str, tickers: list[str], **kw: object) -> JobSpec:
        return JobSpec.model_validate(
            {"id": job_id, "tickers": tickers, "schedule": "@daily", **kw}
        )

    jobs = [
        spec("a", ["AAPL", "MSFT"]),
        spec("b", ["MSFT", "AAPL", "X"], window="10d"),
        spec("c", ["AAPL"], start="2020-01-01", end="2020-12-31"),
    ]
    # without a date, a fixed end is assumed not to be past yet
    assert latest_pointer_clashes(jobs) == [
        LatestClash(0, 1, ("MSFT", "AAPL")),
        LatestClash(0, 2, ("AAPL",)),
        LatestClash(1, 2, ("AAPL",)),
    ]
    assert latest_pointer_clashes(jobs, today=TODAY) == [LatestClash(0, 1, ("MSFT", "AAPL"))]
    assert latest_pointer_clashes([]) == []


def test_clash_detection_stays_fast_for_big_files() -> None:
    """Jobs are compared window against window: many jobs sharing a window, or many
    backfills next to a rolling job, must not cost a comparison per pair of jobs."""
    tickers = [f"T{i}" for i in range(500)]
    jobs = [
        JobSpec.model_validate({"id": f"j{i}", "tickers": tickers, "schedule": "@daily"})
        for i in range(300)
    ]
    jobs += [
        JobSpec.model_validate(
            {
                "id": f"back{i}",
                "tickers": tickers,
                "schedule": "@daily",
                "start": date(2020, 1, 1) + timedelta(days=i),
                "end": date(2020, 1, 1) + timedelta(days=i),
            }
        )
        for i in range(300)
    ]
    t0 = time.perf_counter()
    assert latest_pointer_clashes(jobs, today=TODAY) == []
    assert time.perf_counter() - t0 < 2
