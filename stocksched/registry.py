"""JobRegistry: the jobs' observed state, kept in line with jobs.yaml.

jobs.yaml is the desired state; the job records (stocksched.storage.jobs) are the
observed state. ``reconcile`` is a diff that writes only what changed, and every record
update is one optimistic transaction, so a record is never half-written and several
replicas reconciling the same file converge without losing runtime state. This module
decides what to write; ``JobRecords`` owns the keys and talks to Redis.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType

from stocksched.clock import Clock
from stocksched.jobs.spec import JobSpec
from stocksched.model import JobStatus, RunResult, RunStatus, ScheduledJob
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.fence import Fence
from stocksched.storage.history import Fenced, RecordAnswer, RunHistory
from stocksched.storage.jobs import JobRecords, JobRuntime, Mutator, UnknownJobError

__all__ = ["JobRegistry", "JobRuntime", "ReconcileDiff", "UnknownJobError", "spec_hash"]

log = logging.getLogger(__name__)

# job id -> (paused, next_run) a process still knows, or None (see ``reconcile``)
KnownRuntime = Callable[[str], tuple[bool, datetime | None] | None]


def spec_hash(spec: JobSpec) -> str:
    """16 hex digits of the SHA-256 of the spec's sorted JSON; kept by the spec itself."""
    return spec.content_hash


@dataclass
class ReconcileDiff:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # The configured jobs' records as they stand after the reconcile (saves a re-read).
    records: dict[str, ScheduledJob] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        return (
            f"added={len(self.added)} changed={len(self.changed)} "
            f"removed={len(self.removed)} unchanged={len(self.unchanged)}"
        )


