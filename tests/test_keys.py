"""Every key builder pins the exact key text: consumers outside stocksched read these keys."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stocksched import runids
from stocksched.storage import keys

SLOT = datetime(2026, 3, 10, 14, 30, tzinfo=UTC)


def test_job_key_is_the_original_designs_record_key_with_the_job_as_hash_tag() -> None:
    assert keys.job_key("daily-tech") == "scheduler:job:{daily-tech}"


def test_job_index_key_is_the_original_designs_index() -> None:
    assert keys.job_index_key() == "scheduler:job_index"


def test_runs_key_is_per_job() -> None:
    assert keys.runs_key("daily-tech") == "scheduler:runs:{daily-tech}"
    assert keys.runs_key("a") != keys.runs_key("b")


def test_data_key_is_the_original_designs_window_key() -> None:
    key = keys.data_key("scheduled_stock_data", "AAPL", "2025-09-21", "2025-10-21")
    assert key == "scheduled_stock_data:AAPL:2025-09-21:2025-10-21"


def test_latest_key_sits_beside_the_windows_of_its_ticker() -> None:
    assert keys.latest_key("scheduled_stock_data", "AAPL") == "scheduled_stock_data:AAPL:latest"
    window = keys.data_key("scheduled_stock_data", "AAPL", "2025-09-21", "2025-10-21")
    # one SCAN pattern finds a ticker's windows and its pointer
    assert window.startswith("scheduled_stock_data:AAPL:")
    assert keys.latest_key("scheduled_stock_data", "AAPL").startswith("scheduled_stock_data:AAPL:")


def test_daily_keys_name_no_interval() -> None:
    """``1d`` keeps the original design's keys, whether the interval is given or not."""
    assert (
        keys.data_key("scheduled_stock_data", "AAPL", "2025-09-21", "2025-10-21", interval="1d")
        == "scheduled_stock_data:AAPL:2025-09-21:2025-10-21"
    )
    assert (
        keys.latest_key("scheduled_stock_data", "AAPL", interval="1d")
        == "scheduled_stock_data:AAPL:latest"
    )


@pytest.mark.parametrize("interval", ["1m", "2m", "5m", "15m", "30m", "60m", "90m", "1h"])
def test_intraday_keys_put_the_interval_after_the_ticker(interval: str) -> None:
    assert (
        keys.data_key("scheduled_stock_data", "AAPL", "2025-10-14", "2025-10-21", interval=interval)
        == f"scheduled_stock_data:AAPL:{interval}:2025-10-14:2025-10-21"
    )
    assert (
        keys.latest_key("scheduled_stock_data", "AAPL", interval=interval)
        == f"scheduled_stock_data:AAPL:{interval}:latest"
    )


def test_pinned_interval_keys() -> None:
    assert keys.data_key("p", "AAPL", "2025-10-14", "2025-10-21", interval="1h") == (
        "p:AAPL:1h:2025-10-14:2025-10-21"
    )
    assert keys.latest_key("p", "AAPL", interval="1h") == "p:AAPL:1h:latest"
    assert keys.data_key("p", "SPY", "2024-01-01", "2025-01-01", interval="1wk") == (
        "p:SPY:1wk:2024-01-01:2025-01-01"
    )
    assert keys.latest_key("p", "SPY", interval="5d") == "p:SPY:5d:latest"
    assert keys.latest_key("p", "SPY", interval="1mo") == "p:SPY:1mo:latest"
    assert keys.latest_key("a:nested", "SPY", interval="3mo") == "a:nested:SPY:3mo:latest"


def test_intervals_never_share_a_window_or_pointer() -> None:
    intervals = [
        "1m",
        "2m",
        "5m",
        "15m",
        "30m",
        "60m",
        "90m",
        "1h",
        "1d",
        "5d",
        "1wk",
        "1mo",
        "3mo",
    ]
    windows = {keys.data_key("p", "T", "2025-01-01", "2025-01-31", interval=i) for i in intervals}
    pointers = {keys.latest_key("p", "T", interval=i) for i in intervals}
    assert len(windows) == len(pointers) == len(intervals)
    assert not windows & pointers


def test_data_key_window_parses_only_its_own_interval() -> None:
    daily = keys.data_key("a:nested", "AAPL", "2025-09-21", "2025-10-21")
    hourly = keys.data_key("a:nested", "AAPL", "2025-10-14", "2025-10-21", interval="1h")
    assert keys.data_key_window(daily, "a:nested", "AAPL") == ("2025-09-21", "2025-10-21")
    assert keys.data_key_window(hourly, "a:nested", "AAPL", interval="1h") == (
        "2025-10-14",
        "2025-10-21",
    )
    assert keys.data_key_window(hourly, "a:nested", "AAPL") is None  # not a daily window
    assert keys.data_key_window(daily, "a:nested", "AAPL", interval="1h") is None
    assert keys.data_key_window(daily, "a:nested", "MSFT") is None
    assert keys.data_key_window(keys.latest_key("a:nested", "AAPL"), "a:nested", "AAPL") is None
    assert keys.data_key_window("a:nested:AAPL:x:", "a:nested", "AAPL") is None


