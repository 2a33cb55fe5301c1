"""A run's cross-replica side: the slot claim, the job's running lease, keeping it
alive (``LeaseKeeper``), and giving it back once the result is stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from stocksched.clock import Clock, iso_utc
from stocksched.coordination import LeaseKeeper
from stocksched.jobs.spec import JobSpec
from stocksched.model import JobStatus, RunResult, RunStatus, Trigger
from stocksched.scheduling.bookkeeping import Bookkeeping
from stocksched.scheduling.timetable import Timetable
from stocksched.storage.adapter import StorageError
from stocksched.storage.leases import (
    ClaimOutcome,
    ClaimResult,
    Lease,
    LeaseManager,
    MarkRunning,
)

log = logging.getLogger(__name__)


class JobBusyError(RuntimeError):
    """The job already has a run in progress (``run_id``, when known)."""

    def __init__(self, job_id: str, run_id: str | None = None) -> None:
        super().__init__(job_id)
        self.run_id = run_id


@dataclass
class RunHandle:
    run_id: str
    trigger: Trigger
    scheduled_for: datetime | None
    started_at: datetime
    cancel: threading.Event = field(default_factory=threading.Event)
    outcome: JobStatus | None = None  # None: nothing ran here (slot lost to another replica)
    lease: Lease | None = None  # the cross-replica running lease, once claimed
    cancel_reason: str = ""  # why ``cancel`` was set: lease lost, shutdown grace over
    lease_done: bool = False  # the lease needs no release: recorded with it, or lost
    start_at: datetime | None = None  # claimed early: the body starts then (``lead``)

    def not_run(self, job_id: str, now: datetime, reason: str) -> RunResult:
        """The history entry of this run when its body never ran: failed at ``now``."""
        return RunResult(
            job_id=job_id,
            run_id=self.run_id,
            trigger=self.trigger,
            scheduled_for=self.scheduled_for,
            started_at=now,
            finished_at=now,
            status=RunStatus.FAILED,
            reason=reason,
        )


class Claims:
    """A run's cross-replica side: the slot claim, the running lease, keeping, release."""

    def __init__(
        self,
        leases: LeaseManager,
        table: Timetable,
        cond: threading.Condition,
        clock: Clock,
        book: Bookkeeping,
        on_lost: Callable[[Lease, str], None],
    ) -> None:
        self._leases = leases
        self._table = table
        self._cond = cond
        self._clock = clock
        self._book = book
        self.keeper = LeaseKeeper(leases, on_lost)

    def claim_manual(self, job_id: str, now: datetime, run_id: str) -> RunHandle:
        """Take the job's running lease for a manual run (Redis I/O: call without the lock)."""
        lease = self._leases.claim(
            job_id,
            run_id,
            trigger=Trigger.MANUAL,
            started_at=now,
            mark=MarkRunning.keeping_next_run(),
        )
        if lease is None:  # running on another replica (or a run-job)
            holder = self._leases.holder(job_id)
            raise JobBusyError(job_id, holder[1] if holder and holder[1] != "?" else None)
        return RunHandle(run_id, Trigger.MANUAL, None, now, lease=lease)

    def give_back(self, handle: RunHandle) -> None:
        """A manual claim not started after all: end its lease (the caller un-marks the
        job running)."""
        assert handle.lease is not None
        self._leases.finish(handle.lease)

    def claim(
        self,
        spec: JobSpec,
        handle: RunHandle,
        next_run: datetime | None,
        answer: ClaimResult | StorageError | None = None,
    ) -> bool:
        """Win the slot and the job's running lease across replicas; False: do not run.

        ``answer``: the claim the ``SlotClaimer`` made for this slot (which also marked the
        job running with its next slot), or why it failed; None for a manual run.
        """
        if handle.lease is not None:
            return True  # a manual run: claimed (and marked running) by ``claim_manual``
        assert answer is not None, "a slot is claimed by the SlotClaimer"
        if isinstance(answer, StorageError):
            self._unclaimed(spec, handle, answer)
            return False
        res = answer
        if res.outcome == ClaimOutcome.PAUSED:
            self._paused_elsewhere(spec, handle)
            return False
        if res.outcome == ClaimOutcome.SLOT_TAKEN:
            log.debug("slot taken by another replica job=%s run_id=%s", spec.id, handle.run_id)
            return False
        lease = res.lease
        if res.outcome == ClaimOutcome.JOB_BUSY:
            lease = self._wait_busy(spec, handle, res.busy_with, next_run)
            if lease is None:
                return False
        assert lease is not None
        handle.lease = lease
        self.keeper.add(lease)
        return True

    def _paused_elsewhere(self, spec: JobSpec, handle: RunHandle) -> None:
        log.info(
            "slot not run: job=%s is paused (through another replica) slot=%s",
            spec.id,
            iso_utc(handle.scheduled_for),
            extra={"job": spec.id, "run_id": handle.run_id},
        )
        with self._cond:
            state = self._table.jobs.get(spec.id)
            if state is not None:
                self._table.follow_pause(state, True, self._clock.now(), handle.scheduled_for)
                self._cond.notify_all()

    def _unclaimed(self, spec: JobSpec, handle: RunHandle, exc: StorageError) -> None:
        """Redis failed the claim: the run is recorded failed, by whoever claims it later."""
        self._book.health.failed(f"claim slot job={spec.id}", exc)
        result = handle.not_run(
            spec.id, self._clock.now(), "Redis unavailable: slot could not be claimed"
        )

        def write() -> None:
            if self._leases.claim_slots([result.run_id])[0]:
                self._book.record(result)

        self._book.outbox.run("record unclaimed run", write)

    def _wait_busy(
        self, spec: JobSpec, handle: RunHandle, busy_with: str | None, next_run: datetime | None
    ) -> Lease | None:
        """The job runs on another replica: queue behind it (``overlap: queue``) or skip."""
        lease = None
        if spec.overlap == "queue" and handle.scheduled_for is not None:
            lease = self._leases.wait_lease_job(
                spec.id,
                handle.run_id,
                stop=handle.cancel,
                timeout_s=(spec.timeout or timedelta(hours=1)).total_seconds()
                + self._leases.lease_ms / 1000,
                scheduled_for=handle.scheduled_for,
                mark=MarkRunning(next_run),
            )
        if lease is None and handle.scheduled_for is not None:
            with self._cond:
                self._table.record_not_run(
                    spec,
                    [handle.scheduled_for],
                    self._clock.now(),
                    RunStatus.SKIPPED,
                    f"run {busy_with} still in progress on another replica",
                )
        return lease

    def release(self, handle: RunHandle) -> None:
        """Give the running lease back once the result is stored (in outbox order)."""
        lease = handle.lease
        if lease is None:
            return
        leases, keeper = self._leases, self.keeper
        if handle.lease_done:  # the fenced record ended it, or it was lost: no write
            keeper.discard(lease)
            return

        def finish() -> None:
            keeper.discard(lease)
            if handle.lease_done:  # the fenced record ended it, or it was lost
                return
            if not leases.finish(lease):
                log.warning(
                    "run %s was recorded as interrupted elsewhere (lease lost)",
                    lease.run_id,
                    extra={"job": lease.job_id, "run_id": lease.run_id},
                )

        self._book.outbox.run("finish run", finish)

    def start_manual(self, handle: RunHandle) -> None:
        assert handle.lease is not None
        self.keeper.add(handle.lease)
