"""Hot reload: every way operators change jobs.yaml is seen once, bad files change nothing,
and a reload neither disturbs unchanged jobs nor waits for running ones.

The watcher is real (inotify on a tmp dir); the scheduler is not started, so only the
reloads under test touch Redis. Waits poll with a deadline; "exactly one" is checked by
holding the count over a quiet window several debounce periods long.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis

from stocksched import reload as reload_module
from stocksched.executor import JobExecutor
from stocksched.metrics import Metrics
from stocksched.model import RunStatus
from stocksched.registry import JobRegistry
from stocksched.reload import JobsReloader
from stocksched.sources.demo import DemoFetcher
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, StorageError
from stocksched.storage.butler import DataIOButler
from stocksched.watch import QUIET_MS, JobsWatcher, WatchTargets
from tests.fakes import FakeClock
from tests.helpers import make_scheduler

T0 = datetime(2026, 3, 2, 10, 2, tzinfo=UTC)
DEBOUNCE_MS = 40
QUIET_S = 0.4  # ten debounce periods: a second reload of the same change would show by then


def jobs_yaml(*jobs: tuple[str, str], comment: str = "") -> str:
    """A valid file of demo jobs given as (id, schedule)."""
    lines = ["version: 1", f"# {comment}", "jobs:"]
    for job_id, schedule in jobs:
        lines += [
            f"  - id: {job_id}",
            "    tickers: [AAA]",
            f'    schedule: "{schedule}"',
            "    timezone: UTC",
            "    source: demo",
            "    window: 10d",
        ]
    return "\n".join(lines) + "\n"


BAD = """\
version: 1
jobs:
  - id: a
    tickers: [AAA]
    schedule: "every tuesday"
    source: demo
  - id: b
    tickers: [BBB]
    schedule: "*/5 * * * *"
    source: demo
    colour: red
"""


class GateFetcher(DemoFetcher):
    """Demo bars that wait for the test to open the gate: a run held in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def fetch_from_source(self, ticker: str, start: date, end: date, interval: str) -> pd.DataFrame:
        self.entered.set()
        if not self.gate.wait(20):
            raise TimeoutError("test never opened the gate")
        return super().fetch_from_source(ticker, start, end, interval)


class Rig:
    def __init__(self, client: redis.Redis, path: Path) -> None:
        adapter = RedisAdapter(client)
        self.client = client
        self.path = path
        self.clock = FakeClock(T0)
        self.metrics = Metrics("test")
        self.fetcher = GateFetcher()
        self.registry = JobRegistry(adapter, self.clock)
        executor = JobExecutor(
            {"demo": self.fetcher}, DataIOButler(adapter), self.clock, 2, self.metrics
        )
        self.scheduler = make_scheduler(
            client, self.registry, executor, self.clock, pool_size=2, metrics=self.metrics
        )
        self.reloader = JobsReloader(path, self.registry, self.scheduler, self.clock, self.metrics)
        self.watcher: JobsWatcher | None = None

    def reloads(self, result: str | None = None) -> float:
        results = [result] if result else ["success", "failure"]
        return sum(self.metrics.config_reloads.labels(result=r)._value.get() for r in results)

    def watch(self, debounce_ms: int = DEBOUNCE_MS, **kw: Any) -> JobsWatcher:
        """Start a watcher and wait until its watch is in place (its first content check)."""
        self.watcher = JobsWatcher(self.reloader, debounce_ms, rust_timeout_ms=100, **kw)
        self.watcher.start()
        watcher = self.watcher
        wait_until(lambda: watcher.reload_calls >= 1)
        return watcher

    def close(self) -> None:
        self.fetcher.gate.set()
        if self.watcher is not None:
            self.watcher.stop()
        self.scheduler.stop(2)


def wait_until(pred: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.0f}s")
        time.sleep(0.01)


def one_more_reload(rig: Rig, before: float, result: str) -> None:
    """Exactly one reload follows the change: it arrives, and no second one within QUIET_S."""
    wait_until(lambda: rig.reloads() >= before + 1)
    time.sleep(QUIET_S)
    assert rig.reloads() == before + 1
    assert rig.reloader.last.ok == (result == "success"), rig.reloader.last.errors


