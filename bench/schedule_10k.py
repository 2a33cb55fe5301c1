"""10,000 cron jobs: stocksched's scheduler next to APScheduler 3.x, measured in one run (issue 5).

Each scheduler runs in its own subprocess (so CPU and memory are its own) holding the
same 10,000 cron schedules, 6-field with seconds, in UTC: job ``i`` fires once a day
at ``window_start + (i % 60)`` seconds, so during a 60 s window every second has
~167 jobs due (10,000 dispatches), and before the window nothing is due at all (the
quiet window for idle CPU).

- stocksched: the real daemon, in-process: ``Components`` + ``Daemon.run()`` (scheduler
  thread on ``SystemClock``, slot claims and leases, replica heartbeat, HTTP API,
  config loaded from a 10,000-job jobs.yaml into a private redis-server). By default
  (``--job noop``) a run's body does nothing, like the APScheduler job, while everything
  the scheduler does around a run stays real (slot claim and running lease in Redis,
  job record marked running, result and history written, lease released);
  ``--job demo`` runs the real executor instead: one demo ticker, 5-day window, bars
  stored in Redis. The only addition: the scheduler's worker pool is a
  ``ThreadPoolExecutor`` subclass that notes the wall time of each submission (the
  scheduler's own ``pool=`` argument), i.e. the dispatch.
- APScheduler 3.x: ``BackgroundScheduler`` (memory job store, default thread-pool
  executor of 10, default ``misfire_grace_time`` 1 s and ``coalesce``), 10,000
  ``CronTrigger(second=, minute=, hour=)`` jobs whose function does nothing but note the
  time; its executor's ``submit_job`` is wrapped the same way to note the dispatch.

Figures per scheduler: schedule lateness (due time to dispatch, p50/p99/max), start
lateness (due time to the job's code starting), dispatches seen, idle CPU over the
quiet window, CPU during the busy window (and redis-server's, for stocksched), and
resident memory (after imports, with 10,000 jobs loaded, after the busy window).

    python bench/schedule_10k.py [--jobs 10000] [--window 60] [--idle 10] [--job noop|demo]
                                 [--rate 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench._common import free_port, percentile, private_redis, rebuild_scheduler

SELF = psutil.Process()


def cpu_of(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    t = proc.cpu_times()
    return float(t.user + t.system)


def rss_mb() -> float:
    return float(SELF.memory_info().rss) / 2**20


RATE = 0  # --rate: only the first RATE * window jobs fall due in the window


def slot_of(i: int, window_start: int, window: int) -> int:
    """Job ``i``'s daily slot: in the window, or (beyond ``--rate``) twelve hours away."""
    if RATE and i >= RATE * window:
        return window_start + 12 * 3600 + i % 3600
    return window_start + i % window


def cron_fields(ts: int) -> tuple[int, int, int]:
    t = datetime.fromtimestamp(ts, UTC)
    return t.second, t.minute, t.hour


class Timeline:
    """Quiet window, busy window, measurements: shared by both children."""

    def __init__(self, args: argparse.Namespace, t_start: float) -> None:
        self.window = args.window
        self.window_start = math.ceil(t_start + args.lead)
        self.window_end = self.window_start + args.window
        self.idle = args.idle
        self.redis = psutil.Process(args.redis_pid) if args.redis_pid else None
        self.out: dict[str, Any] = {}

    def measure(self, setup_done: float, drained: Callable[[float], None]) -> None:
        """Idle window before the first slot, then the busy window; fills ``out``."""
        out = self.out
        out["setup_s"] = setup_done
        out["rss_loaded_mb"] = rss_mb()
        quiet_end = self.window_start - 1.0
        quiet_start = max(time.time() + 1.0, quiet_end - self.idle)
        if quiet_end - quiet_start < 3:
            out["warning"] = f"setup took {setup_done:.1f}s; quiet window too short"
        time.sleep(max(0.0, quiet_start - time.time()))
        c0, r0, t0 = cpu_of(SELF), cpu_of(self.redis), time.time()
        time.sleep(max(0.0, quiet_end - time.time()))
        c1, r1, t1 = cpu_of(SELF), cpu_of(self.redis), time.time()
        out["idle_window_s"] = t1 - t0
        out["idle_cpu_s"] = c1 - c0
        out["idle_redis_cpu_s"] = r1 - r0
        time.sleep(max(0.0, self.window_start - 0.5 - time.time()))
        c0, r0, t0 = cpu_of(SELF), cpu_of(self.redis), time.time()
        time.sleep(max(0.0, self.window_end + 0.5 - time.time()))
        drained(self.window_end + 30)
        c1, r1, t1 = cpu_of(SELF), cpu_of(self.redis), time.time()
        out["busy_window_s"] = t1 - t0
        out["busy_cpu_s"] = c1 - c0
        out["busy_redis_cpu_s"] = r1 - r0
        out["rss_after_mb"] = rss_mb()


