"""Job records in Redis: the record, the job index, its two projections, tombstones, history.

One class, ``JobRecords``, owns every key of a job's observed state:

- ``scheduler:job:{id}`` (JSON ScheduledJob but its runtime fields; the braces are the
  hash tag), ``scheduler:job_state:{id}`` (hash of the runtime fields: status, next_run,
  last_run, last_success, last_result) and ``scheduler:job_index`` (set of ids);
- ``scheduler:paused`` (set) and ``scheduler:job_runtime`` (hash id -> JobRuntime JSON),
  projections of the records written in the same transaction as each record update;
- ``scheduler:removed:{id}``, a removed job's last record, kept a day; ``scheduler:runs:{id}``.

Every record update is one optimistic transaction (WATCH/MULTI/EXEC) or one script, so a
record is never half-written (on a Redis Cluster: the job's keys, one hash slot; the global
ones just after, ``stocksched.storage.globalkeys``). A run's own result is one script fenced
by its lease (``history.RunHistory.record_fenced``): runtime fields, history entry and the
end of its lease in one round trip. What to write -- the diff against jobs.yaml, the
runtime transitions -- is the domain's (``stocksched.registry.JobRegistry``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from stocksched.jobs.spec import JobSpec
from stocksched.model import (
    RUNTIME_FIELDS,
    JobStatus,
    RunResult,
    ScheduledJob,
    with_state,
)
from stocksched.storage import globalkeys, keys, layout, scripts
from stocksched.storage.adapter import RedisAdapter, storage_errors
from stocksched.storage.cluster import is_cluster, mget, read_apart
from stocksched.storage.history import RunHistory

log = logging.getLogger(__name__)

FEW = 64  # up to this many records, ``get_many`` reads the state hashes with HMGETs

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

    def __init__(self, adapter: RedisAdapter, history: RunHistory) -> None:
        self._unmigrated: RedisAdapter | None = adapter  # until ``ids`` migrated the layout
        self._r = adapter.client
        self._cluster = is_cluster(self._r)
        self._history = history
        self._create = self._r.register_script(scripts.CREATE)
        self._read_states = self._r.register_script(scripts.READ_STATES)

    # -- reads -----------------------------------------------------------------

    def get(self, job_id: str) -> ScheduledJob | None:
        key = keys.job_key(job_id)
        with storage_errors("GET/HMGET", key), self._r.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.hmget(keys.job_state_key(job_id), list(RUNTIME_FIELDS))
            raw, state = pipe.execute()
        return _decode(raw, None, _state(state))

    def ids(self) -> set[str]:
        """The job index; the process's first read (on start) migrates (``storage.layout``)."""
        if self._unmigrated is not None:
            layout.migrate(self._unmigrated)
            self._unmigrated = None
        with storage_errors("SMEMBERS", keys.job_index_key()):
            return {str(m) for m in self._r.smembers(keys.job_index_key())}

    def get_many(
        self, ids: Sequence[str], specs: Mapping[str, tuple[str, JobSpec]] | None = None
    ) -> dict[str, ScheduledJob | None]:
        """Records by id (None: no record), in one round trip: an MGET of the JSON and
        the state hashes (HMGETs for a few, one read-only script for many: 10,000 HMGETs
        cost redis-py ~0.3 s to pack and parse, the script's one reply ~0.1 s).
        ``specs``: (spec hash, validated spec) per id; a record with that hash gets that
        spec object instead of validating its stored copy again (the hash says it is equal).
        """
        if not ids:
            return {}
        job_keys, state_keys = [keys.job_key(i) for i in ids], [keys.job_state_key(i) for i in ids]
        with (
            storage_errors("MGET", keys.JOB_PREFIX + "*"),
            self._r.pipeline(transaction=False) as pipe,
        ):
            if self._cluster:
                raws, states = read_apart(pipe, job_keys, state_keys, list(RUNTIME_FIELDS))
            else:
                pipe.mget(job_keys)
                _queue_state_reads(pipe, self._read_states, state_keys)
                raws, *rest = pipe.execute()
                states = _states_read(rest, len(ids))
        known = specs or {}
        return {
            i: _decode(raw, known.get(i), _state(state))
            for i, raw, state in zip(ids, raws, states, strict=True)
        }

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

    def removed_many(self, ids: Sequence[str]) -> dict[str, str]:
        """The raw tombstones of the jobs in ``ids`` that have one, in one MGET."""
        if not ids:
            return {}
        with storage_errors("MGET", keys.removed_job_key("*")):
            raws = mget(self._r, [keys.removed_job_key(i) for i in ids])
        return {i: str(raw) for i, raw in zip(ids, raws, strict=True) if raw}

    # -- writes ----------------------------------------------------------------

    def index(self, job_id: str) -> None:
        """Put a record's id back in the job index (a record that lost its index entry)."""
        with storage_errors("SADD", keys.job_index_key()):
            self._r.sadd(keys.job_index_key(), job_id)

    def create_many(self, jobs: Sequence[ScheduledJob], batch: int = 500) -> list[bool]:
        """Write new records with their index entries and projections, the tombstones
        dropped in the same script (``scripts.CREATE``), ``batch`` jobs per pipeline; one
        bool per job, False where a record existed (another replica created it first)."""
        created: list[bool] = []
        if self._cluster and jobs:  # its pipelines cannot load a script: on every node first
            self._r.script_load(scripts.CREATE)
        for start in range(0, len(jobs), batch):
            part = jobs[start : start + batch]
            with (
                storage_errors("EVALSHA create", keys.job_key(part[0].job_id)),
                self._r.pipeline(transaction=False) as pipe,
            ):
                for job in part:
                    self._queue_create(pipe, job)
                replies = pipe.execute()
                if self._cluster:
                    globalkeys.after_creates(self._r, _created(part, replies))
            created += [bool(r) for r in replies]
        return created

    def _queue_create(self, pipe: redis.client.Pipeline, job: ScheduledJob) -> None:
        job_id = job.job_id
        state = [x for kv in job.state_fields().items() for x in kv]
        self._create(
            keys=scripts.create_keys(job_id, cluster=self._cluster),
            args=[
                job_id,
                job.record_json(),
                "1" if job.paused else "0",
                JobRuntime.of(job).to_json(),
                *state,
            ],
            client=pipe,
        )

    def delete(self, job_id: str) -> None:
        """Drop the record, its index entry and projections; the record becomes a tombstone.

        Stored market data and run history are kept.
        """
        key, state_key = keys.job_key(job_id), keys.job_state_key(job_id)

        def txn(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            state: dict[str, str] = pipe.hgetall(state_key)  # type: ignore[assignment]
            pipe.multi()
            if raw:
                full = json.dumps(with_state(json.loads(str(raw)), state), sort_keys=True)
                pipe.set(keys.removed_job_key(job_id), full, ex=keys.REMOVED_TTL_S)
            pipe.delete(key, state_key)
            if not self._cluster:
                globalkeys.unlist(pipe, job_id)

        with storage_errors("WATCH/MULTI delete", key):
            self._r.transaction(txn, key, state_key)
            if self._cluster:  # the global keys are in other slots: just after
                globalkeys.unlist(self._r.pipeline(transaction=False), job_id).execute()

    def repair_projections(self, records: dict[str, ScheduledJob]) -> None:
        """Bring the paused set and the runtime hash in line with the records they mirror
        (older than these, a set lost, a cluster's write lost); at rest one read, no write."""
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
            self._r.pipeline(transaction=not self._cluster) as pipe,
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
    ) -> ScheduledJob:
        """Read-modify-write one record atomically, projections included.

        ``history``: a run-history entry appended in the same EXEC; ``paused``: the paused
        set is written to say so even when the record already does (a repair). A run's
        own result is ``record_fenced`` instead.
        """
        key, state_key = keys.job_key(job_id), keys.job_state_key(job_id)
        result: list[ScheduledJob] = []
        after: list[redis.client.Pipeline] = []  # a cluster's global writes, per attempt

        def txn(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            state = _state(pipe.hmget(state_key, list(RUNTIME_FIELDS)))  # type: ignore[arg-type]
            job = _decode(raw, None, state)
            if job is None:
                raise UnknownJobError(job_id)
            new = mutate(job)
            pipe.multi()
            migrate = len(state) < len(RUNTIME_FIELDS)
            globals_to = self._r.pipeline(transaction=False) if self._cluster else pipe
            after[:] = [globals_to] if self._cluster else []
            self._queue_update(pipe, globals_to, job, new, history, paused, migrate=migrate)
            result.append(new or job)

        with storage_errors("WATCH/MULTI update", key):
            self._r.transaction(txn, key, state_key)
            for pipe in after:
                pipe.execute()
        return result[-1]

    def _queue_update(
        self,
        pipe: redis.client.Pipeline,
        globals_to: redis.client.Pipeline,
        job: ScheduledJob,
        new: ScheduledJob | None,
        history: RunResult | None,
        paused: bool | None,
        *,
        migrate: bool,
    ) -> None:
        """Queue (inside MULTI) the new record with its projections, the entry, the index;
        the global keys' writes go to ``globals_to`` (``pipe`` but on a cluster).

        Only the key whose part changed is written: the spec JSON or the state hash.
        ``migrate``: the state hash is missing fields (a record of an older version, its
        runtime fields in the JSON), so both are written whole.
        """
        if migrate and new is None:
            new = job
        if new is not None:
            if migrate or new.record_json() != job.record_json():
                pipe.set(keys.job_key(job.job_id), new.record_json())
            if migrate or new.state_fields() != job.state_fields():
                state = new.state_fields()
                pipe.hset(keys.job_state_key(job.job_id), mapping={k: state[k] for k in state})
            _project(globals_to, job, new)
        if history is not None:
            self._history.queue(pipe, history)
        if paused is not None:
            _index_paused(globals_to, job.job_id, paused)


def _created(jobs: Sequence[ScheduledJob], replies: list[Any]) -> list[tuple[str, str, bool]]:
    """(id, projection, paused) of the jobs ``CREATE`` created, for ``after_creates``."""
    return [
        (j.job_id, JobRuntime.of(j).to_json(), j.paused)
        for j, r in zip(jobs, replies, strict=True)
        if r
    ]


def _queue_state_reads(
    pipe: redis.client.Pipeline, script: redis.commands.core.Script, state_keys: list[str]
) -> None:
    """The state hashes' reads for ``get_many``: HMGETs for a few, the script for many."""
    if len(state_keys) > FEW:
        script(keys=state_keys, client=pipe)
    else:
        for key in state_keys:
            pipe.hmget(key, list(RUNTIME_FIELDS))


def _states_read(replies: list[Any], count: int) -> list[Any]:
    """The runtime fields per record from what ``_queue_state_reads`` queued."""
    if count <= FEW:
        return replies
    n = len(RUNTIME_FIELDS)
    return [replies[0][k * n : k * n + n] for k in range(count)]


def _state(values: Sequence[object]) -> dict[str, str]:
    """The state hash's fields that are present, from an HMGET of ``RUNTIME_FIELDS``."""
    return {n: str(v) for n, v in zip(RUNTIME_FIELDS, values, strict=True) if v is not None}


def _decode(
    raw: object, known: tuple[str, JobSpec] | None, state: dict[str, str]
) -> ScheduledJob | None:
    if not raw:
        return None
    d = with_state(json.loads(str(raw)), state)
    if known is not None and d.get("spec_hash") == known[0]:
        d["spec"] = known[1]  # model_validate returns a JobSpec instance as it is
    return ScheduledJob.from_dict(d)


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
