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
from stocksched.jobs.spec import JobSpec
from stocksched.model import JobStatus, RunResult, RunStatus, ScheduledJob
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, storage_errors
from stocksched.storage.fence import Fence, FenceLostError

log = logging.getLogger(__name__)

Mutator = Callable[[ScheduledJob], ScheduledJob | None]
Extra = Callable[[redis.client.Pipeline], None]
# job id -> (paused, next_run) a process still knows, or None (see ``reconcile``)
KnownRuntime = Callable[[str], tuple[bool, datetime | None] | None]


@dataclass(frozen=True)
class JobRuntime:
    """A job's run times and status as every replica sees them (the record's projection)."""

    status: JobStatus
    last_run: float | None  # Unix seconds
    last_success: float | None

    @classmethod
    def of(cls, job: ScheduledJob) -> JobRuntime:
        return cls(job.status, _ts(job.last_run), _ts(job.last_success))

    def to_json(self) -> str:
        return json.dumps([str(self.status), self.last_run, self.last_success])

    @classmethod
    def from_json(cls, raw: str) -> JobRuntime:
        status, last_run, last_success = json.loads(raw)
        return cls(JobStatus(status), last_run, last_success)


def _ts(dt: datetime | None) -> float | None:
    return dt.timestamp() if dt is not None else None


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

    def index_present(self) -> bool:
        """Whether the job index exists (it does whenever at least one job is configured)."""
        with storage_errors("EXISTS", keys.job_index_key()):
            return bool(self._r.exists(keys.job_index_key()))

    def paused_ids(self) -> set[str]:
        """Jobs paused through the API on any replica (the set slot claims check)."""
        with storage_errors("SMEMBERS", keys.paused_index_key()):
            return {str(m) for m in self._r.smembers(keys.paused_index_key())}

    def job_runtimes(self) -> dict[str, JobRuntime]:
        """Every job's run times and status in one read (for job-level gauges)."""
        with storage_errors("HGETALL", keys.job_runtime_key()):
            raw = self._r.hgetall(keys.job_runtime_key())
        out: dict[str, JobRuntime] = {}
        for job_id, value in raw.items():
            try:
                out[str(job_id)] = JobRuntime.from_json(str(value))
            except (ValueError, TypeError):
                log.warning("unreadable runtime entry of job %s: %r", job_id, value)
        return out

    def get_runs(self, job_id: str, limit: int = 20) -> list[RunResult]:
        """Run history, newest first."""
        with storage_errors("XREVRANGE", keys.runs_key(job_id)):
            entries = self._r.xrevrange(keys.runs_key(job_id), count=limit)
        return [RunResult.from_fields(job_id, dict(f)) for _id, f in entries]

    # -- reconcile -------------------------------------------------------------

    def reconcile(
        self, specs: Iterable[JobSpec], known: KnownRuntime | None = None
    ) -> ReconcileDiff:
        """Make the records match ``specs``; unchanged jobs cost reads only, no writes.

        ``known(job_id)``: (paused, next_run) this process still holds for a job whose
        record is missing (Redis lost it); the record is re-created with them, in the
        same transaction, so no reader ever sees a paused job unpaused.
        """
        wanted = {s.id: s for s in specs}
        indexed = self.job_ids()
        current = self._get_many(sorted(set(wanted) | indexed))
        now = self._clock.now()
        diff = ReconcileDiff()
        for job_id, spec in wanted.items():
            h = spec_hash(spec)
            rec = current.get(job_id)
            if rec is None:
                diff.records[job_id] = self._create(spec, h, now, known(job_id) if known else None)
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
        self._repair_projections(diff.records)
        return diff

    def _repair_projections(self, records: dict[str, ScheduledJob]) -> None:
        """Bring the paused set and the runtime hash in line with the records they mirror.

        Records written before these existed, or a set lost on its own, are repaired here;
        in steady state this costs one round trip and no write.
        """
        with (
            storage_errors("SMEMBERS/HKEYS", keys.paused_index_key()),
            self._r.pipeline(transaction=False) as pipe,
        ):
            pipe.smembers(keys.paused_index_key())
            pipe.hkeys(keys.job_runtime_key())
            paused_raw, runtime_raw = pipe.execute()
        paused = {str(m) for m in paused_raw}
        with_runtime = {str(m) for m in runtime_raw}
        want_paused = {i for i, r in records.items() if r.paused}
        add = want_paused - paused
        drop = {i for i in paused if i in records and i not in want_paused}
        missing = {i: r for i, r in records.items() if i not in with_runtime}
        if not (add or drop or missing):
            return
        with (
            storage_errors("MULTI repair", keys.paused_index_key()),
            self._r.pipeline(transaction=True) as pipe,
        ):
            if add:
                pipe.sadd(keys.paused_index_key(), *sorted(add))
            if drop:
                pipe.srem(keys.paused_index_key(), *sorted(drop))
            for job_id, rec in missing.items():
                pipe.hsetnx(keys.job_runtime_key(), job_id, JobRuntime.of(rec).to_json())
            pipe.execute()

    def _create(
        self,
        spec: JobSpec,
        h: str,
        now: datetime,
        known: tuple[bool, datetime | None] | None = None,
    ) -> ScheduledJob:
        fresh = ScheduledJob(
            spec=spec,
            spec_hash=h,
            created_at=now,
            updated_at=now,
            next_run=spec.next_fire(now) if spec.enabled else None,
        )
        job = self._restored(spec.id, fresh)
        if known is not None:
            paused, next_run = known
            job = replace(job, paused=paused, next_run=next_run or job.next_run)
        with (
            storage_errors("MULTI create", keys.job_key(spec.id)),
            self._r.pipeline(transaction=True) as pipe,
        ):
            # NX: a replica that created it first keeps its created_at.
            pipe.set(keys.job_key(spec.id), job.to_json(), nx=True)
            pipe.sadd(keys.job_index_key(), spec.id)
            pipe.hsetnx(keys.job_runtime_key(), spec.id, JobRuntime.of(job).to_json())
            if job.paused:
                pipe.sadd(keys.paused_index_key(), spec.id)
            pipe.delete(keys.removed_job_key(spec.id))
            created = pipe.execute()[0]
        if not created:  # lost a race: bring the other replica's record to this spec
            return self._update(spec.id, lambda j: self._respec(j, spec, h))
        return job

    def _restored(self, job_id: str, fresh: ScheduledJob) -> ScheduledJob:
        """``fresh`` with the runtime state of the job's tombstone, if it was removed lately.

        Kept: paused, created_at, last_run, last_success, last_result, status (a run the
        removal cut short is not running any more); the spec and next_run are the new ones.
        """
        key = keys.removed_job_key(job_id)
        with storage_errors("GET", key):
            raw = self._r.get(key)
        if not raw:
            return fresh
        try:
            old = ScheduledJob.from_json(str(raw))
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
        """Drop the record and index entry; stored market data and run history are kept.

        The record itself becomes a tombstone for a day (``keys.removed_job_key``), in the
        same transaction: a job re-added by then (a file saved in two halves, a revert)
        gets its pause, created_at and last results back (``_restored``).
        """
        key = keys.job_key(job_id)

        def txn(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            pipe.multi()
            if raw:
                pipe.set(keys.removed_job_key(job_id), str(raw), ex=keys.REMOVED_TTL_S)
            pipe.delete(key)
            pipe.srem(keys.job_index_key(), job_id)
            pipe.srem(keys.paused_index_key(), job_id)
            pipe.hdel(keys.job_runtime_key(), job_id)

        with storage_errors("WATCH/MULTI delete", key):
            self._r.transaction(txn, key)

    # -- runtime updates ---------------------------------------------------------

    def _update(
        self,
        job_id: str,
        mutate: Mutator,
        extra: Extra | None = None,
        *,
        fence: Fence | None = None,
        final: bool = False,
    ) -> ScheduledJob:
        """Read-modify-write one record atomically; ``extra`` adds commands to the same EXEC.

        With ``fence`` the write lands only while the run holds its lease (FenceLostError
        otherwise); ``final``: the run's last write, which also ends its lease, so a retry
        after that write landed returns the record instead of failing.
        """
        key = keys.job_key(job_id)
        result: list[ScheduledJob] = []

        def txn(pipe: redis.client.Pipeline) -> None:
            if fence is not None and not fence.holds(pipe):
                if not (final and fence.done(pipe)):
                    raise FenceLostError(fence.job_id, fence.run_id)
                stored = pipe.get(key)  # already recorded: nothing to write
                if stored:
                    result.append(ScheduledJob.from_json(str(stored)))
                return
            raw = pipe.get(key)
            if not raw:
                raise UnknownJobError(job_id)
            job = ScheduledJob.from_json(str(raw))
            new = mutate(job)
            alone = final and fence is not None and fence.alone_in_flight(pipe)
            pipe.multi()
            if new is not None:
                pipe.set(key, new.to_json())
                _project(pipe, job, new)
            if extra is not None:
                extra(pipe)
            if final and fence is not None:
                fence.finish(pipe, alone)
            result.append(new or job)

        watched = (key, *fence.watched) if fence is not None else (key,)
        with storage_errors("WATCH/MULTI update", key):
            self._r.transaction(txn, *watched)
        if not result:
            raise UnknownJobError(job_id)
        return result[-1]

    def start_run(
        self, job_id: str, next_run: datetime | None, fence: Fence | None = None
    ) -> ScheduledJob:
        return self._update(
            job_id, lambda j: replace(j, status=JobStatus.RUNNING, next_run=next_run), fence=fence
        )

    def mark_running(self, job_id: str, fence: Fence | None = None) -> ScheduledJob:
        return self._update(job_id, lambda j: replace(j, status=JobStatus.RUNNING), fence=fence)

    def set_next_run(self, job_id: str, next_run: datetime | None) -> ScheduledJob:
        return self._update(
            job_id, lambda j: None if j.next_run == next_run else replace(j, next_run=next_run)
        )

    def record_run(self, result: RunResult, fence: Fence | None = None) -> ScheduledJob:
        """Store the outcome on the record and append it to the history, in one EXEC.

        With ``fence`` (the run's own lease) the same EXEC ends the run: lease released,
        in-flight record dropped, slot marked done; a run that lost its lease records
        nothing (FenceLostError), since another replica recorded it as interrupted.
        """
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

        return self._update(
            result.job_id, mutate, extra=self._xadd(result), fence=fence, final=fence is not None
        )

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

    def _xadd(self, result: RunResult) -> Extra:
        def add(pipe: redis.client.Pipeline) -> None:
            pipe.xadd(
                keys.runs_key(result.job_id),
                result.to_fields(),
                maxlen=self._history_limit,
                approximate=True,
            )

        return add

    def set_paused(self, job_id: str, paused: bool) -> ScheduledJob:
        """The API's stop/start: a runtime override kept across reloads and restarts.

        The paused set is written even when the record already says so, which repairs
        a set that lost the id.
        """

        def index(pipe: redis.client.Pipeline) -> None:
            if paused:
                pipe.sadd(keys.paused_index_key(), job_id)
            else:
                pipe.srem(keys.paused_index_key(), job_id)

        return self._update(
            job_id,
            lambda j: None if j.paused == paused else replace(j, paused=paused),
            extra=index,
        )


def _project(pipe: redis.client.Pipeline, old: ScheduledJob, new: ScheduledJob) -> None:
    """Queue the writes that keep the paused set and the runtime hash equal to ``new``."""
    if new.paused != old.paused:
        if new.paused:
            pipe.sadd(keys.paused_index_key(), new.job_id)
        else:
            pipe.srem(keys.paused_index_key(), new.job_id)
    runtime = JobRuntime.of(new)
    if runtime != JobRuntime.of(old):
        pipe.hset(keys.job_runtime_key(), new.job_id, runtime.to_json())
