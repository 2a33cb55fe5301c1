"""JobScheduler: one thread that sleeps until the earliest next fire time, then dispatches.

Due runs go to a bounded thread pool; a job never runs twice at once. The scheduler
thread itself does no network I/O: Redis bookkeeping happens in the worker threads.
``tick(now)`` is the whole decision step, so tests drive it with a fake clock and
never sleep.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import datetime

from stocksched.clock import Clock
from stocksched.config import JobSpec
from stocksched.executor import JobExecutor, manual_run_id, scheduled_run_id
from stocksched.metrics import Metrics
from stocksched.model import JobStatus, RunResult, RunStatus, ScheduledJob, Trigger
from stocksched.registry import JobRegistry, UnknownJobError
from stocksched.storage.adapter import StorageError

log = logging.getLogger(__name__)


class JobBusyError(RuntimeError):
    """The job already has a run in progress."""


@dataclass
class _JobState:
    spec: JobSpec
    spec_hash: str
    paused: bool
    next_run: datetime | None
    gen: int = 0

    @property
    def active(self) -> bool:
        return self.spec.enabled and not self.paused


@dataclass
class RunHandle:
    run_id: str
    trigger: Trigger
    scheduled_for: datetime | None
    started_at: datetime
    future: Future[RunResult | None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


class JobScheduler:
    def __init__(
        self,
        registry: JobRegistry,
        executor: JobExecutor,
        clock: Clock,
        *,
        pool_size: int = 4,
        metrics: Metrics | None = None,
        max_sleep: float = 30.0,
        pool: Executor | None = None,
        on_loop: Callable[[], None] | None = None,
    ) -> None:
        self._registry = registry
        self._executor = executor
        self._clock = clock
        self._metrics = metrics
        self._max_sleep = max_sleep
        self._pool = pool or ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="job")
        self._side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bookkeeping")
        self._on_loop = on_loop
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, _JobState] = {}
        self._heap: list[tuple[datetime, int, str, int]] = []
        self._seq = itertools.count()
        self._running: dict[str, RunHandle] = {}
        self._dirty = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.last_loop_monotonic = clock.monotonic()

    # -- job set -----------------------------------------------------------------

    def set_jobs(self, records: Iterable[ScheduledJob]) -> None:
        """Adopt the registry's records; unchanged jobs keep their place in the heap."""
        now = self._clock.now()
        with self._lock:
            seen = set()
            for rec in records:
                seen.add(rec.job_id)
                old = self._jobs.get(rec.job_id)
                if (old is not None and old.spec_hash == rec.spec_hash
                        and old.paused == rec.paused):
                    continue
                nxt = rec.next_run
                if old is not None and old.spec.schedule == rec.spec.schedule and \
                        old.spec.timezone == rec.spec.timezone and old.active:
                    nxt = old.next_run  # a spec change that does not touch timing
                if nxt is None or nxt < now:
                    nxt = rec.spec.next_fire(now)
                state = _JobState(rec.spec, rec.spec_hash, rec.paused, nxt,
                                  gen=(old.gen + 1) if old else 0)
                self._jobs[rec.job_id] = state
                self._push(rec.job_id, state)
            for job_id in set(self._jobs) - seen:
                del self._jobs[job_id]  # a run in progress finishes and is recorded
                if self._metrics is not None:
                    self._metrics.remove_job(job_id)
            self._dirty = True
            self._wake.notify_all()
        self._publish_gauges()

    def _push(self, job_id: str, state: _JobState) -> None:
        if state.active and state.next_run is not None:
            heapq.heappush(self._heap, (state.next_run, next(self._seq), job_id, state.gen))
        if self._metrics is not None:
            ts = state.next_run.timestamp() if state.active and state.next_run else 0
            self._metrics.job_next_run.labels(job=job_id).set(ts)
            self._metrics.job_paused.labels(job=job_id).set(0 if state.active else 1)

    # -- the decision step -----------------------------------------------------------

    def tick(self, now: datetime | None = None) -> datetime | None:
        """Dispatch every slot due at ``now``; return the earliest remaining due time."""
        now = now or self._clock.now()
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                due, _, job_id, gen = heapq.heappop(self._heap)
                state = self._jobs.get(job_id)
                if state is None or state.gen != gen or not state.active:
                    continue  # stale entry: the job changed, paused or left the config
                state.next_run = state.spec.next_fire(max(due, now))
                self._push(job_id, state)
                self._dispatch_slot(state, due, now)
            self._dirty = False
            return self._heap[0][0] if self._heap else None

    def _dispatch_slot(self, state: _JobState, due: datetime, now: datetime) -> None:
        job_id = state.spec.id
        if job_id in self._running:
            log.warning("slot skipped: previous run still going job=%s slot=%s",
                        job_id, due.isoformat(), extra={"job": job_id})
            self._record_skip(state, due, now)
            return
        if self._metrics is not None:
            self._metrics.schedule_lateness.observe(max(0.0, (now - due).total_seconds()))
        handle = RunHandle(scheduled_run_id(job_id, due), Trigger.SCHEDULE, due, now)
        self._submit(state.spec, handle, state.next_run)

    def _record_skip(self, state: _JobState, due: datetime, now: datetime) -> None:
        result = RunResult(job_id=state.spec.id, run_id=scheduled_run_id(state.spec.id, due),
                           trigger=Trigger.SCHEDULE, scheduled_for=due, started_at=now,
                           finished_at=now, status=RunStatus.SKIPPED,
                           reason="previous run still in progress")
        if self._metrics is not None:
            self._metrics.job_missed_runs.labels(job=state.spec.id).inc()
        next_run = state.next_run
        self._side.submit(self._safe, "record skipped slot", state.spec.id,
                          lambda: (self._registry.add_history(result),
                                   self._registry.set_next_run(state.spec.id, next_run)))

    def _submit(self, spec: JobSpec, handle: RunHandle, next_run: datetime | None) -> None:
        self._running[spec.id] = handle
        if self._metrics is not None:
            self._metrics.job_running.labels(job=spec.id).set(1)
        handle.future = self._pool.submit(self._run, spec, handle, next_run)

    # -- worker side -----------------------------------------------------------------

    def _run(self, spec: JobSpec, handle: RunHandle, next_run: datetime | None) -> RunResult | None:
        try:
            if handle.trigger == Trigger.SCHEDULE:
                self._safe("mark running", spec.id,
                           lambda: self._registry.start_run(spec.id, next_run))
            else:
                self._safe("mark running", spec.id, lambda: self._registry.mark_running(spec.id))
            result = self._executor.execute_job(
                spec, run_id=handle.run_id, trigger=handle.trigger,
                scheduled_for=handle.scheduled_for, cancel=handle.cancel)
            self._safe("record run", spec.id, lambda: self._record(result))
            return result
        except Exception:
            log.exception("run crashed job=%s run_id=%s", spec.id, handle.run_id,
                          extra={"job": spec.id, "run_id": handle.run_id})
            return None
        finally:
            with self._lock:
                if self._running.get(spec.id) is handle:
                    del self._running[spec.id]
                self._wake.notify_all()
            if self._metrics is not None and spec.id in self._jobs:
                self._metrics.job_running.labels(job=spec.id).set(0)

    def _record(self, result: RunResult) -> None:
        try:
            self._registry.record_run(result)
        except UnknownJobError:  # removed from the config mid-run: history still gets it
            self._registry.add_history(result)

    def _safe(self, what: str, job_id: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except UnknownJobError:
            log.info("%s: job %s left the config meanwhile", what, job_id, extra={"job": job_id})
        except StorageError as exc:
            if self._metrics is not None:
                self._metrics.redis_errors.inc()
            log.error("%s failed job=%s: %s", what, job_id, exc, extra={"job": job_id})

    # -- operator actions --------------------------------------------------------------

    def trigger(self, job_id: str) -> str:
        """Run now, outside the schedule; next_run does not move."""
        with self._lock:
            state = self._jobs.get(job_id)
            if state is None:
                raise UnknownJobError(job_id)
            if job_id in self._running or self._stopping:
                raise JobBusyError(job_id)
            now = self._clock.now()
            handle = RunHandle(manual_run_id(job_id, now), Trigger.MANUAL, None, now)
            self._submit(state.spec, handle, state.next_run)
            return handle.run_id

    def set_paused(self, job_id: str, paused: bool) -> ScheduledJob:
        """Persist the pause override, then follow it here (a resume schedules from now)."""
        rec = self._registry.set_paused(job_id, paused)
        with self._lock:
            state = self._jobs.get(job_id)
            if state is not None and state.paused != paused:
                state.paused = paused
                state.gen += 1
                if not paused:
                    state.next_run = state.spec.next_fire(self._clock.now())
                self._push(job_id, state)
                self._wake.notify_all()
        self._publish_gauges()
        return rec

    # -- introspection ----------------------------------------------------------------

    def is_running(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._running

    def running(self) -> dict[str, RunHandle]:
        with self._lock:
            return dict(self._running)

    def next_runs(self) -> dict[str, datetime | None]:
        with self._lock:
            return {i: (s.next_run if s.active else None) for i, s in self._jobs.items()}

    def job_states(self) -> dict[str, JobStatus]:
        with self._lock:
            out: dict[str, JobStatus] = {}
            for job_id, s in self._jobs.items():
                if job_id in self._running:
                    out[job_id] = JobStatus.RUNNING
                elif not s.active:
                    out[job_id] = JobStatus.PAUSED
                else:
                    out[job_id] = JobStatus.PENDING
            return out

    def _publish_gauges(self) -> None:
        if self._metrics is None:
            return
        with self._lock:
            for job_id, s in self._jobs.items():
                self._metrics.job_paused.labels(job=job_id).set(0 if s.active else 1)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no run is in progress (tests and run-job)."""
        with self._wake:
            return self._wake.wait_for(lambda: not self._running, timeout)

    # -- thread lifecycle -------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self.last_loop_monotonic = self._clock.monotonic()
            if self._on_loop is not None:
                self._on_loop()
            try:
                next_due = self.tick()
            except Exception:  # one bad job must not stop the scheduler
                log.exception("scheduler step failed; continuing")
                next_due = None
            with self._wake:
                if self._stopping:
                    return
                if self._dirty:
                    continue
                timeout = self._max_sleep
                if next_due is not None:
                    timeout = min(timeout, (next_due - self._clock.now()).total_seconds())
                if timeout > 0:
                    self._wake.wait(timeout)

    def stop(self, grace: float) -> list[str]:
        """Drain: start nothing new, give running jobs ``grace`` seconds; return those left."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        futures = [h.future for h in self.running().values() if h.future is not None]
        wait_futures(futures, timeout=grace)
        left = sorted(self.running())
        for handle in self.running().values():
            handle.cancel.set()
        if isinstance(self._pool, ThreadPoolExecutor):
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._side.shutdown(wait=True)
        return left
