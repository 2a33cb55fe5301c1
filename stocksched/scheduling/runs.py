"""A run's life on the worker threads: claim, execute, record, release.

``Runs`` has the slot and the job's running lease claimed across replicas (``claims``),
marks the job running, executes it, hands the result to the ``recorder.RunRecorder``
(recorded fenced by the lease, the same write ends it, with the other results waiting),
and cancels a run whose lease was lost. Runs whose lease heartbeat stopped are
``recovery.CrashRecovery``'s.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor
from datetime import datetime

from stocksched.clock import Clock, iso_utc
from stocksched.executor import JobExecutor
from stocksched.jobs.spec import JobSpec
from stocksched.metrics import Metrics
from stocksched.model import JobStatus, RunResult, RunStatus, Trigger
from stocksched.registry import JobRegistry
from stocksched.scheduling.bookkeeping import Bookkeeping
from stocksched.scheduling.claimer import SlotClaimer
from stocksched.scheduling.claims import Claims, RunHandle
from stocksched.scheduling.lead import wait_for_slot
from stocksched.scheduling.recorder import Ended, RunRecorder, log_fence_lost
from stocksched.scheduling.recovery import CrashRecovery
from stocksched.scheduling.slots import JobState
from stocksched.scheduling.timetable import Timetable
from stocksched.storage.adapter import StorageError
from stocksched.storage.fence import FenceLostError
from stocksched.storage.leases import ClaimResult, Lease, LeaseManager

log = logging.getLogger(__name__)


class Runs:
    """The runs in progress, on the worker pool; shares the scheduler's lock (``cond``)."""

    def __init__(
        self,
        registry: JobRegistry,
        executor: JobExecutor,
        clock: Clock,
        leases: LeaseManager,
        book: Bookkeeping,
        table: Timetable,
        cond: threading.Condition,
        pool: Executor,
        recorder: Executor,
        metrics: Metrics,
    ) -> None:
        self._registry = registry
        self._executor = executor
        self._clock = clock
        self._leases = leases
        self._book = book
        self._table = table
        self._cond = cond
        self._pool = pool
        self._metrics = metrics
        self.claims = Claims(leases, table, cond, clock, book, self._on_lease_lost)
        self.recorder = RunRecorder(registry, book, self.claims, recorder, self._finish_all)
        self.claimer = SlotClaimer(leases, table, self._start_claimed)
        self.running: dict[str, RunHandle] = {}
        self.recovery = CrashRecovery(leases, book, table, cond, clock, self.running)
        self.stopping = False  # draining: start nothing new

    # -- starting (under the lock) -------------------------------------------------------

    def dispatch(
        self,
        state: JobState,
        slot: datetime,
        now: datetime,
        run_id: str | None = None,
        fire_at: datetime | None = None,
    ) -> None:
        """Start the due slot, unless the timetable passes it over; a ``fire_at`` still
        ahead of ``now``: claimed now, the body starts then (``lead``)."""
        spec = state.spec
        run_id = self._table.dispatch(state, slot, now, spec.id in self.running, run_id)
        if run_id is not None:
            early = fire_at if fire_at is not None and fire_at > now else None
            # started_at: the claim's (the lease's) start; the body's is in the result
            handle = RunHandle(run_id, Trigger.SCHEDULE, slot, now, start_at=early)
            self.submit(spec, handle, state.next_run)

    def submit(self, spec: JobSpec, handle: RunHandle, next_run: datetime | None) -> None:
        self.running[spec.id] = handle
        self._metrics.job_running.labels(job=spec.id).set(1)
        if handle.lease is None:  # a slot: claimed with the others due now, then run
            self.claimer.put(spec, handle, next_run)
        else:  # a manual run, claimed by the caller
            self._pool.submit(self._run, spec, handle, next_run, None)

    def _start_claimed(
        self,
        spec: JobSpec,
        handle: RunHandle,
        next_run: datetime | None,
        answer: ClaimResult | StorageError,
    ) -> None:
        """The ``SlotClaimer``'s hand-over: run on the pool with the claim's answer."""
        try:
            self._pool.submit(self._run, spec, handle, next_run, answer)
        except RuntimeError:  # the pool is shut down (drain over): give the claim back
            if isinstance(answer, ClaimResult) and answer.lease is not None:
                handle.lease = answer.lease  # the claim marked the job running: undo it
                self._book.safe(
                    "un-mark running", spec.id, lambda: self._registry.clear_running(spec.id)
                )
            self.recorder.put(spec, handle, None)

    # -- the worker side -----------------------------------------------------------------

    def _run(
        self,
        spec: JobSpec,
        handle: RunHandle,
        next_run: datetime | None,
        answer: ClaimResult | StorageError | None,
    ) -> None:
        """Claim and execute on this worker; the rest on the recorder thread, so the worker
        is free for the next due run as soon as this one's body is over (a burst of due
        runs starts sooner, issue 11)."""
        result = None
        try:
            result = self._body(spec, handle, next_run, answer)
        finally:
            self.recorder.put(spec, handle, result)

    def _body(
        self,
        spec: JobSpec,
        handle: RunHandle,
        next_run: datetime | None,
        answer: ClaimResult | StorageError | None,
    ) -> RunResult | None:
        try:
            if not self.claims.claim(spec, handle, next_run, answer):
                return None
            assert handle.lease is not None
            if not wait_for_slot(self._clock, handle.start_at, handle.cancel):
                return self._not_started(spec, handle)
            if handle.trigger == Trigger.SCHEDULE and handle.scheduled_for is not None:
                late = (self._clock.now() - handle.scheduled_for).total_seconds()
                self._metrics.schedule_lateness.observe(max(0.0, late))
            result = self._executor.execute_job(
                spec,
                run_id=handle.run_id,
                trigger=handle.trigger,
                scheduled_for=handle.scheduled_for,
                cancel=handle.cancel,
                timeout=spec.timeout,
                fence=handle.lease.fence(),
            )
            if handle.cancel_reason:
                result.reason = "; ".join(x for x in (result.reason, handle.cancel_reason) if x)
            handle.outcome = (
                JobStatus.FAILED if result.status == RunStatus.FAILED else JobStatus.COMPLETED
            )
            return result
        except FenceLostError:
            log_fence_lost(spec.id, handle.run_id, "before it started")
            handle.lease_done = True
            return None
        except Exception:
            log.exception(
                "run crashed job=%s run_id=%s",
                spec.id,
                handle.run_id,
                extra={"job": spec.id, "run_id": handle.run_id},
            )
            handle.outcome = JobStatus.FAILED
            return None

    def _not_started(self, spec: JobSpec, handle: RunHandle) -> RunResult:
        """Claimed early and cancelled before its slot came: recorded failed, with why
        (the fenced record ends the lease and the job's running mark)."""
        handle.outcome = JobStatus.FAILED
        return handle.not_run(spec.id, self._clock.now(), f"not started: {handle.cancel_reason}")

    def _on_lease_lost(self, lease: Lease, reason: str) -> None:
        with self._cond:
            handle = self.running.get(lease.job_id)
            if handle is not None and handle.run_id == lease.run_id:
                handle.cancel_reason = f"lease lost: {reason}"
                handle.cancel.set()  # never twice at once: another replica may take over

    def _finish_all(self, ended: list[Ended]) -> None:
        """Forget runs whose results are stored (or kept): one lock hold for a batch."""
        with self._cond:
            for spec, handle, _ in ended:
                self._finish(spec, handle)
            self._cond.notify_all()

    def _finish(self, spec: JobSpec, handle: RunHandle) -> None:
        if self.running.get(spec.id) is handle:
            del self.running[spec.id]
        if spec.id in self._table.jobs:
            self._metrics.job_running.labels(job=spec.id).set(0)
        else:  # removed while running: the run's own metrics re-created its series
            self._metrics.remove_job(spec.id)
        state = self._table.jobs.get(spec.id)
        if state is not None and handle.outcome is not None:
            state.outcome = handle.outcome
        if state is not None and state.queued is not None:
            self._run_queued(state)

    def _run_queued(self, state: JobState) -> None:
        """The run a queued slot waited for is over: start it, or say why not."""
        assert state.queued is not None
        slot, state.queued = state.queued, None
        if state.active and not self.stopping:
            self.dispatch(state, slot, self._clock.now())
            self.claimer.flush()
        elif self.stopping:  # bookkeeping is closing down: say so in the log
            log.warning(
                "queued slot dropped at shutdown job=%s slot=%s",
                state.spec.id,
                iso_utc(slot),
                extra={"job": state.spec.id},
            )
        else:  # never silently: a dropped queued slot is in the history
            self._table.record_not_run(
                state.spec,
                [slot],
                self._clock.now(),
                RunStatus.SKIPPED,
                "job paused while the slot was queued",
            )