# ----------------------------------------------------------------------------- stocksched


def jobs_yaml(n: int, window_start: int, window: int) -> str:
    out = [
        "version: 1",
        "defaults:",
        "  source: demo",
        "  window: 5d",
        "  ttl: 10m",
        "  timezone: UTC",
        "jobs:",
    ]
    for i in range(n):
        s, m, h = cron_fields(slot_of(i, window_start, window))
        out += [
            f"  - id: job-{i:05d}",
            f"    tickers: [T{i:05d}]",
            f'    schedule: "{s} {m} {h} * * *"',
        ]
    return "\n".join(out) + "\n"


def child_stocksched(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.time()
    from stocksched.daemon import Components, Daemon
    from stocksched.jobs.spec import JobSpec
    from stocksched.model import RunResult, RunStatus, Trigger
    from stocksched.scheduling.claims import RunHandle
    from stocksched.settings import HttpSettings, Settings
    from stocksched.sources.demo import DemoFetcher

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tl = Timeline(args, t_start)
    tl.out["rss_imports_mb"] = rss_mb()
    dispatch: list[float] = []
    starts: dict[str, float] = {}

    class RecordingPool(ThreadPoolExecutor):
        """The scheduler's worker pool, noting when each scheduled run is handed over."""

        def submit(self, fn: Callable[..., Any], /, *a: Any, **kw: Any) -> Future[Any]:
            handle = a[1] if len(a) > 1 else None
            if isinstance(handle, RunHandle) and handle.scheduled_for is not None:
                dispatch.append(time.time() - handle.scheduled_for.timestamp())
            return super().submit(fn, *a, **kw)

    class StartNotingFetcher(DemoFetcher):
        def fetch_from_source(self, ticker: str, *a: Any, **kw: Any) -> Any:
            starts.setdefault(ticker, time.time())
            return super().fetch_from_source(ticker, *a, **kw)

    class NoopExecutor:
        """``--job noop``: the run's body does nothing (like the APScheduler job); the
        scheduler's own per-run work (slot claim, lease, job record, history) stays real."""

        def execute_job(
            self,
            job: JobSpec,
            *,
            run_id: str | None = None,
            trigger: Trigger = Trigger.MANUAL,
            scheduled_for: datetime | None = None,
            **_: Any,
        ) -> RunResult:
            now = datetime.now(UTC)
            starts.setdefault(job.tickers[0], now.timestamp())
            return RunResult(
                job_id=job.id,
                run_id=run_id or job.id,
                trigger=trigger,
                scheduled_for=scheduled_for,
                started_at=now,
                finished_at=now,
                status=RunStatus.SUCCESS,
                fetched_stocks=list(job.tickers),
            )

    with tempfile.TemporaryDirectory(prefix="bench-sched-") as d:
        jobs = Path(d) / "jobs.yaml"
        jobs.write_text(jobs_yaml(args.jobs, tl.window_start, tl.window), encoding="utf-8")
        settings = Settings(
            redis_url=args.redis_url,
            jobs=jobs,
            state_dir=Path(d) / "state",
            log_level="WARNING",
            http=HttpSettings(listen=f"127.0.0.1:{free_port()}"),
        )
        c = Components(settings, fetchers={"demo": StartNotingFetcher()})
        # Components' scheduler, rebuilt with the recording pool (same arguments otherwise).
        executor: Any = NoopExecutor() if args.job == "noop" else c.executor
        flush_bookkeeping = rebuild_scheduler(
            c,
            executor=executor,
            pool=RecordingPool(max_workers=settings.pool_size, thread_name_prefix="job"),
        )
        daemon = Daemon(c)

        def drained(deadline: float) -> None:
            while time.time() < deadline and (c.scheduler.running() or len(starts) < len(dispatch)):
                time.sleep(0.05)
            flush_bookkeeping(30)

        def measure() -> None:
            try:
                while c.reloader.current is None:
                    time.sleep(0.05)
                tl.measure(time.time() - t_start, drained)
                t = time.perf_counter()  # what a Prometheus scrape of this daemon costs
                tl.out["metrics_bytes"] = len(c.metrics.render())
                tl.out["metrics_render_s"] = time.perf_counter() - t
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # what stops a daemon: its handler

        threading.Thread(target=measure, name="bench", daemon=True).start()
        rc = daemon.run()
    tl.out["exit"] = rc
    slots = {f"T{i:05d}": slot_of(i, tl.window_start, tl.window) for i in range(args.jobs)}
    tl.out["dispatch"] = dispatch
    tl.out["start"] = [t - slots[k] for k, t in starts.items()]
    tl.out["start_second"] = [slots[k] - tl.window_start for k in starts]
    return tl.out


# ----------------------------------------------------------------------------- APScheduler


def child_apscheduler(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.time()
    from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
    from apscheduler.executors.pool import ThreadPoolExecutor as ApsPool
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    logging.basicConfig(level=logging.WARNING)
    tl = Timeline(args, t_start)
    tl.out["rss_imports_mb"] = rss_mb()
    dispatch: list[float] = []
    start: list[float] = []
    missed: list[int] = []

    class RecordingExecutor(ApsPool):  # type: ignore[misc]  # APScheduler 3 is untyped
        def submit_job(self, job: Any, run_times: list[datetime]) -> None:
            now = time.time()
            dispatch.extend(now - rt.timestamp() for rt in run_times)
            super().submit_job(job, run_times)

    start_second: list[int] = []

    def job(slot: int) -> None:
        start.append(time.time() - slot)
        start_second.append(slot - tl.window_start)

    def on_missed(event: JobExecutionEvent) -> None:
        missed.append(1)

    sched = BackgroundScheduler(timezone=UTC, executors={"default": RecordingExecutor()})
    sched.add_listener(on_missed, EVENT_JOB_MISSED)
    for i in range(args.jobs):
        slot = slot_of(i, tl.window_start, tl.window)
        s, m, h = cron_fields(slot)
        sched.add_job(
            job,
            CronTrigger(second=s, minute=m, hour=h, timezone=UTC),
            args=[slot],
            id=f"job-{i:05d}",
        )
    sched.start()

    def drained(deadline: float) -> None:
        while time.time() < deadline and len(start) + len(missed) < len(dispatch):
            time.sleep(0.05)

    tl.measure(time.time() - t_start, drained)
    sched.shutdown(wait=True)
    tl.out["dispatch"] = dispatch
    tl.out["start"] = start
    tl.out["start_second"] = start_second
    tl.out["missed"] = len(missed)
    tl.out["exit"] = 0
    return tl.out


# ----------------------------------------------------------------------------- parent


def run_child(
    kind: str, args: argparse.Namespace, lead: float, redis_url: str = "", redis_pid: int = 0
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--job",
        args.job,
        "--jobs",
        str(args.jobs),
        "--window",
        str(args.window),
        "--idle",
        str(args.idle),
        "--rate",
        str(args.rate),
        "--lead",
        str(lead),
        "--redis-url",
        redis_url,
        "--redis-pid",
        str(redis_pid),
    ]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.PIPE, text=True, timeout=lead + args.window + 120
        )
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        sys.exit(f"{kind} child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    if proc.stderr.strip():
        print(f"  ({kind} stderr, last lines: {' | '.join(proc.stderr.strip().splitlines()[-3:])})")
    return dict(json.loads(text.strip().splitlines()[-1]))


def ms(v: float) -> str:
    return f"{v * 1000:8.1f} ms"


def slowest_second(lateness: list[float], second: list[int]) -> str:
    """The second of the window whose starts were latest, and the p99 without it: tells
    one pause (a GC pass, a first-time cost) from lateness in every second."""
    by: dict[int, list[float]] = {}
    for late, sec in zip(lateness, second, strict=True):
        by.setdefault(sec, []).append(late)
    worst = max(by, key=lambda k: max(by[k]))
    rest = [x for k, v in by.items() if k != worst for x in v]
    return (
        f"slowest second: +{worst} s (max {ms(max(by[worst])).strip()}); "
        f"start p99 without it {ms(percentile(rest, 99)).strip() if rest else '-'}"
    )


def report(name: str, r: dict[str, Any], window: int, jobs: int) -> None:
    d, s = r["dispatch"], r["start"]
    print(f"{name}:")
    if r.get("warning"):
        print(f"  WARNING: {r['warning']}")
    print(f"  setup (imports + {jobs} jobs loaded): {r['setup_s']:.1f} s")
    print(
        f"  schedule lateness (due -> dispatch), {len(d)} dispatches: "
        f"p50 {ms(percentile(d, 50))}  p99 {ms(percentile(d, 99))}  max {ms(max(d))}"
    )
    print(
        f"  start lateness (due -> job code runs), {len(s)} starts:     "
        f"p50 {ms(percentile(s, 50))}  p99 {ms(percentile(s, 99))}  max {ms(max(s))}"
    )
    if r.get("start_second"):
        print(f"  {slowest_second(s, r['start_second'])}")
    if "missed" in r:
        print(f"  misfired (dropped by misfire_grace_time): {r['missed']}")
    idle_rate = r["idle_cpu_s"] / r["idle_window_s"]
    line = (
        f"  idle CPU: {r['idle_cpu_s']:.3f} s over {r['idle_window_s']:.1f} s "
        f"({idle_rate * 1000:.1f} ms/s = {idle_rate * 60:.2f} CPU-s/min)"
    )
    if r["idle_redis_cpu_s"]:
        line += f"; redis-server {r['idle_redis_cpu_s']:.3f} s"
    print(line)
    line = (
        f"  busy CPU: {r['busy_cpu_s']:.1f} s over {r['busy_window_s']:.1f} s "
        f"({r['busy_cpu_s'] / r['busy_window_s']:.2f} cores)"
    )
    if r["busy_redis_cpu_s"]:
        line += f"; redis-server {r['busy_redis_cpu_s']:.1f} s"
    if s:
        line += f"; {r['busy_cpu_s'] / len(s) * 1000:.2f} ms CPU per run"
    print(line)
    if "metrics_bytes" in r:
        print(
            f"  /metrics after the window: {r['metrics_bytes'] / 1e6:.1f} MB, rendered in "
            f"{r['metrics_render_s'] * 1000:.0f} ms"
        )
    print(
        f"  RSS: after imports {r['rss_imports_mb']:.0f} MiB, {jobs} jobs loaded "
        f"{r['rss_loaded_mb']:.0f} MiB (+{r['rss_loaded_mb'] - r['rss_imports_mb']:.0f}), "
        f"after the {window} s busy window {r['rss_after_mb']:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=60, help="busy window, seconds")
    parser.add_argument("--idle", type=float, default=10.0, help="quiet window, seconds")
    parser.add_argument(
        "--job",
        choices=["noop", "demo"],
        default="noop",
        help="stocksched's run body: nothing (as the APScheduler job), or a "
        "real one-ticker demo fetch stored in Redis",
    )
    parser.add_argument(
        "--rate",
        type=int,
        default=0,
        help="jobs due per second (default: all jobs over the window); the rest are held",
    )
    parser.add_argument("--child", choices=["stocksched", "apscheduler"])
    parser.add_argument("--lead", type=float, default=0.0)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--redis-pid", type=int, default=0)
    args = parser.parse_args()
    global RATE
    RATE = args.rate
    if args.child == "stocksched":
        print(json.dumps(child_stocksched(args)))
        return
    if args.child == "apscheduler":
        print(json.dumps(child_apscheduler(args)))
        return
    import apscheduler

    per_s = args.rate or args.jobs / args.window
    print(
        f"schedule_10k: {args.jobs} cron jobs, {per_s:.0f} due per second "
        f"for {args.window} s; APScheduler {apscheduler.__version__}"
    )
    with private_redis() as server:
        ours = run_child(
            "stocksched", args, lead=args.idle + 16, redis_url=server.url, redis_pid=server.proc.pid
        )
    theirs = run_child("apscheduler", args, lead=args.idle + 5)
    body = (
        "no-op run body"
        if args.job == "noop"
        else "each run a one-ticker demo fetch stored in Redis"
    )
    report(
        f"stocksched (daemon in-process, real redis-server; {body})", ours, args.window, args.jobs
    )
    report(
        "APScheduler BackgroundScheduler (memory store, no-op job)", theirs, args.window, args.jobs
    )


if __name__ == "__main__":
    main()