@pytest.mark.parametrize(
    "key",
    [
        keys.job_key("x"),
        keys.job_index_key(),
        keys.runs_key("x"),
        keys.data_key("p", "T", "2025-01-01", "2025-01-31"),
        keys.latest_key("p", "T"),
        keys.data_key("p", "T", "2025-01-01", "2025-01-31", interval="1h"),
        keys.latest_key("p", "T", interval="1h"),
    ],
)
def test_no_key_has_empty_segments(key: str) -> None:
    """Guards against the drift rq had (a stray double colon in one key but not its sibling)."""
    assert "::" not in key
    assert not key.startswith(":")
    assert not key.endswith(":")


def test_scheduler_keys_share_one_namespace() -> None:
    for key in (keys.job_key("x"), keys.job_index_key(), keys.runs_key("x")):
        assert key.startswith("scheduler:")
    assert keys.job_key("x").startswith(keys.JOB_PREFIX)
    assert keys.runs_key("x").startswith(keys.RUNS_PREFIX)
    assert keys.job_index_key() == keys.JOB_INDEX


def test_ratelimit_key_is_shared_per_source_name() -> None:
    assert keys.ratelimit_key("yahoo") == "scheduler:ratelimit:yahoo"
    assert keys.ratelimit_key("yahoo") != keys.ratelimit_key("demo")
    assert "::" not in keys.ratelimit_key("yahoo")


def test_coordination_keys_pin_their_text() -> None:
    assert keys.slot_key("daily-tech:1741617000000") == "scheduler:slot:{daily-tech}:1741617000000"
    assert keys.running_key("daily-tech") == "scheduler:running:{daily-tech}"
    assert keys.inflight_key("daily-tech") == "scheduler:inflight:{daily-tech}"
    assert keys.inflight_index_key() == "scheduler:inflight_index"
    assert keys.replica_key("host-1") == "scheduler:replica:host-1"
    assert keys.replica_index_key() == "scheduler:replica_index"


def test_coordination_keys_are_well_formed_and_distinct() -> None:
    built = [
        keys.slot_key("j:1"),
        keys.running_key("j"),
        keys.inflight_key("j"),
        keys.inflight_index_key(),
        keys.replica_key("r"),
        keys.replica_index_key(),
    ]
    assert len(set(built)) == len(built)
    for key in built:
        assert key.startswith("scheduler:")
        assert "::" not in key and not key.endswith(":")
    # the index keys never match the SCAN pattern of their records
    assert not keys.inflight_index_key().startswith(keys.INFLIGHT_PREFIX)
    assert not keys.replica_index_key().startswith(keys.REPLICA_PREFIX)


def test_removed_job_key_is_a_per_job_tombstone_kept_a_day() -> None:
    assert keys.removed_job_key("daily-tech") == "scheduler:removed:{daily-tech}"
    assert keys.removed_job_key("a") != keys.job_key("a")
    assert keys.REMOVED_TTL_S == 86400


def _hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first ``{`` and the next ``}``."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key if start < 0 or end <= start + 1 else key[start + 1 : end]


def test_every_key_one_run_touches_is_in_its_jobs_hash_slot() -> None:
    """A claim, a record, a creation each run as one script on a Redis Cluster only if
    their keys share one slot: the job id is every per-job key's hash tag."""
    job_id = "daily-tech"
    run_ids = [
        runids.scheduled_run_id(job_id, SLOT),
        runids.manual_run_id(job_id, SLOT),
        runids.repeat_run_id(job_id, SLOT, SLOT),
        runids.rerun_run_id(runids.scheduled_run_id(job_id, SLOT)),
    ]
    per_job = [
        keys.job_key(job_id),
        keys.job_state_key(job_id),
        keys.runs_key(job_id),
        keys.running_key(job_id),
        keys.inflight_key(job_id),
        keys.removed_job_key(job_id),
        *(keys.slot_key(r) for r in run_ids),
    ]
    assert {_hash_tag(k) for k in per_job} == {job_id}
    assert keys.job_tag(job_id) == "{daily-tech}"


def test_global_keys_have_no_hash_tag_and_a_tickers_series_keys_share_one() -> None:
    global_keys = [
        keys.job_index_key(),
        keys.paused_index_key(),
        keys.job_runtime_key(),
        keys.inflight_index_key(),
        keys.replica_index_key(),
        keys.series_index_key(),
    ]
    assert all("{" not in k for k in global_keys)
    parts = {_hash_tag(keys.series_key("p", "AAPL", "1d", part)) for part in keys.SERIES_PARTS}
    assert parts == {"AAPL"}
    # the consumer-facing window keys keep their text: no tag
    assert "{" not in keys.data_key("p", "AAPL", "2025-01-01", "2025-02-01")
    assert "{" not in keys.latest_key("p", "AAPL")
