"""JobScheduler: one thread that sleeps until the earliest next fire time, then dispatches.

Due runs are claimed in batches by the ``SlotClaimer`` thread and run on a bounded
thread pool; their results are recorded in batches by the ``RunRecorder`` thread; a job
never runs twice at once. The scheduler thread itself does no network I/O.
``tick(now)`` is the whole decision step, so tests drive it with a fake clock and
never sleep. The decisions are the ``Timetable``'s, a run's life is ``Runs``'; this
class holds the thread, the lock, the operator actions, introspection and drain.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import datetime, timedelta

from stocksched.calendars import MarketCalendars
from stocksched.clock import Clock
from stocksched.executor import JobExecutor
from stocksched.metrics import Metrics
from stocksched.model import JobStatus, ScheduledJob
from stocksched.outbox import StorageHealth
from stocksched.registry import JobRegistry, UnknownJobError
from stocksched.runids import manual_run_id
from stocksched.scheduling.bookkeeping import Bookkeeping
from stocksched.scheduling.claims import JobBusyError, RunHandle
from stocksched.scheduling.gcsettle import GcSettler
from stocksched.scheduling.lead import CLAIM_LEAD, ClaimLead
from stocksched.scheduling.runs import Runs
from stocksched.scheduling.timetable import Timetable
from stocksched.storage.leases import LeaseManager
from stocksched.threads import BackgroundThread

log = logging.getLogger(__name__)

# After the shutdown grace, how long cancelled runs get to record what they did.
CANCEL_WAIT_S = 3.0
# The loop wakes at least this often (the daemon lowers it to its watchdog interval).
MAX_SLEEP_S = 30.0
ZERO = timedelta(0)


class JobScheduler:
    def __init__(
        self,
        registry: JobRegistry,
        executor: JobExecutor,
        clock: Clock,
        *,
        metrics: Metrics,
        health: StorageHealth,
        leases: LeaseManager,
        pool_size: int = 4,
        max_sleep: float = MAX_SLEEP_S,
        pool: Executor | None = None,
        bookkeeping: Executor | None = None,
        recorder: Executor | None = None,
        calendars: MarketCalendars | None = None,
        on_loop: Callable[[], None] | None = None,
    ) -> None:
        self._registry = registry
        self.executor = executor  # read-only: the page asks it how far a run has got
        self._clock = clock
        self._max_sleep = max_sleep
        self._on_loop = on_loop
        self.health = health
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        # One thread for Redis bookkeeping (history of slots not run, next_run), in order.
        side = bookkeeping or ThreadPoolExecutor(max_workers=1, thread_name_prefix="bookkeeping")
        self._book = Bookkeeping(registry, leases, health, clock, metrics, side)
        self._table = Timetable(clock, metrics, calendars or MarketCalendars(), self._book)
        self._pool = pool or ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="job")
        # One thread recording the results of runs that ended, in batches (``RunRecorder``).
        self._recorder = recorder or ThreadPoolExecutor(1, thread_name_prefix="recorder")
        self._runs = Runs(
            registry, executor, clock, leases, self._book, self._table, self._wake,
            self._pool, self._recorder, metrics,
        )  # fmt: skip
        self._lead = ClaimLead(self._runs.running)
        self._pause_epoch = 0
        self._thread = BackgroundThread("scheduler", self._loop)
        self._gc = GcSettler(clock)
        self._started = False
        self._last_loop = clock.monotonic()

    def set_jobs(self, records: Iterable[ScheduledJob]) -> None:
        """Adopt the registry's records; unchanged jobs keep their place in the heap."""
        now = self._clock.now()
        with self._lock:
            self._table.set_jobs(records, now)
            self._wake.notify_all()

    def tick(self, now: datetime | None = None, lead: timedelta = ZERO) -> datetime | None:
        """Dispatch the slots due by ``now`` + ``lead`` (``lead``); the next fire time."""
        now = now or self._clock.now()
        with self._lock:
            self._table.check_clock(now)
            horizon = self._lead.begin(now, lead)
            for state, slot, run_id, fire_at in self._table.due(horizon, self._lead.hold):
                self._runs.dispatch(state, slot, now, run_id, fire_at)
            self._runs.claimer.flush()
            self._table.dirty = False
            return self._table.next_fire_at()

    def recover_interrupted(self, dead_replica: str | None = None) -> int:
        """Record runs whose lease heartbeat stopped as interrupted; rerun per catch-up."""
        return self._runs.recovery.recover_interrupted(dead_replica)

    # -- operator actions --------------------------------------------------------------

    def trigger(self, job_id: str) -> str:
        """Run now, outside the schedule; next_run does not move. Claimed like a slot."""
        with self._lock:
            self._check_idle(job_id)
            now = self._clock.now()
        # Redis I/O outside the lock; StorageError propagates
        handle = self._runs.claims.claim_manual(job_id, now, manual_run_id(job_id, now))
        with self._lock:
            try:
                self._check_idle(job_id)
            except (UnknownJobError, JobBusyError):
                self._runs.claims.give_back(handle)
                self._registry.clear_running(job_id)
                raise
            state = self._table.jobs[job_id]
            self._runs.claims.start_manual(handle)
            self._runs.submit(state.spec, handle, state.next_run)
            return handle.run_id

    def _check_idle(self, job_id: str) -> None:
        if job_id not in self._table.jobs:
            raise UnknownJobError(job_id)
        handle = self._runs.running.get(job_id)
        if handle is not None or self._runs.stopping:
            raise JobBusyError(job_id, handle.run_id if handle is not None else None)

    def set_paused(self, job_id: str, paused: bool) -> ScheduledJob:
        """Persist the pause override, then follow it here (resume catches up like a start)."""
        rec = self._registry.set_paused(job_id, paused)
        with self._lock:
            self._pause_epoch += 1  # a sync read that raced this write must not undo it
            state = self._table.jobs.get(job_id)
            if state is not None:
                self._table.follow_pause(state, paused, self._clock.now())
                self._wake.notify_all()
        return rec

    def known_runtime(self, job_id: str) -> tuple[bool, datetime | None] | None:
        """(paused, next_run) of a job this scheduler runs, None for a job it does not know."""
        with self._lock:
            state = self._table.jobs.get(job_id)
            return None if state is None else (state.paused, state.next_run)

    def pause_epoch(self) -> int:
        """Take before reading the paused set from Redis; pass to ``sync_paused``."""
        with self._lock:
            return self._pause_epoch

    def sync_paused(self, paused_ids: set[str], epoch: int) -> list[str]:
        """Follow pauses and resumes made through other replicas; returns the jobs changed.

        ``paused_ids`` is the paused set read from Redis after ``pause_epoch()`` returned
        ``epoch``; if this replica paused or resumed a job since, the read may predate
        that write, and this round is skipped (the next one sees it).
        """
        changed: list[str] = []
        with self._lock:
            if epoch != self._pause_epoch:
                return changed
            for job_id, state in self._table.jobs.items():
                if state.paused != (job_id in paused_ids):
                    changed.append(job_id)
                    log.info(
                        "job %s %s on another replica",
                        job_id,
                        "paused" if not state.paused else "resumed",
                        extra={"job": job_id},
                    )
                    self._table.follow_pause(state, not state.paused, self._clock.now())
                    self._wake.notify_all()
        return changed

    # -- introspection ----------------------------------------------------------------

    def is_running(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._runs.running

    def running(self) -> dict[str, RunHandle]:
        with self._lock:
            return dict(self._runs.running)

    def next_runs(self, ids: Iterable[str] | None = None) -> dict[str, datetime | None]:
        """Live next fire times (None while inactive), of all jobs or of ``ids``."""
        with self._lock:
            jobs = self._table.jobs
            states = jobs.items() if ids is None else ((i, jobs[i]) for i in ids if i in jobs)
            return {i: (s.next_run if s.active else None) for i, s in states}

    def next_due(self) -> tuple[str, datetime] | None:
        with self._lock:
            jobs = self._table.jobs.items()
            due = [(s.next_run, i) for i, s in jobs if s.active and s.next_run is not None]
        t, i = min(due, default=(None, ""))
        return None if t is None else (i, t)

    def job_states(self) -> dict[str, JobStatus]:
        with self._lock:
            out: dict[str, JobStatus] = {}
            for job_id, s in self._table.jobs.items():
                if job_id in self._runs.running:
                    out[job_id] = JobStatus.RUNNING
                elif not s.active:
                    out[job_id] = JobStatus.PAUSED
                else:
                    out[job_id] = s.outcome
            return out

    def loop_age(self) -> float:
        """Seconds since the scheduler loop last came round."""
        return self._clock.monotonic() - self._last_loop

    def longest_sleep(self) -> float:
        """Seconds the loop sleeps at most between two rounds, however idle."""
        return self._max_sleep

    # -- thread lifecycle -------------------------------------------------------------

    @property
    def started(self) -> bool:
        """``start`` was called (the daemon got past its first config load)."""
        return self._started

    @property
    def alive(self) -> bool:
        return self._thread.alive

    def start(self) -> None:
        self._runs.claims.keeper.start()
        self._started = True
        self._gc.freeze()  # the jobs are loaded: keep full GC passes off them
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self._last_loop = self._clock.monotonic()
            if self._on_loop is not None:
                self._on_loop()
            try:
                next_due = self.tick(lead=CLAIM_LEAD)
            except Exception:  # one bad job must not stop the scheduler
                log.exception("scheduler step failed; continuing")
                next_due = None
            retry_in = self._book.outbox.retry_in()
            if retry_in == 0:
                self._book.flush_outbox()
                retry_in = self._max_sleep  # flush reschedules itself on failure
            self._gc.idle(next_due, busy=bool(self.running()))
            with self._wake:
                if self._runs.stopping:
                    return
                if self._table.dirty:
                    continue
                timeout = self._max_sleep if retry_in is None else min(self._max_sleep, retry_in)
                if next_due is not None:
                    timeout = min(timeout, self._lead.sleep_s(next_due, self._clock.now()))
                if timeout > 0:
                    self._wake.wait(timeout)

    def stop(self, grace: float) -> list[str]:
        """Drain: start nothing new, give running jobs ``grace`` seconds; return those left."""
        with self._wake:
            self._runs.stopping = True
            self._wake.notify_all()
        self._thread.join(5)
        with self._wake:  # runs end recorded (``Runs._finish_all`` notifies)
            self._wake.wait_for(lambda: not self._runs.running, grace)
        for handle in self.running().values():  # grace over: end runs, keep what they did
            handle.cancel_reason = "daemon stopping: shutdown grace period over"
            handle.cancel.set()
        with self._wake:
            self._wake.wait_for(lambda: not self._runs.running, CANCEL_WAIT_S)
        left = sorted(self.running())
        self._runs.claimer.stop()
        if isinstance(self._pool, ThreadPoolExecutor):
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._recorder.shutdown(wait=not left)
        self._book.close(flush=not left)
        if not left:
            self._runs.claims.keeper.stop()  # abandoned runs keep their leases until exit
        return left
