"""Job records in Redis: the record, the job index, its two projections, tombstones, history.

One class, ``JobRecords``, owns every key of a job's observed state:

- ``scheduler:job:{id}`` (JSON ScheduledJob) and ``scheduler:job_index`` (set of ids);
- ``scheduler:paused`` (set) and ``scheduler:job_runtime`` (hash id -> JobRuntime JSON),
  projections of the records written in the same transaction as each record update;
- ``scheduler:removed:{id}``, a removed job's last record, kept a day;
- ``scheduler:runs:{id}``, the capped run-history stream.

Every record update is one optimistic transaction (WATCH/MULTI/EXEC), so a record is
never half-written; a fenced update (stocksched.storage.fence) lands only while the run
still holds its lease. What to write -- the diff against jobs.yaml, the runtime
transitions -- is the domain's (``stocksched.registry.JobRegistry``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import redis

from stocksched.jobs.spec import JobSpec
from stocksched.model import JobStatus, RunResult, ScheduledJob
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, storage_errors
from stocksched.storage.fence import Fence, FenceLostError

log = logging.getLogger(__name__)

#: Turns a record into its next version; None: nothing to write.
Mutator = Callable[[ScheduledJob], ScheduledJob | None]


class UnknownJobError(KeyError):
    """No job with this id is in the current config."""


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


class JobRecords:
    """The job keys of one Redis; every method raises StorageError when Redis fails."""

    def __init__(self, adapter: RedisAdapter, history_limit: int = 1000) -> None:
        self._r = adapter.client
        self._history_limit = history_limit

    # -- reads -----------------------------------------------------------------

    def get(self, job_id: str) -> ScheduledJob | None:
        with storage_errors("GET", keys.job_key(job_id)):
            raw = self._r.get(keys.job_key(job_id))
        return ScheduledJob.from_json(str(raw)) if raw else None

    def ids(self) -> set[str]:
        with storage_errors("SMEMBERS", keys.job_index_key()):
            return {str(m) for m in self._r.smembers(keys.job_index_key())}

    def get_many(
        self, ids: Sequence[str], specs: Mapping[str, tuple[str, JobSpec]] | None = None
    ) -> dict[str, ScheduledJob | None]:
        """Records by id (None: no record), in one MGET.

        ``specs``: (spec hash, validated spec) per id; a record with that hash gets that
        spec object instead of validating its stored copy again (the hash says it is equal).
        """
        if not ids:
            return {}
        with storage_errors("MGET", keys.JOB_PREFIX + "*"):
            raws = self._r.mget([keys.job_key(i) for i in ids])
        known = specs or {}
        return {i: _decode(raw, known.get(i)) for i, raw in zip(ids, raws, strict=True)}

    def index_present(self) -> bool:
        with storage_errors("EXISTS", keys.job_index_key()):
            return bool(self._r.exists(keys.job_index_key()))

    def paused_ids(self) -> set[str]:
        with storage_errors("SMEMBERS", keys.paused_index_key()):
            return {str(m) for m in self._r.smembers(keys.paused_index_key())}

    def runtimes(self) -> dict[str, JobRuntime]:
        with storage_errors("HGETALL", keys.job_runtime_key()):
            raw = self._r.hgetall(keys.job_runtime_key())
        out: dict[str, JobRuntime] = {}
        for job_id, value in raw.items():
            try:
                out[str(job_id)] = JobRuntime.from_json(str(value))
            except (ValueError, TypeError):
                log.warning("unreadable runtime entry of job %s: %r", job_id, value)
        return out

    def runs(self, job_id: str, limit: int) -> list[RunResult]:
        """Run history, newest first."""
        with storage_errors("XREVRANGE", keys.runs_key(job_id)):
            entries = self._r.xrevrange(keys.runs_key(job_id), count=limit)
        return [RunResult.from_fields(job_id, dict(f)) for _id, f in entries]

    def removed_many(self, ids: Sequence[str]) -> dict[str, str]:
        """The raw tombstones of the jobs in ``ids`` that have one, in one MGET."""
        if not ids:
            return {}
        with storage_errors("MGET", keys.removed_job_key("*")):
            raws = self._r.mget([keys.removed_job_key(i) for i in ids])
        return {i: str(raw) for i, raw in zip(ids, raws, strict=True) if raw}

    def removed(self, job_id: str) -> str | None:
        """The raw tombstone of a job removed within ``keys.REMOVED_TTL_S``, if any."""
        key = keys.removed_job_key(job_id)
        with storage_errors("GET", key):
            raw = self._r.get(key)
        return str(raw) if raw else None

    # -- writes ----------------------------------------------------------------

    def index(self, job_id: str) -> None:
        """Put a record's id back in the job index (a record that lost its index entry)."""
        with storage_errors("SADD", keys.job_index_key()):
            self._r.sadd(keys.job_index_key(), job_id)

    def create(self, job: ScheduledJob) -> bool:
        """Write a new record with its index entry and projections; False if one exists.

        The tombstone goes in the same transaction.
        """
        return self.create_many([job])[0]

    def create_many(self, jobs: Sequence[ScheduledJob], batch: int = 500) -> list[bool]:
        """``create`` for each job, ``batch`` jobs per MULTI/EXEC; one bool per job."""
        created: list[bool] = []
        for start in range(0, len(jobs), batch):
            part = jobs[start : start + batch]
            with (
                storage_errors("MULTI create", keys.job_key(part[0].job_id)),
                self._r.pipeline(transaction=True) as pipe,
            ):
                at = []
                for job in part:
                    at.append(len(pipe.command_stack))
                    _queue_create(pipe, job)
                replies = pipe.execute()
            created += [bool(replies[i]) for i in at]
        return created

    def delete(self, job_id: str) -> None:
        """Drop the record, its index entry and projections; the record becomes a tombstone.

        Stored market data and run history are kept.
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

    def repair_projections(self, records: dict[str, ScheduledJob]) -> None:
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

    def update(
        self,
        job_id: str,
        mutate: Mutator,
        *,
        history: RunResult | None = None,
        paused: bool | None = None,
        fence: Fence | None = None,
        final: bool = False,
    ) -> ScheduledJob:
        """Read-modify-write one record atomically, projections included.

        ``history``: a run-history entry appended in the same EXEC; ``paused``: the paused
        set is written to say so even when the record already does (a repair). With
        ``fence`` the write lands only while the run holds its lease (FenceLostError
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
            self._queue_update(pipe, job, new, history, paused)
            if final and fence is not None:
                fence.finish(pipe, alone)
            result.append(new or job)

        watched = (key, *fence.watched) if fence is not None else (key,)
        with storage_errors("WATCH/MULTI update", key):
            self._r.transaction(txn, *watched)
        if not result:
            raise UnknownJobError(job_id)
        return result[-1]

    def _queue_update(
        self,
        pipe: redis.client.Pipeline,
        job: ScheduledJob,
        new: ScheduledJob | None,
        history: RunResult | None,
        paused: bool | None,
    ) -> None:
        """Queue (inside MULTI) the new record with its projections, the entry, the index."""
        if new is not None:
            pipe.set(keys.job_key(job.job_id), new.to_json())
            _project(pipe, job, new)
        if history is not None:
            self._xadd(pipe, history)
        if paused is not None:
            _index_paused(pipe, job.job_id, paused)

    def add_history(self, results: Sequence[RunResult]) -> None:
        """History entries without touching the records, in one EXEC."""
        if not results:
            return
        with (
            storage_errors("XADD", keys.runs_key(results[0].job_id)),
            self._r.pipeline(transaction=True) as pipe,
        ):
            for result in results:
                self._xadd(pipe, result)
            pipe.execute()

    def _xadd(self, pipe: redis.client.Pipeline, result: RunResult) -> None:
        pipe.xadd(
            keys.runs_key(result.job_id),
            result.to_fields(),
            maxlen=self._history_limit,
            approximate=True,
        )


def _decode(raw: object, known: tuple[str, JobSpec] | None) -> ScheduledJob | None:
    if not raw:
        return None
    d = json.loads(str(raw))
    if known is not None and d.get("spec_hash") == known[0]:
        d["spec"] = known[1]  # model_validate returns a JobSpec instance as it is
    return ScheduledJob.from_dict(d)


def _queue_create(pipe: redis.client.Pipeline, job: ScheduledJob) -> None:
    """A new record's writes; its SET NX first (a replica that created it first keeps its
    created_at), the tombstone dropped in the same transaction."""
    job_id = job.job_id
    pipe.set(keys.job_key(job_id), job.to_json(), nx=True)
    pipe.sadd(keys.job_index_key(), job_id)
    pipe.hsetnx(keys.job_runtime_key(), job_id, JobRuntime.of(job).to_json())
    if job.paused:
        pipe.sadd(keys.paused_index_key(), job_id)
    pipe.delete(keys.removed_job_key(job_id))


def _index_paused(pipe: redis.client.Pipeline, job_id: str, paused: bool) -> None:
    if paused:
        pipe.sadd(keys.paused_index_key(), job_id)
    else:
        pipe.srem(keys.paused_index_key(), job_id)


def _project(pipe: redis.client.Pipeline, old: ScheduledJob, new: ScheduledJob) -> None:
    """Queue the writes that keep the paused set and the runtime hash equal to ``new``."""
    if new.paused != old.paused:
        _index_paused(pipe, new.job_id, new.paused)
    runtime = JobRuntime.of(new)
    if runtime != JobRuntime.of(old):
        pipe.hset(keys.job_runtime_key(), new.job_id, runtime.to_json())
