"""JobRegistry: job records, the job index and run history in Redis.

jobs.yaml is the desired state; these records are the observed state. ``reconcile``
is a diff that writes only what changed, and every record update is one optimistic
transaction (WATCH/MULTI/EXEC), so a record is never half-written and several
replicas reconciling the same file converge without losing runtime state.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import redis

from stocksched.clock import Clock
from stocksched.config import JobSpec
from stocksched.model import JobStatus, RunResult, RunStatus, ScheduledJob
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, storage_errors

log = logging.getLogger(__name__)

Mutator = Callable[[ScheduledJob], ScheduledJob | None]


class UnknownJobError(KeyError):
    """No job with this id is in the current config."""


def spec_hash(spec: JobSpec) -> str:
    return hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode()).hexdigest()[:16]


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
        self._adapter = adapter
        self._clock = clock
        self._history_limit = history_limit

    @property
    def _r(self) -> redis.Redis:
        return self._adapter.client

    # -- reads -----------------------------------------------------------------

    def get_job(self, job_id: str) -> ScheduledJob | None:
        with storage_errors("GET", keys.job_key(job_id)):
            raw = self._r.get(keys.job_key(job_id))
        return ScheduledJob.from_json(str(raw)) if raw else None

    def job_ids(self) -> set[str]:
        with storage_errors("SMEMBERS", keys.job_index_key()):
            return {str(m) for m in self._r.smembers(keys.job_index_key())}

    def list_jobs(self) -> list[ScheduledJob]:
        return [j for j in self._get_many(sorted(self.job_ids())).values() if j is not None]

    def get_active_jobs(self) -> list[ScheduledJob]:
        return [j for j in self.list_jobs() if j.is_active]

    def _get_many(self, ids: Sequence[str]) -> dict[str, ScheduledJob | None]:
        if not ids:
            return {}
        with storage_errors("MGET", keys.JOB_PREFIX + "*"):
            raws = self._r.mget([keys.job_key(i) for i in ids])
        return {
            i: ScheduledJob.from_json(str(raw)) if raw else None
            for i, raw in zip(ids, raws, strict=True)
        }

    def get_runs(self, job_id: str, limit: int = 20) -> list[RunResult]:
        """Run history, newest first."""
        with storage_errors("XREVRANGE", keys.runs_key(job_id)):
            entries = self._r.xrevrange(keys.runs_key(job_id), count=limit)
        return [RunResult.from_fields(job_id, dict(f)) for _id, f in entries]

    # -- reconcile -------------------------------------------------------------

    def reconcile(self, specs: Iterable[JobSpec]) -> ReconcileDiff:
        """Make the records match ``specs``; unchanged jobs cost reads only, no writes."""
        wanted = {s.id: s for s in specs}
        indexed = self.job_ids()
        current = self._get_many(sorted(set(wanted) | indexed))
        now = self._clock.now()
        diff = ReconcileDiff()
        for job_id, spec in wanted.items():
            h = spec_hash(spec)
            rec = current.get(job_id)
            if rec is None:
                diff.records[job_id] = self._create(spec, h, now)
                diff.added.append(job_id)
            elif rec.spec_hash != h:
                diff.records[job_id] = self._update(job_id, self._respecer(spec, h))
                diff.changed.append(job_id)
            else:
                diff.records[job_id] = rec
                if job_id not in indexed:  # repair a record that lost its index entry
                    with storage_errors("SADD", keys.job_index_key()):
                        self._r.sadd(keys.job_index_key(), job_id)
                diff.unchanged.append(job_id)
        for job_id in sorted(indexed - set(wanted)):
            self._delete(job_id)
            diff.removed.append(job_id)
        return diff

    def _create(self, spec: JobSpec, h: str, now: datetime) -> ScheduledJob:
        job = ScheduledJob(
            spec=spec,
            spec_hash=h,
            created_at=now,
            updated_at=now,
            next_run=spec.next_fire(now) if spec.enabled else None,
        )
        with (
            storage_errors("MULTI create", keys.job_key(spec.id)),
            self._r.pipeline(transaction=True) as pipe,
        ):
            # NX: a replica that created it first keeps its created_at.
            pipe.set(keys.job_key(spec.id), job.to_json(), nx=True)
            pipe.sadd(keys.job_index_key(), spec.id)
            created, _ = pipe.execute()
        if not created:  # lost a race: bring the other replica's record to this spec
            return self._update(spec.id, lambda j: self._respec(j, spec, h))
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

    def _delete(self, job_id: str) -> None:
        """Drop the record and index entry; stored market data and run history are kept."""
        with (
            storage_errors("MULTI delete", keys.job_key(job_id)),
            self._r.pipeline(transaction=True) as pipe,
        ):
            pipe.delete(keys.job_key(job_id))
            pipe.srem(keys.job_index_key(), job_id)
            pipe.execute()

    # -- runtime updates ---------------------------------------------------------

    def _update(
        self,
        job_id: str,
        mutate: Mutator,
        extra: Callable[[redis.client.Pipeline], None] | None = None,
    ) -> ScheduledJob:
        """Read-modify-write one record atomically; ``extra`` adds commands to the same EXEC."""
        key = keys.job_key(job_id)
        result: list[ScheduledJob] = []

        def txn(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            if not raw:
                raise UnknownJobError(job_id)
            job = ScheduledJob.from_json(str(raw))
            new = mutate(job)
            pipe.multi()
            if new is not None:
                pipe.set(key, new.to_json())
            if extra is not None:
                extra(pipe)
            result.append(new or job)

        with storage_errors("WATCH/MULTI update", key):
            self._r.transaction(txn, key)
        return result[-1]

    def start_run(self, job_id: str, next_run: datetime | None) -> ScheduledJob:
        return self._update(
            job_id, lambda j: replace(j, status=JobStatus.RUNNING, next_run=next_run)
        )

    def mark_running(self, job_id: str) -> ScheduledJob:
        return self._update(job_id, lambda j: replace(j, status=JobStatus.RUNNING))

    def set_next_run(self, job_id: str, next_run: datetime | None) -> ScheduledJob:
        return self._update(
            job_id, lambda j: None if j.next_run == next_run else replace(j, next_run=next_run)
        )

    def record_run(self, result: RunResult) -> ScheduledJob:
        """Store the outcome on the record and append it to the history, in one EXEC."""
        failed = result.status in (RunStatus.FAILED, RunStatus.INTERRUPTED)
        status = JobStatus.FAILED if failed else JobStatus.COMPLETED

        def mutate(j: ScheduledJob) -> ScheduledJob | None:
            if (
                result.status == RunStatus.INTERRUPTED
                and j.last_run is not None
                and j.last_run >= result.started_at
            ):
                return None  # a newer run already finished: history only (late crash report)
            ok = not failed
            return replace(
                j,
                status=status,
                last_run=result.finished_at,
                last_success=result.finished_at if ok else j.last_success,
                last_result=result.summary(),
            )

        return self._update(result.job_id, mutate, extra=self._xadd(result))

    def add_history(self, result: RunResult) -> None:
        """History entry without touching the record (missed, skipped, interrupted slots)."""
        with (
            storage_errors("XADD", keys.runs_key(result.job_id)),
            self._r.pipeline(transaction=True) as pipe,
        ):
            self._xadd(result)(pipe)
            pipe.execute()

    def add_history_many(self, results: Sequence[RunResult]) -> None:
        if not results:
            return
        with (
            storage_errors("XADD", keys.runs_key(results[0].job_id)),
            self._r.pipeline(transaction=True) as pipe,
        ):
            for result in results:
                self._xadd(result)(pipe)
            pipe.execute()

    def _xadd(self, result: RunResult) -> Callable[[redis.client.Pipeline], None]:
        def add(pipe: redis.client.Pipeline) -> None:
            pipe.xadd(
                keys.runs_key(result.job_id),
                result.to_fields(),
                maxlen=self._history_limit,
                approximate=True,
            )

        return add

    def set_paused(self, job_id: str, paused: bool) -> ScheduledJob:
        """The API's stop/start: a runtime override kept across reloads and restarts."""
        return self._update(
            job_id, lambda j: None if j.paused == paused else replace(j, paused=paused)
        )