class JobRegistry:
    def __init__(self, adapter: RedisAdapter, clock: Clock, history_limit: int = 1000) -> None:
        self._history = RunHistory(adapter, history_limit)
        self._records = JobRecords(adapter, self._history)
        self._clock = clock

    # -- reads -----------------------------------------------------------------

    def get_job(self, job_id: str) -> ScheduledJob | None:
        return self._records.get(job_id)

    def job_ids(self) -> set[str]:
        return self._records.ids()

    def list_jobs(self) -> list[ScheduledJob]:
        return [j for j in self._records.get_many(sorted(self.job_ids())).values() if j is not None]

    def index_present(self) -> bool:
        """Whether the job index exists (it does whenever at least one job is configured)."""
        return self._records.index_present()

    def paused_ids(self) -> set[str]:
        """Jobs paused through the API on any replica (the set slot claims check)."""
        return self._records.paused_ids()

    def job_runtimes(self) -> dict[str, JobRuntime]:
        """Every job's run times and status in one read (for job-level gauges)."""
        return self._records.runtimes()

    def get_runs(self, job_id: str, limit: int = 20) -> list[RunResult]:
        """Run history, newest first."""
        return self._history.runs(job_id, limit)

    # -- reconcile -------------------------------------------------------------

    # The last reconcile's records (replaced, never mutated): see ``_trusted``.
    _last: Mapping[str, ScheduledJob] = MappingProxyType({})

    def reconcile(
        self, specs: Iterable[JobSpec], known: KnownRuntime | None = None
    ) -> ReconcileDiff:
        """Make the records match ``specs``; unchanged jobs cost reads only, no writes.

        ``known(job_id)``: (paused, next_run) this process still holds for a job whose
        record is missing (Redis lost it); the record is re-created with them, in the
        same transaction, so no reader ever sees a paused job unpaused. With ``known``,
        records the last reconcile returned are reused where nothing says they moved
        (``_trusted``); the rest are read in one MGET.
        """
        wanted = {s.id: s for s in specs}
        hashes = self._hashes_of(wanted.values())
        last, self._last = self._last, MappingProxyType({})  # kept again only on success
        indexed = self.job_ids()
        trusted = (
            _trusted(last, hashes, indexed, self.paused_ids(), known) if known and last else {}
        )
        current: dict[str, ScheduledJob | None] = dict(trusted)
        current.update(
            self._records.get_many(
                sorted(set(wanted) - set(trusted)),
                {i: (hashes[i], s) for i, s in wanted.items() if i not in trusted},
            )
        )
        now = self._clock.now()
        diff = ReconcileDiff()
        records: dict[str, ScheduledJob] = {}
        for job_id, spec in wanted.items():
            h = hashes[job_id]
            rec = current.get(job_id)
            if rec is None:
                diff.added.append(job_id)
            elif rec.spec_hash != h:
                records[job_id] = self._records.update(job_id, self._respecer(spec, h))
                diff.changed.append(job_id)
            else:
                records[job_id] = rec
                if job_id not in indexed:  # repair a record that lost its index entry
                    self._records.index(job_id)
                diff.unchanged.append(job_id)
        records.update(self._create_many([wanted[i] for i in diff.added], hashes, now, known))
        for job_id in sorted(indexed - set(wanted)):
            self._records.delete(job_id)  # its last record is kept a day (``_restored``)
            diff.removed.append(job_id)
        diff.records = {i: records[i] for i in wanted}
        self._records.repair_projections(diff.records)
        self._last = MappingProxyType(diff.records)
        _release_texts(wanted.values())
        return diff

    def _hashes_of(self, specs: Iterable[JobSpec]) -> dict[str, str]:
        """``spec_hash`` per job id (each spec computes its own once and keeps it)."""
        return {spec.id: spec.content_hash for spec in specs}

    def _create_many(
        self,
        specs: list[JobSpec],
        hashes: dict[str, str],
        now: datetime,
        known: KnownRuntime | None,
    ) -> dict[str, ScheduledJob]:
        """New records for ``specs``: tombstones read in one MGET, written in batches."""
        tombstones = self._records.removed_many([s.id for s in specs])
        jobs = [
            self._fresh(s, hashes[s.id], now, tombstones.get(s.id), known(s.id) if known else None)
            for s in specs
        ]
        out = {}
        for spec, job, created in zip(specs, jobs, self._records.create_many(jobs), strict=True):
            if not created:  # lost a race: bring the other replica's record to this spec
                job = self._records.update(spec.id, self._respecer(spec, hashes[spec.id]))
            out[spec.id] = job
        return out

    def _fresh(
        self,
        spec: JobSpec,
        h: str,
        now: datetime,
        tombstone: str | None,
        known: tuple[bool, datetime | None] | None,
    ) -> ScheduledJob:
        fresh = ScheduledJob(
            spec=spec,
            spec_hash=h,
            created_at=now,
            updated_at=now,
            next_run=spec.next_fire(now) if spec.enabled else None,
        )
        job = _restored(spec.id, fresh, tombstone)
        if known is not None:
            paused, next_run = known
            job = replace(job, paused=paused, next_run=next_run or job.next_run)
        return job

    def _respecer(self, spec: JobSpec, h: str) -> Mutator:
        return lambda j: self._respec(j, spec, h)

    def _respec(self, job: ScheduledJob, spec: JobSpec, h: str) -> ScheduledJob | None:
        if job.spec_hash == h:
            return None
        now = self._clock.now()
        new = job.with_spec(spec, h, now)
        timing_changed = (spec.schedule, spec.timezone, spec.enabled) != (
            job.spec.schedule,
            job.spec.timezone,
            job.spec.enabled,
        )
        if timing_changed or new.next_run is None:
            new = replace(new, next_run=spec.next_fire(now) if spec.enabled else None)
        return new

    # -- runtime updates ---------------------------------------------------------

    def mark_running(self, job_id: str) -> ScheduledJob:
        """For a run outside the scheduler (``stocksched run-job``): scheduled runs are
        marked running by their claim (``LeaseManager.try_claim``)."""
        return self._records.update(job_id, lambda j: replace(j, status=JobStatus.RUNNING))

    def clear_running(self, job_id: str) -> None:
        """Undo a claim's mark of a run that did not start after all (pending again)."""
        with contextlib.suppress(UnknownJobError):  # removed: its tombstone says pending
            self._records.update(
                job_id,
                lambda j: (
                    replace(j, status=JobStatus.PENDING) if j.status == JobStatus.RUNNING else None
                ),
            )

    def set_next_run(self, job_id: str, next_run: datetime | None) -> ScheduledJob:
        return self._records.update(
            job_id, lambda j: None if j.next_run == next_run else replace(j, next_run=next_run)
        )

    def record_run(self, result: RunResult) -> ScheduledJob:
        """Store the outcome of a run that holds no lease (interrupted, unclaimed) on the
        record and append it to the history, in one EXEC."""
        status = _job_status(result)
        ok = status == JobStatus.COMPLETED

        def mutate(j: ScheduledJob) -> ScheduledJob | None:
            if (
                result.status == RunStatus.INTERRUPTED
                and j.last_run is not None
                and j.last_run >= result.started_at
            ):
                return None  # a newer run already finished: history only (late crash report)
            return replace(
                j,
                status=status,
                last_run=result.finished_at,
                last_success=result.finished_at if ok else j.last_success,
                last_result=result.summary(),
            )

        return self._records.update(result.job_id, mutate, history=result)

    def record_own_run(self, result: RunResult, fence: Fence) -> bool:
        """Store a run's outcome fenced by its lease; the same script ends the lease.

        One round trip: runtime fields, history entry, lease released, in-flight record
        dropped, slot marked done. False: the job left the config meanwhile (history
        only). FenceLostError: the lease was lost, nothing written (another replica
        recorded the run as interrupted).
        """
        status = _job_status(result)
        return self._history.record_fenced(result, fence, status, status == JobStatus.COMPLETED)

    def record_own_runs(self, runs: Sequence[tuple[RunResult, Fence]]) -> list[RecordAnswer]:
        """``record_own_run`` for each run, all in one round trip (a burst of results).

        One answer per run: what ``record_own_run`` would return, or the FenceLostError
        or StorageError it would raise, so one run's lost lease or refused script does
        not hide the others' answers; StorageError raised: the round trip failed.
        """
        fenced = []
        for result, fence in runs:
            status = _job_status(result)
            fenced.append(Fenced(result, fence, status, status == JobStatus.COMPLETED))
        return self._history.record_fenced_many(fenced)

    def add_history(self, result: RunResult) -> None:
        """History entry without touching the record (missed, skipped, interrupted slots)."""
        self._history.add([result])

    def add_history_many(self, results: Sequence[RunResult]) -> None:
        self._history.add(results)

    def set_paused(self, job_id: str, paused: bool) -> ScheduledJob:
        """The API's stop/start: a runtime override kept across reloads and restarts.

        The paused set is written even when the record already says so, which repairs
        a set that lost the id.
        """

        return self._records.update(
            job_id,
            lambda j: None if j.paused == paused else replace(j, paused=paused),
            paused=paused,
        )


