"""JobRegistry: reconcile as a minimal diff, atomic record updates, run history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis

from stocksched.model import JobStatus, RunResult, RunStatus, Trigger
from stocksched.registry import JobRegistry, UnknownJobError
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter
from tests.fakes import FakeClock
from tests.helpers import make_spec

T0 = datetime(2026, 3, 2, 10, 2, tzinfo=UTC)
WRITE_COMMANDS = {
    "set",
    "sadd",
    "srem",
    "del",
    "unlink",
    "xadd",
    "multi",
    "exec",
    "expire",
    "hset",
    "setex",
    "psetex",
    "rename",
}


def registry(client: redis.Redis, clock: FakeClock | None = None) -> JobRegistry:
    return JobRegistry(RedisAdapter(client), clock or FakeClock(T0), history_limit=50)


def write_commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if name.removeprefix("cmdstat_") in WRITE_COMMANDS
    }


def result(job_id: str, status: RunStatus, at: datetime, run_id: str = "r1") -> RunResult:
    return RunResult(
        job_id=job_id,
        run_id=run_id,
        trigger=Trigger.SCHEDULE,
        scheduled_for=at,
        started_at=at,
        finished_at=at + timedelta(seconds=2),
        status=status,
        fetched_stocks=["AAA"],
        failed_stocks=["BBB"] if status != "success" else [],
        errors={"BBB": "no data"} if status != "success" else {},
        rows_stored=7,
    )


def test_reconcile_creates_records_and_index(any_redis: redis.Redis) -> None:
    reg = registry(any_redis)
    diff = reg.reconcile([make_spec("a"), make_spec("b", enabled=False)])
    assert sorted(diff.added) == ["a", "b"]
    assert any_redis.smembers(keys.job_index_key()) == {"a", "b"}
    a = reg.get_job("a")
    assert a is not None
    assert a.status == JobStatus.PENDING
    assert a.next_run == datetime(2026, 3, 2, 10, 5, tzinfo=UTC)
    b = reg.get_job("b")
    assert b is not None and b.next_run is None and not b.is_active
    # The original design's field names are in the stored JSON.
    import json

    raw = json.loads(any_redis.get(keys.job_key("a")))  # type: ignore[arg-type]
    assert raw["stock_ids"] == ["AAA", "BBB"]
    assert raw["schedule_time"] == "*/5 * * * *"
    assert raw["is_active"] is True


def test_reconcile_unchanged_file_writes_nothing(real_redis: redis.Redis) -> None:
    reg = registry(real_redis)
    specs = [make_spec(f"job-{i}") for i in range(20)]
    reg.reconcile(specs)
    real_redis.config_resetstat()
    diff = reg.reconcile(specs)
    assert len(diff.unchanged) == 20 and not (diff.added or diff.changed or diff.removed)
    assert write_commands(real_redis) == {}


def test_reconcile_update_keeps_runtime_state(any_redis: redis.Redis) -> None:
    clock = FakeClock(T0)
    reg = registry(any_redis, clock)
    reg.reconcile([make_spec("a")])
    reg.record_run(result("a", RunStatus.SUCCESS, T0))
    reg.set_paused("a", True)
    before = reg.get_job("a")
    assert before is not None
    clock.advance(60)
    diff = reg.reconcile([make_spec("a", tickers=["AAA", "CCC"])])
    assert diff.changed == ["a"]
    after = reg.get_job("a")
    assert after is not None
    assert after.spec.tickers == ("AAA", "CCC")
    assert after.created_at == before.created_at
    assert after.last_run == before.last_run
    assert after.paused is True
    assert after.status == JobStatus.COMPLETED
    assert after.next_run == before.next_run  # timing untouched by a ticker change


def test_reconcile_schedule_change_moves_next_run(any_redis: redis.Redis) -> None:
    reg = registry(any_redis)
    reg.reconcile([make_spec("a")])
    reg.reconcile([make_spec("a", schedule="0 12 * * *")])
    job = reg.get_job("a")
    assert job is not None and job.next_run == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_reconcile_removes_jobs_but_keeps_data_and_history(any_redis: redis.Redis) -> None:
    reg = registry(any_redis)
    reg.reconcile([make_spec("a"), make_spec("b")])
    reg.record_run(result("b", RunStatus.SUCCESS, T0))
    any_redis.set(keys.data_key("scheduled_stock_data", "AAA", "2026-02-20", "2026-03-02"), "[]")
    diff = reg.reconcile([make_spec("a")])
    assert diff.removed == ["b"]
    assert reg.get_job("b") is None
    assert any_redis.smembers(keys.job_index_key()) == {"a"}
    assert any_redis.exists(
        keys.data_key("scheduled_stock_data", "AAA", "2026-02-20", "2026-03-02")
    )
    assert [r.run_id for r in reg.get_runs("b")] == ["r1"]


def test_record_run_updates_record_and_history(any_redis: redis.Redis) -> None:
    reg = registry(any_redis)
    reg.reconcile([make_spec("a")])
    reg.record_run(result("a", RunStatus.PARTIAL_SUCCESS, T0, "r1"))
    reg.record_run(result("a", RunStatus.FAILED, T0 + timedelta(minutes=5), "r2"))
    job = reg.get_job("a")
    assert job is not None
    assert job.status == JobStatus.FAILED
    assert job.last_run == T0 + timedelta(minutes=5, seconds=2)
    assert job.last_result is not None and job.last_result["run_id"] == "r2"
    runs = reg.get_runs("a", limit=10)
    assert [r.run_id for r in runs] == ["r2", "r1"]  # newest first
    assert runs[1].status == RunStatus.PARTIAL_SUCCESS
    assert runs[1].errors == {"BBB": "no data"}
    entry = any_redis.xrevrange(keys.runs_key("a"), count=1)[0][1]
    assert set(entry) >= {
        "run_id",
        "trigger",
        "scheduled_for",
        "started_at",
        "finished_at",
        "duration_s",
        "status",
        "fetched",
        "failed",
        "errors",
    }
    assert entry["started_at"].endswith("+00:00")


def test_history_is_capped(any_redis: redis.Redis) -> None:
    reg = JobRegistry(RedisAdapter(any_redis), FakeClock(T0), history_limit=10)
    reg.reconcile([make_spec("a")])
    for i in range(300):
        reg.add_history(result("a", RunStatus.SUCCESS, T0, f"r{i}"))
    # MAXLEN ~ trims by whole stream nodes (100 entries by default): bounded, not exact.
    assert any_redis.xlen(keys.runs_key("a")) <= 110


def test_update_of_unknown_job_raises(any_redis: redis.Redis) -> None:
    reg = registry(any_redis)
    with pytest.raises(UnknownJobError):
        reg.set_paused("nope", True)


def test_pause_survives_reconcile_and_new_registry(any_redis: redis.Redis) -> None:
    reg = registry(any_redis)
    reg.reconcile([make_spec("a")])
    reg.set_paused("a", True)
    other = registry(any_redis)  # a restarted daemon
    other.reconcile([make_spec("a", tickers=["ZZZ"])])
    job = other.get_job("a")
    assert job is not None and job.paused and not job.is_active


def test_a_late_interrupted_report_does_not_hide_a_newer_run(any_redis: redis.Redis) -> None:
    reg = registry(any_redis)
    reg.reconcile([make_spec("a")])
    reg.record_run(result("a", RunStatus.SUCCESS, T0 + timedelta(minutes=5), "newer"))
    crashed = result("a", RunStatus.INTERRUPTED, T0, "older")
    reg.record_run(crashed)
    job = reg.get_job("a")
    assert job is not None and job.status == JobStatus.COMPLETED
    assert job.last_result is not None and job.last_result["run_id"] == "newer"
    assert [r.run_id for r in reg.get_runs("a")] == ["older", "newer"]  # history has both


def test_job_removed_and_re_added_within_a_day_keeps_its_runtime_state(
    any_redis: redis.Redis,
) -> None:
    """A file saved in halves (or reverted) drops a job for a moment: the tombstone brings
    back its pause, created_at and last results; the spec is the new one."""
    clock = FakeClock(T0)
    reg = registry(any_redis, clock)
    reg.reconcile([make_spec("a"), make_spec("b")])
    reg.record_run(result("b", RunStatus.SUCCESS, T0))
    reg.set_paused("b", True)
    before = reg.get_job("b")
    assert before is not None

    clock.advance(timedelta(minutes=1))
    assert reg.reconcile([make_spec("a")]).removed == ["b"]
    assert reg.get_job("b") is None
    assert "b" not in reg.paused_ids()
    tomb = keys.removed_job_key("b")
    assert any_redis.exists(tomb)
    assert 0 < int(any_redis.ttl(tomb)) <= 24 * 3600

    clock.advance(timedelta(minutes=1))
    diff = reg.reconcile([make_spec("a"), make_spec("b", tickers=["ZZZ"])])
    assert diff.added == ["b"]
    job = reg.get_job("b")
    assert job is not None
    assert job.paused and not job.is_active
    assert "b" in reg.paused_ids()
    assert job.created_at == before.created_at
    assert (job.last_run, job.last_success, job.last_result, job.status) == (
        before.last_run,
        before.last_success,
        before.last_result,
        before.status,
    )
    assert job.spec.tickers == ("ZZZ",)
    assert [r.run_id for r in reg.get_runs("b")] == ["r1"]
    assert not any_redis.exists(tomb)  # used once
    assert reg.job_runtimes()["b"].last_run == before.last_run.timestamp()  # type: ignore[union-attr]


def test_job_added_without_a_tombstone_starts_fresh(any_redis: redis.Redis) -> None:
    clock = FakeClock(T0)
    reg = registry(any_redis, clock)
    reg.reconcile([make_spec("a")])
    reg.set_paused("a", True)
    reg.reconcile([])
    any_redis.delete(keys.removed_job_key("a"))  # expired after a day
    clock.advance(timedelta(days=2))
    reg.reconcile([make_spec("a")])
    job = reg.get_job("a")
    assert job is not None and not job.paused and job.created_at == clock.now()
    assert "a" not in reg.paused_ids()


def test_stored_record_is_the_sorted_dump_of_its_fields(any_redis: redis.Redis) -> None:
    """The record JSON splices in the spec's own JSON instead of dumping it again; the
    bytes are what ``json.dumps(to_dict() minus the runtime fields, sort_keys=True)``
    writes, so readers of the documented layout (and older versions) read it unchanged."""
    import json

    from stocksched.model import RUNTIME_FIELDS

    specs = [
        make_spec("plain"),
        make_spec("dated", name='Dé "q"', start="2024-01-02", end="2024-02-01", ttl="1h30m"),
        make_spec("windowed", window="7d", prefix="p:x", enabled=False),
    ]
    reg = registry(any_redis)
    reg.reconcile(specs)
    reg.set_paused("plain", True)
    for spec in specs:
        job = reg.get_job(spec.id)
        assert job is not None
        expected = {k: v for k, v in job.to_dict().items() if k not in RUNTIME_FIELDS}
        assert job.record_json() == json.dumps(expected, sort_keys=True)
        assert any_redis.get(keys.job_key(spec.id)) == job.record_json()
