"""The reload fast path (issue 11.3): unchanged jobs are reused, the result and every
error are exactly what the full parse gives, and Redis sees only what changed."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
import redis

from stocksched.jobs import JobsFileError, load_jobs_file
from stocksched.jobs.reuse import JobsFileCache, split_jobs
from stocksched.storage import keys
from stocksched.storage.cluster import is_cluster
from tests.test_reload import Rig, jobs_yaml

TODAY = date(2026, 3, 2)
JOBS = [(f"job-{i:02d}", f"{i} 3 * * *") for i in range(20)]


def _load(text: str, cache: JobsFileCache | None) -> object:
    return load_jobs_file("jobs.yaml", data=text.encode(), today=TODAY, cache=cache)


def _errors(text: str, cache: JobsFileCache | None) -> list[str]:
    with pytest.raises(JobsFileError) as exc:
        _load(text, cache)
    return exc.value.errors


def test_one_changed_job_takes_the_fast_path_with_the_full_parse_result() -> None:
    cache = JobsFileCache()
    _load(jobs_yaml(*JOBS), cache)
    changed = [*JOBS[:5], ("job-05", "7 7 * * *"), *JOBS[6:]]
    fast = _load(jobs_yaml(*changed), cache)
    assert (cache.full_loads, cache.fast_loads) == (1, 1)
    assert fast == _load(jobs_yaml(*changed), None)


def test_an_error_in_a_changed_job_is_reported_at_its_exact_position() -> None:
    cache = JobsFileCache()
    _load(jobs_yaml(*JOBS), cache)
    bad = jobs_yaml(*[*JOBS[:7], ("job-07", "61 3 * * *"), *JOBS[8:]])
    errors = _errors(bad, cache)
    assert errors == _errors(bad, None)
    line = bad.splitlines().index('    schedule: "61 3 * * *"') + 1
    assert errors[0].startswith(f"jobs.yaml:{line}:15: jobs[7].schedule: ")


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace("  - id: job-03\n", "  - id: job-02\n"),  # duplicate id
        lambda t: t.replace(
            "    timezone: UTC\n    source: demo\n    window: 10d\n  - id: job-04",
            "    timezone: UTC\n    timezone: UTC\n    source: demo\n"
            "    window: 10d\n  - id: job-04",
        ),  # duplicate key
        lambda t: t.replace('"3 3 * * *"', '"3 3 * * *'),  # quote left open
    ],
)
def test_problems_the_fast_path_cannot_place_fall_back_to_the_full_parse(edit: object) -> None:
    cache = JobsFileCache()
    text = jobs_yaml(*JOBS)
    _load(text, cache)
    bad = edit(text)  # type: ignore[operator]
    assert bad != text
    assert _errors(bad, cache) == _errors(bad, None)
    assert cache.fast_loads == 0


def test_jobs_sharing_an_anchor_are_never_reused_by_text() -> None:
    text = (
        "version: 1\njobs:\n"
        "  - id: a\n    tickers: &t [AAA]\n    schedule: '@daily'\n    source: demo\n"
        "  - id: b\n    tickers: *t\n    schedule: '@daily'\n    source: demo\n"
    )
    cache = JobsFileCache()
    _load(text, cache)
    changed = text.replace("&t [AAA]", "&t [BBB]")
    got = _load(changed, cache)
    assert [j.tickers for j in got.jobs] == [("BBB",), ("BBB",)]  # type: ignore[attr-defined]
    assert cache.fast_loads == 0


def test_split_refuses_layouts_it_cannot_cut_safely() -> None:
    assert split_jobs(jobs_yaml(*JOBS)) is not None
    assert split_jobs("jobs:\n  - id: a\nversion: 1\n") is None  # top-level key after jobs
    assert split_jobs("jobs:\r\n  - id: a\r\n") is None
    assert split_jobs("jobs: []\n") is None


WRITES = ("set", "sadd", "srem", "hset", "hsetnx", "hdel", "del", "xadd")


def _writes(client: redis.Redis, names: tuple[str, ...] = WRITES) -> int:
    """Calls of the write commands since the last ``_reset`` (a cluster's: every master's)."""
    if is_cluster(client):
        per_node = client.info("commandstats", target_nodes="primaries")
        return sum(_calls(stats, names) for stats in per_node.values())
    return _calls(client.info("commandstats"), names)


def _reset(client: redis.Redis) -> None:
    if is_cluster(client):
        client.config_resetstat(target_nodes="primaries")
    else:
        client.config_resetstat()


def _calls(stats: Any, names: tuple[str, ...]) -> int:
    return sum(int(stats.get(f"cmdstat_{n}", {}).get("calls", 0)) for n in names)


def test_one_changed_job_is_one_write_and_an_identical_file_none(
    real_redis: redis.Redis, tmp_path: Path
) -> None:
    rig = Rig(real_redis, tmp_path / "jobs.yaml")
    try:
        rig.path.write_text(jobs_yaml(*JOBS), encoding="utf-8")
        assert rig.reloader.reload().ok
        _reset(real_redis)
        rig.path.write_text(jobs_yaml(*JOBS[:3], ("job-03", "9 9 * * *"), *JOBS[4:]))
        status = rig.reloader.reload()
        assert status.ok and status.diff is not None and status.diff.changed == ["job-03"]
        assert rig.reloader.file_cache.fast_loads == 1
        # One record, in one EXEC: its spec JSON and, as the schedule moved, its next_run.
        assert _writes(real_redis) == 2
        assert _writes(real_redis, ("exec",)) == 1
        rec = rig.registry.get_job("job-03")
        assert rec is not None and rec.spec.schedule == "9 9 * * *"
        assert rig.scheduler.next_runs()["job-03"] == rec.next_run
        _reset(real_redis)
        assert rig.reloader.reload().ok
        assert _writes(real_redis) == 0
    finally:
        rig.close()


def test_a_reconcile_after_redis_lost_everything_restores_every_record(
    real_redis: redis.Redis, tmp_path: Path
) -> None:
    rig = Rig(real_redis, tmp_path / "jobs.yaml")
    try:
        rig.path.write_text(jobs_yaml(*JOBS), encoding="utf-8")
        assert rig.reloader.reload().ok
        rig.registry.set_paused("job-04", True)
        rig.scheduler.sync_paused({"job-04"}, rig.scheduler.pause_epoch())
        real_redis.flushall()
        status = rig.reloader.reload()
        assert status.ok and status.diff is not None and len(status.diff.added) == len(JOBS)
        assert rig.registry.job_ids() == {j for j, _ in JOBS}
        assert real_redis.smembers(keys.paused_index_key()) == {"job-04"}
        rec = rig.registry.get_job("job-04")
        assert rec is not None and rec.paused
    finally:
        rig.close()


def test_a_reload_sees_a_pause_made_through_another_replica_before_the_sync_does(
    real_redis: redis.Redis, tmp_path: Path
) -> None:
    """Records of unchanged jobs are reused from the last reconcile, but not one whose
    pause changed behind this replica's back: the reload reads it and follows the pause,
    and the job changed in the file gets its new spec."""
    rig = Rig(real_redis, tmp_path / "jobs.yaml")
    try:
        rig.path.write_text(jobs_yaml(*JOBS), encoding="utf-8")
        assert rig.reloader.reload().ok
        rig.registry.set_paused("job-07", True)  # another replica's API: no sync ran here
        assert rig.scheduler.known_runtime("job-07") == (False, rig.scheduler.next_runs()["job-07"])
        rig.path.write_text(jobs_yaml(*JOBS[:3], ("job-03", "9 9 * * *"), *JOBS[4:]))
        status = rig.reloader.reload()
        assert status.ok and status.diff is not None and status.diff.changed == ["job-03"]
        held = rig.scheduler.known_runtime("job-07")
        assert held is not None and held[0], "the reload did not follow the pause"
        assert rig.registry.paused_ids() == {"job-07"}
        rec = rig.registry.get_job("job-03")
        assert rec is not None and rec.spec.schedule == "9 9 * * *"
        assert rig.scheduler.next_runs()["job-03"] == rec.next_run
    finally:
        rig.close()