def _release_texts(specs: Iterable[JobSpec]) -> None:
    """The records are written: only the specs' hashes are needed again (``release_json``)."""
    for spec in specs:
        spec.release_json()


def _job_status(result: RunResult) -> JobStatus:
    """The original design's rule: a failed or interrupted run leaves the job failed."""
    failed = result.status in (RunStatus.FAILED, RunStatus.INTERRUPTED)
    return JobStatus.FAILED if failed else JobStatus.COMPLETED


def _trusted(
    last: Mapping[str, ScheduledJob],
    hashes: dict[str, str],
    indexed: set[str],
    paused: set[str],
    known: KnownRuntime,
) -> dict[str, ScheduledJob]:
    """The last reconcile's records that need no read: same spec hash, still in the job
    index, paused as the paused set and this process's scheduler say.

    The scheduler then keeps these jobs as they are (``Timetable.set_jobs``), so only the
    spec and the pause flag matter, and both are checked: a spec changed in the file, a
    pause made through another replica (not followed here yet), a wiped Redis (no index)
    all read the record again. Runtime fields of a reused record are the last
    reconcile's; the scheduler does not look at them for a job it keeps.
    """
    out = {}
    for job_id, rec in last.items():
        if hashes.get(job_id) != rec.spec_hash or job_id not in indexed:
            continue
        held = known(job_id)
        if held is not None and held[0] == rec.paused == (job_id in paused):
            out[job_id] = rec
    return out


def _restored(job_id: str, fresh: ScheduledJob, raw: str | None) -> ScheduledJob:
    """``fresh`` with the runtime state of the job's tombstone ``raw``, if it was removed
    lately.

    Kept: paused, created_at, last_run, last_success, last_result, status (a run the
    removal cut short is not running any more); the spec and next_run are the new ones.
    """
    if not raw:
        return fresh
    try:
        old = ScheduledJob.from_json(raw)
    except Exception:  # a tombstone written by another version: start afresh
        log.warning("unreadable tombstone of job %s; not restoring its state", job_id)
        return fresh
    return replace(
        fresh,
        paused=old.paused,
        created_at=old.created_at,
        last_run=old.last_run,
        last_success=old.last_success,
        last_result=old.last_result,
        status=JobStatus.PENDING if old.status == JobStatus.RUNNING else old.status,
    )
