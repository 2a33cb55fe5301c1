"""jobs.yaml loading: a good file round-trips; every kind of error is reported, all at once,
as FILE:LINE:COL: path: message pointing at the offending value."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from stocksched.jobs import (
    MAX_FILE_BYTES,
    JobsFileError,
    load_jobs_file,
)
from tests.jobs_text import GOOD, TODAY, errors_of, load, load_jobs_text

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
            "overlap, timeout, retries, retry_backoff, jitter, calendar, revise, windows, "
            "fanout)",
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
    with pytest.raises(JobsFileError) as info:
        load_jobs_file(path)
    (message,) = info.value.errors
    message = message.replace(str(path), "jobs.yaml")
    assert message.startswith(expected), message
    assert "\n" not in message and "Traceback" not in message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(JobsFileError) as info:
        load_jobs_file(tmp_path / "nope.yaml")
    assert info.value.errors == [f"{tmp_path / 'nope.yaml'}: file not found"]
    with pytest.raises(JobsFileError) as info:
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
        except JobsFileError as exc:
            result.append(exc.errors)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the loader blocked on a FIFO"
    assert result == [[f"{fifo}: not a regular file (a FIFO)"]]


def test_device_through_a_symlink_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "jobs.yaml"
    link.symlink_to("/dev/null")
    with pytest.raises(JobsFileError) as info:
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

    monkeypatch.setattr("stocksched.jobs.loader.os.open", swap_then_open)
    result: list[list[str]] = []

    def load() -> None:
        try:
            load_jobs_file(path)
        except JobsFileError as exc:
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
    with pytest.raises(JobsFileError) as info:
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


# ------------------------------------------------------------------ speed


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
