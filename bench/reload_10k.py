"""Hot reload of a 10,000-job jobs.yaml: save-to-live time and Redis writes per save (issue 3).

Builds the daemon's own components (``stocksched.daemon.Components``: registry, executor,
scheduler with leases, ``JobsReloader``, ``JobsWatcher``) against a private
redis-server, loads a 10,000-job file once (timed, writes counted), starts the scheduler
thread and the watcher, then saves the file several times like an editor does (write a
temp file, rename it over jobs.yaml), each time with ONE job's schedule changed, and
measures:

- save-to-live: from the rename to the moment the reloader has applied the new config,
  checked against the scheduler (``next_runs()``) and the Redis record of that job;
- how that splits: watcher latency (rename -> the watcher calls ``reload``, which
  includes its quiet period: ``SETTLE_MS`` for an atomic replacement like this one) and
  the reload itself (parse + validate + reconcile +
  scheduler update);
- Redis commands the save caused (``CONFIG RESETSTAT`` before, ``INFO commandstats``
  after the scheduler's background writes have drained).

Finally an identical-content save (same bytes, temp + rename) must cause no reload work
and no Redis writes.

No job fires during the benchmark: every schedule avoids the current and the next hour
in its time zone, so run bookkeeping cannot pollute the write counts.

    python bench/reload_10k.py [--jobs 10000] [--saves 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    command_stats,
    describe_commands,
    private_redis,
    rebuild_scheduler,
    writes_in,
)
from stocksched.daemon import Components
from stocksched.jobs import load_jobs_file
from stocksched.reload import ReloadStatus
from stocksched.settings import Settings
from stocksched.sources.demo import DemoFetcher

ZONES = ("UTC", "America/New_York", "Europe/London", "Asia/Tokyo")
DOWS = ("*", "1-5", "mon,wed,fri", "0,6", "2", "*/2")
DOMS = ("*", "*", "*", "1,15", "1-7")


def safe_hours(zone: str, now: datetime) -> list[int]:
    """Hours of the day that are neither the current nor the next hour in ``zone``."""
    local = now.astimezone(ZoneInfo(zone))
    busy = {local.hour, (local.hour + 1) % 24, (local.hour + 2) % 24}
    return [h for h in range(24) if h not in busy]


def schedule_for(i: int, now: datetime, variant: int = 0) -> tuple[str, str]:
    """(cron, zone) for job ``i``: varied fields, never due in the next hour."""
    zone = ZONES[i % len(ZONES)]
    hours = safe_hours(zone, now)
    minute = (i * 7 + variant * 13) % 60
    hour = hours[(i // 60 + variant * 5) % len(hours)]
    if i % 5 == 0:  # a few with two hours, as operators write them
        hour2 = hours[(i // 60 + 11 + variant) % len(hours)]
        hour_field = ",".join(str(h) for h in sorted({hour, hour2}))
    else:
        hour_field = str(hour)
    dom = DOMS[i % len(DOMS)]
    dow = DOWS[(i // 3) % len(DOWS)] if dom == "*" else "*"
    return f"{minute} {hour_field} {dom} * {dow}", zone


def jobs_yaml(n: int, now: datetime, changed: dict[int, int]) -> str:
    """The file: job ``i`` uses schedule variant ``changed.get(i, 0)``."""
    out = ["version: 1", "defaults:", "  source: demo", "  window: 10d", "  ttl: 1d", "jobs:"]
    for i in range(n):
        cron, zone = schedule_for(i, now, changed.get(i, 0))
        out += [
            f"  - id: job-{i:05d}",
            f"    tickers: [T{i:05d}, U{i:05d}]",
            f'    schedule: "{cron}"',
            f"    timezone: {zone}",
        ]
    return "\n".join(out) + "\n"


def editor_save(path: Path, text: str) -> float:
    """Write a temp file next to ``path`` and rename it over; the rename's perf_counter."""
    fd, tmp = tempfile.mkstemp(prefix=".jobs.yaml.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    t = time.perf_counter()
    os.replace(tmp, path)
    return t


class ReloadTimer:
    """Wraps the reloader's ``reload`` to time when the watcher asks and how long it takes."""

    def __init__(self, c: Components) -> None:
        self.calls: list[tuple[float, float, bool]] = []  # (start, end, force)
        self._inner = c.reloader.reload
        c.reloader.reload = self  # type: ignore[method-assign]
        self._lock = threading.Lock()

    def __call__(self, force: bool = True, *, tentative: bool = False) -> ReloadStatus:
        start = time.perf_counter()
        try:
            return self._inner(force, tentative=tentative)
        finally:
            with self._lock:
                self.calls.append((start, time.perf_counter(), force))

    def after(self, t: float) -> list[tuple[float, float, bool]]:
        with self._lock:
            return [c for c in self.calls if c[0] >= t]


class StepTimer:
    """Times the reload's steps by wrapping them on the instances (nothing else changes)."""

    def __init__(self, c: Components) -> None:
        self.spent: dict[str, float] = {}
        self._wrap(c.registry, "reconcile", "reconcile (Redis reads + writes)")
        self._wrap(c.registry, "list_jobs", "read records back (list_jobs)")
        self._wrap(c.scheduler, "set_jobs", "scheduler.set_jobs")

    def _wrap(self, obj: Any, name: str, label: str) -> None:
        inner = getattr(obj, name)

        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.spent[label] = self.spent.get(label, 0.0) + time.perf_counter() - t

        setattr(obj, name, timed)

    def take(self) -> dict[str, float]:
        out, self.spent = self.spent, {}
        return out


def breakdown(total: float, steps: dict[str, float]) -> str:
    """``parse+validate 1.9 s, reconcile 1.0 s, ...``: parse is what the steps leave."""
    inner = sum(steps.values())
    parts = [f"parse+validate ~{total - inner:.2f} s"]
    parts += [f"{k} {v:.2f} s" for k, v in steps.items()]
    return ", ".join(parts)


def wait_settled(flush_bookkeeping: Callable[[float], None]) -> None:
    """Let the scheduler's background writes (next_run persistence) finish."""
    flush_bookkeeping(60)
    time.sleep(0.3)
    flush_bookkeeping(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--saves", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    now = datetime.now(UTC)
    with private_redis() as server, tempfile.TemporaryDirectory(prefix="bench-reload-") as d:
        path = Path(d) / "jobs.yaml"
        changed: dict[int, int] = {}
        path.write_text(jobs_yaml(args.jobs, now, changed), encoding="utf-8")
        size_mb = path.stat().st_size / 1e6
        print(
            f"reload_10k: {args.jobs} jobs, {size_mb:.2f} MB jobs.yaml, "
            f"redis-server on port {server.port}"
        )

        t = time.perf_counter()
        loaded = load_jobs_file(path)
        parse_s = time.perf_counter() - t
        print(f"  parse + validate only (load_jobs_file): {parse_s:.2f} s")

        settings = Settings(redis_url=server.url, jobs=path, state_dir=Path(d) / "state")
        c = Components(settings, fetchers={"demo": DemoFetcher()})
        flush_bookkeeping = rebuild_scheduler(c)
        rc = server.client()
        steps = StepTimer(c)
        rc.config_resetstat()
        t = time.perf_counter()
        status = c.reloader.reload()
        initial_s = time.perf_counter() - t
        assert status.ok, status.errors
        wait_settled(flush_bookkeeping)
        stats = command_stats(rc)
        print(
            f"  initial load of {len(loaded.jobs)} jobs (parse + reconcile into empty Redis "
            f"+ scheduler): {initial_s:.2f} s; {status.diff.summary() if status.diff else ''}"
        )
        print(f"    {breakdown(initial_s, steps.take())}")
        print(f"    Redis writes: {writes_in(stats)}  ({describe_commands(stats)})")

        timer = ReloadTimer(c)
        c.scheduler.start()
        c.watcher.start()
        deadline = time.monotonic() + 30
        while c.watcher.reload_calls < 1:  # the watch is in place once it compared once
            if time.monotonic() > deadline:
                sys.exit("config watcher did not start")
            time.sleep(0.05)
        wait_settled(flush_bookkeeping)
        steps.take()

        rows = []
        for n in range(args.saves):
            idx = (n * 2_011 + 1_234) % args.jobs
            job_id = f"job-{idx:05d}"
            changed[idx] = changed.get(idx, 0) + 1
            new_cron, zone = schedule_for(idx, now, changed[idx])
            text = jobs_yaml(args.jobs, now, changed)
            before = c.reloader.last
            rc.config_resetstat()
            t0 = editor_save(path, text)
            deadline = time.monotonic() + 120
            while c.reloader.last is before:
                if time.monotonic() > deadline:
                    sys.exit(f"save {n + 1}: not applied within 120 s")
                time.sleep(0.001)
            applied = time.perf_counter()
            rec = c.registry.get_job(job_id)
            live_next = c.scheduler.next_runs().get(job_id)
            assert rec is not None and rec.spec.schedule == new_cron, "record not updated"
            expected = rec.spec.next_fire(datetime.now(UTC))  # no slot due for hours
            assert live_next == rec.next_run == expected, (live_next, rec.next_run, expected)
            diff = c.reloader.last.diff
            spent = steps.take()
            wait_settled(flush_bookkeeping)
            stats = command_stats(rc)
            calls = timer.after(t0)
            watch_s = calls[0][0] - t0 if calls else float("nan")
            work_s = calls[0][1] - calls[0][0] if calls else float("nan")
            rows.append((applied - t0, watch_s, work_s, writes_in(stats)))
            print(
                f"  save {n + 1}: {job_id} schedule -> {new_cron!r} ({zone}): live after "
                f"{applied - t0:.2f} s (watcher {watch_s * 1000:.0f} ms + reload "
                f"{work_s:.2f} s); reloads: {len(calls)}; "
                f"{diff.summary() if diff else ''}"
            )
            print(f"    {breakdown(work_s, spent)}")
            print(f"    Redis writes: {writes_in(stats)}  ({describe_commands(stats)})")

        # Identical bytes, saved the same way: no reload work, no writes.
        before_calls = len(timer.calls)
        before = c.reloader.last
        rc.config_resetstat()
        editor_save(path, path.read_text(encoding="utf-8"))
        time.sleep(2.0)
        wait_settled(flush_bookkeeping)
        stats = command_stats(rc)
        applied_again = c.reloader.last is not before
        print(
            f"  identical-content save: watcher calls {len(timer.calls) - before_calls}, "
            f"config re-applied: {'yes' if applied_again else 'no'}, "
            f"Redis writes: {writes_in(stats)}  ({describe_commands(stats)})"
        )

        c.watcher.stop()
        c.scheduler.stop(0)
        live = [r[0] for r in rows]
        work = [r[2] for r in rows]
        print("summary:")
        print(f"  initial 10k load: {initial_s:.2f} s")
        print(
            f"  save-to-live (one job changed): median {statistics.median(live):.2f} s, "
            f"min {min(live):.2f} s, max {max(live):.2f} s over {len(rows)} saves "
            f"(reload work median {statistics.median(work):.2f} s)"
        )
        print(f"  Redis writes per one-job save: {sorted({r[3] for r in rows})}")


if __name__ == "__main__":
    main()
