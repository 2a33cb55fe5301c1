"""Warnings of a valid file: jobs whose :latest pointers alternate between windows."""

from __future__ import annotations

import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from stocksched.jobs import (
    JobSpec,
    LatestClash,
    latest_pointer_clashes,
    load_jobs_file,
)
from tests.jobs_text import GOOD, TODAY, load

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