def save_like_editor(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.swp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "conf"
    d.mkdir()
    return d


@pytest.fixture
def rig(fake_redis: redis.Redis, conf_dir: Path) -> Iterator[Rig]:
    r = Rig(fake_redis, conf_dir / "jobs.yaml")
    yield r
    r.close()


def loaded(rig: Rig, text: str) -> None:
    rig.path.write_text(text, encoding="utf-8")
    assert rig.reloader.reload().ok


# ---------------------------------------------------------------- every kind of save


def test_editor_save_temp_then_rename_is_one_reload(rig: Rig) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    rig.watch()
    before = rig.reloads()
    save_like_editor(rig.path, jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *")))
    one_more_reload(rig, before, "success")
    assert set(rig.scheduler.next_runs()) == {"a", "b"}
    assert rig.reloader.last.diff is not None and rig.reloader.last.diff.added == ["b"]


def test_in_place_write_is_one_reload(rig: Rig) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *")))
    rig.watch()
    before = rig.reloads()
    with rig.path.open("w", encoding="utf-8") as fh:  # truncate and rewrite the same inode
        fh.write(jobs_yaml(("a", "*/5 * * * *")))
    one_more_reload(rig, before, "success")
    assert set(rig.scheduler.next_runs()) == {"a"}
    assert rig.registry.job_ids() == {"a"}


def write_in_two_halves(path: Path, text: str, pause_s: float) -> None:
    """Truncate and write in place like a slow writer: the first jobs, then the rest later.

    The first half is itself a valid file (it ends after a whole job).
    """
    cut = text.index("  - id: b")
    with path.open("w", encoding="utf-8") as fh:
        fh.write(text[:cut])
        fh.flush()
        time.sleep(pause_s)
        fh.write(text[cut:])


def test_slow_in_place_write_is_applied_once_as_the_final_file(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Halves 0.6 s apart: the default quiet period (0.8 s) waits for the second one, so the
    half file (without b and c) is never applied and b keeps its pause and created_at."""
    text = jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *"), ("c", "0 * * * *"))
    loaded(rig, text)
    rig.registry.set_paused("b", True)
    created = rig.registry.get_job("b").created_at  # type: ignore[union-attr]
    rig.watch(QUIET_MS)
    caplog.set_level(logging.INFO, logger="stocksched.reload")
    caplog.clear()
    before = rig.reloads()
    final = text.replace("# ", "# edited", 1)
    write_in_two_halves(rig.path, final, 0.6)
    wait_until(lambda: rig.reloads() >= before + 1)
    time.sleep(1.5)  # a second reload (the half first, then the whole) would show by now
    assert rig.reloads() == before + 1
    applied = [r.getMessage() for r in caplog.records if "config applied" in r.getMessage()]
    assert len(applied) == 1 and "removed=0" in applied[0], applied
    assert rig.reloader.current is not None
    assert rig.reloader.current.sha256 == hashlib.sha256(final.encode()).hexdigest()
    job = rig.registry.get_job("b")
    assert job is not None and job.paused and job.created_at == created
    assert "b" in rig.registry.paused_ids()


def test_a_change_waits_for_the_quiet_period_but_sighup_does_not(rig: Rig) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    rig.watch(QUIET_MS)
    before = rig.reloads()
    t0 = time.monotonic()
    rig.path.write_text(jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *")), encoding="utf-8")
    wait_until(lambda: rig.reloads() >= before + 1)
    assert time.monotonic() - t0 >= QUIET_MS / 1000
    # SIGHUP's path (force=True) applies at once, and the watcher then finds nothing to do
    rig.path.write_text(jobs_yaml(("c", "0 * * * *")), encoding="utf-8")
    assert rig.reloader.reload().ok
    assert set(rig.scheduler.next_runs()) == {"c"}
    time.sleep(QUIET_MS / 1000 + 0.5)
    assert rig.reloads() == before + 2


def test_an_atomic_replacement_is_applied_without_the_in_place_quiet_period(rig: Rig) -> None:
    """A file renamed into place cannot be half-written: it is applied after the short
    settle, long before a quiet period of a minute would have allowed."""
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    rig.watch(60_000)
    before = rig.reloads()
    save_like_editor(rig.path, jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *")))
    one_more_reload(rig, before, "success")
    assert set(rig.scheduler.next_runs()) == {"a", "b"}


def test_an_in_place_write_still_waits_for_the_quiet_period(rig: Rig) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    rig.watch(60_000)
    before = rig.reloads()
    rig.path.write_text(jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *")), encoding="utf-8")
    time.sleep(1.0)  # ten settle periods: an early reload would have happened by now
    assert rig.reloads() == before
    assert set(rig.scheduler.next_runs()) == {"a"}


def test_an_invalid_file_renamed_into_place_is_not_reported_before_the_quiet_period(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The early try stays silent on an invalid file (it may be a file created empty and
    written afterwards); a valid save within the quiet period is then the only reload."""
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    rig.watch(3000)
    caplog.set_level(logging.INFO, logger="stocksched.reload")
    before = rig.reloads()
    save_like_editor(rig.path, "version: 1\njobs:\n  - id: [\n")
    time.sleep(0.6)  # six settle periods, a fifth of the quiet period
    save_like_editor(rig.path, jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *")))
    one_more_reload(rig, before, "success")
    assert rig.reloads("failure") == 0
    assert "config invalid" not in caplog.text
    assert set(rig.scheduler.next_runs()) == {"a", "b"}


def test_an_invalid_file_renamed_into_place_is_reported_after_the_quiet_period(
    rig: Rig,
) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    rig.watch(300)
    before = rig.reloads()
    save_like_editor(rig.path, BAD)
    one_more_reload(rig, before, "failure")
    assert any(":5:15: jobs[0].schedule" in e for e in rig.reloader.last.errors), (
        rig.reloader.last.errors
    )
    assert set(rig.scheduler.next_runs()) == {"a"}


def test_a_fifo_at_the_jobs_path_is_a_config_error_and_never_blocks(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    rig.path.unlink()
    os.mkfifo(rig.path)
    caplog.set_level(logging.INFO, logger="stocksched.reload")
    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(rig.reloader.reload()), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "reload blocked on a FIFO"
    assert not rig.reloader.last.ok
    assert rig.reloader.last.errors == [f"{rig.path}: not a regular file (a FIFO)"]
    assert "not a regular file (a FIFO)" in caplog.text
    assert set(rig.scheduler.next_runs()) == {"a"}  # the last good config is kept
    watcher = rig.watch()  # nor does the watcher's content check block
    assert watcher.alive


def test_a_hung_read_of_the_file_is_given_up_and_the_old_config_kept(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that never returns (a hung network mount) must not hold the caller, which for
    SIGHUP is the daemon's main loop: SIGTERM would never be seen."""
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    never = threading.Event()
    monkeypatch.setattr(reload_module, "read_jobs_bytes", lambda _p: never.wait(30))
    rig.reloader.read_timeout_s = 0.2
    t0 = time.monotonic()
    status = rig.reloader.reload()
    assert time.monotonic() - t0 < 2
    assert not status.ok and "reading the file took over 0.2s" in status.errors[0]
    assert set(rig.scheduler.next_runs()) == {"a"}
    never.set()


def test_a_reload_stuck_elsewhere_does_not_hold_the_next_one_for_ever(rig: Rig) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    rig.reloader.lock_wait_s = 0.2
    with rig.reloader._lock:  # a reload in progress that does not finish
        t0 = time.monotonic()
        assert rig.reloader.reload() is rig.reloader.last
        assert time.monotonic() - t0 < 2


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(repo),
    }
    out = subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    return out.stdout.strip()


def test_git_checkout_of_another_version_is_one_reload(rig: Rig) -> None:
    repo = rig.path.parent
    git(repo, "init", "-q", "-b", "main")
    rig.path.write_text(jobs_yaml(("a", "*/5 * * * *")), encoding="utf-8")
    (repo / "README").write_text("jobs for the scheduler\n", encoding="utf-8")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "v1")
    v1 = git(repo, "rev-parse", "HEAD")
    rig.path.write_text(jobs_yaml(("a", "*/10 * * * *"), ("b", "0 * * * *")), encoding="utf-8")
    (repo / "README").write_text("jobs for the scheduler, v2\n", encoding="utf-8")
    git(repo, "commit", "-q", "-am", "v2")
    assert rig.reloader.reload().ok
    rig.watch()
    before = rig.reloads()
    git(repo, "checkout", "-q", v1)
    one_more_reload(rig, before, "success")
    diff = rig.reloader.last.diff
    assert diff is not None and (diff.changed, diff.removed) == (["a"], ["b"])
    assert rig.scheduler.next_runs() == {"a": datetime(2026, 3, 2, 10, 5, tzinfo=UTC)}


def configmap_swap(conf: Path, version: int, text: str) -> None:
    """What the kubelet does: new timestamped dir, ..data symlink renamed over, old dir gone."""
    new = conf / f"..2026_03_02_10_0{version}"
    new.mkdir()
    (new / "jobs.yaml").write_text(text, encoding="utf-8")
    old = (conf / "..data").resolve() if (conf / "..data").is_symlink() else None
    tmp = conf / "..data_tmp"
    tmp.symlink_to(new.name)
    os.replace(tmp, conf / "..data")
    if not (conf / "jobs.yaml").is_symlink():
        (conf / "jobs.yaml").symlink_to("..data/jobs.yaml")
    if old is not None:
        shutil.rmtree(old)


def test_configmap_symlink_swaps_are_one_reload_each(rig: Rig) -> None:
    conf = rig.path.parent
    configmap_swap(conf, 1, jobs_yaml(("a", "*/5 * * * *")))
    assert rig.reloader.reload().ok
    rig.watch()
    before = rig.reloads()
    configmap_swap(conf, 2, jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *")))
    one_more_reload(rig, before, "success")
    assert set(rig.scheduler.next_runs()) == {"a", "b"}
    # The second swap proves the watcher followed the chain to the new directory.
    configmap_swap(conf, 3, jobs_yaml(("c", "0 * * * *")))
    one_more_reload(rig, before + 1, "success")
    assert set(rig.scheduler.next_runs()) == {"c"}


def test_symlink_chain_names_every_link_and_the_real_file(conf_dir: Path) -> None:
    configmap_swap(conf_dir, 1, jobs_yaml(("a", "*/5 * * * *")))
    t = WatchTargets.resolve(conf_dir / "jobs.yaml")
    real = conf_dir / "..2026_03_02_10_01" / "jobs.yaml"
    assert t.paths == {str(conf_dir / "jobs.yaml"), str(conf_dir / "..data"), str(real)}
    assert t.dirs == tuple(sorted({str(conf_dir), str(real.parent)}))
    assert t.affected_by([str(conf_dir / "..data")])
    assert t.affected_by([str(real.parent)])  # the target directory itself replaced
    assert not t.affected_by([str(conf_dir / "notes.txt"), str(conf_dir / "..data_tmp")])


def test_unrelated_files_in_the_directory_do_not_reload(rig: Rig) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    watcher = rig.watch()
    calls = watcher.reload_calls
    (rig.path.parent / "notes.txt").write_text("hello\n", encoding="utf-8")
    save_like_editor(rig.path.parent / "other.yaml", "x: 1\n")
    time.sleep(QUIET_S)
    assert watcher.reload_calls == calls
    assert rig.reloads() == 1


def test_rewrite_with_same_content_is_a_quiet_no_op(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    text = jobs_yaml(("a", "*/5 * * * *"))
    loaded(rig, text)
    watcher = rig.watch()
    calls = watcher.reload_calls
    caplog.set_level(logging.INFO, logger="stocksched.reload")
    caplog.clear()
    save_like_editor(rig.path, text)
    wait_until(lambda: watcher.reload_calls > calls)
    time.sleep(QUIET_S)
    assert rig.reloads() == 1
    assert [r.getMessage() for r in caplog.records] == []
    assert rig.reloader.reload(force=True).ok and rig.reloads() == 2  # SIGHUP always reloads


# ---------------------------------------------------------------- invalid files


def test_invalid_save_keeps_old_jobs_and_reports_then_next_valid_save_applies(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *")))
    good = rig.reloader.current
    next_runs = rig.scheduler.next_runs()
    records = {j.job_id: j for j in rig.registry.list_jobs()}
    rig.watch()
    caplog.set_level(logging.ERROR, logger="stocksched.reload")

    save_like_editor(rig.path, BAD)
    one_more_reload(rig, 1, "failure")
    last = rig.reloader.last
    assert not last.ok and last.diff is None
    assert [e.split(": ")[0] for e in last.errors] == [f"{rig.path}:5:15", f"{rig.path}:11:5"]
    assert "invalid schedule 'every tuesday'" in last.errors[0]
    assert "unknown field 'colour'" in last.errors[1]
    assert all(e in caplog.text for e in last.errors)  # every error logged with its place
    assert rig.metrics.config_last_reload_ok._value.get() == 0
    assert rig.reloader.current is good
    assert rig.scheduler.next_runs() == next_runs
    assert {j.job_id: j for j in rig.registry.list_jobs()} == records

    os.utime(rig.path)  # touched, not changed: the errors are not logged or counted again
    time.sleep(QUIET_S)
    assert rig.reloads("failure") == 1

    save_like_editor(rig.path, jobs_yaml(("a", "*/5 * * * *"), ("c", "0 * * * *")))
    one_more_reload(rig, 2, "success")
    assert rig.reloader.last.ok and rig.reloader.last.errors == []
    assert rig.metrics.config_last_reload_ok._value.get() == 1
    assert set(rig.scheduler.next_runs()) == {"a", "c"}


def test_fixing_back_to_the_applied_content_clears_the_failure(rig: Rig) -> None:
    text = jobs_yaml(("a", "*/5 * * * *"))
    loaded(rig, text)
    rig.watch()
    save_like_editor(rig.path, BAD)
    one_more_reload(rig, 1, "failure")
    save_like_editor(rig.path, text)  # the running config again: status must say so
    one_more_reload(rig, 2, "success")
    assert rig.reloader.last.ok


# ---------------------------------------------------------------- what a reload touches


# ---------------------------------------------------------------- what a reload logs


def _applied_line(caplog: pytest.LogCaptureFixture) -> str:
    (line,) = [m for m in caplog.messages if m.startswith("config applied")]
    return line


def test_reload_log_names_the_jobs_added_changed_and_removed(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 8, item 12: the line said changed=1 but not which job."""
    every5 = "*/5 * * * *"
    loaded(rig, jobs_yaml(("keep", every5), ("edit", every5), ("drop", every5)))
    caplog.set_level(logging.INFO, logger="stocksched.reload")
    caplog.clear()
    loaded(rig, jobs_yaml(("keep", every5), ("edit", "*/10 * * * *"), ("new", every5)))
    line = _applied_line(caplog)
    assert line.startswith("config applied added=1 changed=1 removed=1 unchanged=1 sha256="), line
    assert rig.reloader.last.sha256[:12] in line
    assert line.endswith(" (added: new; changed: edit; removed: drop)"), line

    caplog.clear()
    rig.path.write_text(jobs_yaml(("keep", every5), ("edit", "*/10 * * * *"), ("new", every5)))
    assert rig.reloader.reload().ok  # nothing changed: no ids to name
    assert _applied_line(caplog).endswith("unchanged=3 sha256=" + rig.reloader.last.sha256[:12])


def test_reload_log_names_at_most_ten_ids_of_each_kind(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    loaded(rig, jobs_yaml(("old", "*/5 * * * *")))
    caplog.set_level(logging.INFO, logger="stocksched.reload")
    caplog.clear()
    loaded(rig, jobs_yaml(*[(f"job-{i:02d}", "*/5 * * * *") for i in range(13)]))
    first_ten = ", ".join(f"job-{i:02d}" for i in range(10))
    assert _applied_line(caplog).endswith(f" (added: {first_ten}, +3 more; removed: old)")


def test_unchanged_jobs_keep_next_run_and_cause_no_redis_writes(
    real_redis: redis.Redis, conf_dir: Path
) -> None:
    rig = Rig(real_redis, conf_dir / "jobs.yaml")
    try:
        loaded(rig, jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *")))
        next_runs = rig.scheduler.next_runs()
        raw_a = real_redis.get(keys.job_key("a"))
        assert raw_a
        rig.clock.advance(60)
        rig.watch()

        def dirty() -> int:
            return int(real_redis.info("persistence")["rdb_changes_since_last_save"])

        real_redis.config_resetstat()
        before = dirty()
        save_like_editor(
            rig.path,
            jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *"), comment="reformatted, same jobs"),
        )
        one_more_reload(rig, 1, "success")
        diff = rig.reloader.last.diff
        assert diff is not None and diff.unchanged == ["a", "b"]
        assert dirty() == before
        cmds = {k.removeprefix("cmdstat_").split("|")[0] for k in real_redis.info("commandstats")}
        assert cmds <= {
            "get",
            "mget",
            "hmget",
            "evalsha",  # the read of the records' state hashes (and dirty() shows no write)
            "script",
            "hkeys",
            "smembers",
            "info",
            "config",
            "ping",
            "select",
            "client",
            "hello",
        }, cmds
        assert rig.scheduler.next_runs() == next_runs

        # One job changed: the other keeps its record byte for byte and its next_run.
        save_like_editor(rig.path, jobs_yaml(("a", "*/5 * * * *"), ("b", "30 * * * *")))
        one_more_reload(rig, 2, "success")
        assert rig.reloader.last.diff is not None and rig.reloader.last.diff.changed == ["b"]
        assert rig.scheduler.next_runs()["a"] == next_runs["a"]
        assert rig.scheduler.next_runs()["b"] == datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
        job_a = rig.registry.get_job("a")
        assert job_a is not None and job_a.next_run == next_runs["a"]
        assert real_redis.get(keys.job_key("a")) == raw_a
    finally:
        rig.close()


def test_removed_job_run_in_progress_finishes_and_is_recorded(rig: Rig) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *")))
    rig.watch()
    run_id = rig.scheduler.trigger("b")
    assert rig.fetcher.entered.wait(5)
    save_like_editor(rig.path, jobs_yaml(("a", "*/5 * * * *")))
    one_more_reload(rig, 1, "success")  # applied while b is still held in its fetch
    assert rig.scheduler.is_running("b")
    assert set(rig.scheduler.next_runs()) == {"a"}
    assert rig.registry.get_job("b") is None
    assert 'stocksched_job_next_run_timestamp_seconds{job="b"}' not in rig.metrics.render().decode()

    rig.fetcher.gate.set()
    assert rig.scheduler.wait_idle(10)
    runs = rig.registry.get_runs("b")
    assert [(r.run_id, r.status) for r in runs] == [(run_id, RunStatus.SUCCESS)]
    assert rig.registry.get_job("b") is None  # recording the run did not resurrect the job


def test_reload_does_not_wait_for_a_running_job(rig: Rig) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    rig.scheduler.trigger("a")
    assert rig.fetcher.entered.wait(5)
    rig.path.write_text(jobs_yaml(("a", "0 * * * *"), ("c", "*/5 * * * *")), encoding="utf-8")
    done = threading.Event()

    def reload_then_signal() -> None:
        rig.reloader.reload()
        done.set()

    t = threading.Thread(target=reload_then_signal)
    t.start()
    try:
        assert done.wait(5), "reload blocked on the running job"
    finally:
        rig.fetcher.gate.set()
        t.join(10)
    assert rig.reloader.last.ok
    assert rig.reloader.last.diff is not None and rig.reloader.last.diff.changed == ["a"]
    assert rig.scheduler.next_runs() == {
        "a": datetime(2026, 3, 2, 11, 0, tzinfo=UTC),
        "c": datetime(2026, 3, 2, 10, 5, tzinfo=UTC),
    }
    assert rig.scheduler.wait_idle(10)
    assert rig.registry.get_runs("a")[0].status == RunStatus.SUCCESS


# ---------------------------------------------------------------- the watcher survives


def test_force_false_with_applied_content_counts_and_logs_nothing(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    last = rig.reloader.last
    caplog.set_level(logging.INFO, logger="stocksched.reload")
    caplog.clear()
    assert rig.reloader.reload(force=False) is last
    assert rig.reloads() == 1 and caplog.records == []


def test_directory_gone_is_logged_once_and_watching_resumes_when_back(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    caplog.set_level(logging.INFO, logger="stocksched.reload")
    watcher = rig.watch(retry_s=0.02)
    conf = rig.path.parent
    shutil.rmtree(conf)
    wait_until(lambda: "is missing" in caplog.text)
    time.sleep(0.2)  # ten retries
    assert caplog.text.count("is missing") == 1
    assert watcher.alive
    assert set(rig.scheduler.next_runs()) == {"a"}  # the last good config keeps running

    assert rig.reloads("failure") == 1  # the vanished file itself: reported as an error

    conf.mkdir()
    rig.path.write_text(jobs_yaml(("b", "0 * * * *")), encoding="utf-8")
    wait_until(lambda: rig.reloads("success") == 2)
    assert set(rig.scheduler.next_runs()) == {"b"}
    assert "is back" in caplog.text
    before = rig.reloads()
    save_like_editor(rig.path, jobs_yaml(("c", "0 * * * *")))  # the new directory is watched
    one_more_reload(rig, before, "success")


def test_a_crashing_reload_does_not_stop_the_watcher(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    watcher = rig.watch()
    real_reload = rig.reloader.reload
    calls: list[bool] = []

    def crash_once(force: bool = True, **kw: bool) -> object:
        calls.append(force)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real_reload(force, **kw)

    monkeypatch.setattr(rig.reloader, "reload", crash_once)
    save_like_editor(rig.path, jobs_yaml(("b", "0 * * * *")))
    wait_until(lambda: calls)
    wait_until(lambda: "config reload crashed" in caplog.text)
    save_like_editor(rig.path, jobs_yaml(("c", "0 * * * *")))
    wait_until(lambda: set(rig.scheduler.next_runs()) == {"c"})
    assert watcher.alive and calls[0] is False


def test_storage_failure_is_retried_without_a_new_save(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    rig.watch(storage_retry_s=0.1)
    real_reconcile = rig.registry.reconcile
    failures = [1]

    def flaky(specs: object, **kw: object) -> object:
        if failures:
            failures.pop()
            raise StorageError("MULTI create", keys.job_key("b"), "Connection refused")
        return real_reconcile(specs, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(rig.registry, "reconcile", flaky)
    save_like_editor(rig.path, jobs_yaml(("a", "*/5 * * * *"), ("b", "0 * * * *")))
    wait_until(lambda: rig.reloads("failure") == 1)
    assert rig.reloader.last.retryable and rig.reloader.last.errors[0].startswith("storage:")
    wait_until(lambda: rig.reloads("success") == 2)
    assert set(rig.scheduler.next_runs()) == {"a", "b"}


def test_stop_is_prompt(rig: Rig) -> None:
    loaded(rig, jobs_yaml(("a", "*/5 * * * *")))
    watcher = JobsWatcher(rig.reloader, DEBOUNCE_MS)  # default 1s watchfiles timeout
    watcher.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    watcher.stop()
    assert time.monotonic() - t0 < 0.5
    assert not watcher.alive
    watcher.stop()  # idempotent
