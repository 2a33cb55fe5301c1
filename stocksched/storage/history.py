"""The run history (``scheduler:runs:{id}``, a capped stream) and a run's own result.

``RunHistory`` owns the stream: reads newest first, entries appended on their own or
inside a record update (``queue``), and ``record_fenced``, the one script that ends a
run: it writes the job's runtime fields (``keys.job_state_key``, owned by
``jobs.JobRecords``) and their projection, appends the entry, and releases the run's
lease, fenced by it -- a run's result is one round trip (issue 11). On a Redis Cluster
the projection follows in a second round trip (``stocksched.storage.globalkeys``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from stocksched.model import JobStatus, RunResult, iso
from stocksched.storage import globalkeys, keys, scripts
from stocksched.storage.adapter import RedisAdapter, StorageError, storage_errors
from stocksched.storage.cluster import is_cluster
from stocksched.storage.fence import Fence, FenceLostError


class RunHistory:
    """The run-history streams of one Redis; every method raises StorageError when it fails."""

    def __init__(self, adapter: RedisAdapter, history_limit: int = 1000) -> None:
        self._r = adapter.client
        self._cluster = is_cluster(self._r)
        self._history_limit = history_limit

    def runs(self, job_id: str, limit: int) -> list[RunResult]:
        """Run history, newest first."""
        with storage_errors("XREVRANGE", keys.runs_key(job_id)):
            entries = self._r.xrevrange(keys.runs_key(job_id), count=limit)
        return [RunResult.from_fields(job_id, dict(f)) for _id, f in entries]

    def add(self, results: Sequence[RunResult]) -> None:
        """History entries without touching the records, in one EXEC."""
        if not results:
            return
        with (
            storage_errors("XADD", keys.runs_key(results[0].job_id)),
            # on a cluster the jobs' streams may be in several slots: each XADD on its own
            self._r.pipeline(transaction=not self._cluster) as pipe,
        ):
            for result in results:
                self.queue(pipe, result)
            pipe.execute()

    def queue(self, pipe: redis.client.Pipeline, result: RunResult) -> None:
        """Queue one entry's XADD (inside a caller's MULTI)."""
        pipe.xadd(
            keys.runs_key(result.job_id),
            result.to_fields(),
            maxlen=self._history_limit,
            approximate=True,
        )

    def record_fenced(
        self, result: RunResult, fence: Fence, status: JobStatus, success: bool
    ) -> bool:
        """A run's result in one script (``scripts.RECORD``): the job's runtime fields,
        its history entry, the end of its lease.

        False: the job left the config (history only). A retry of a write that landed is
        a success; a run that lost its lease writes nothing (FenceLostError).
        """
        answer = self.record_fenced_many([Fenced(result, fence, status, success)])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def record_fenced_many(self, runs: Sequence[Fenced]) -> list[RecordAnswer]:
        """``record_fenced`` for each run in one round trip: a pipeline of ``RECORD``
        scripts, each atomic and fenced by its own run's lease (issue 11: a burst of
        results costs one round trip, not one each).

        One answer per run, in order: True or False as ``record_fenced`` returns, or the
        FenceLostError (that run wrote nothing) or StorageError (Redis refused that
        script: out of memory, read-only) of that run alone. StorageError is raised when
        the round trip itself failed: then nothing is known to be written.
        """
        if not runs:
            return []
        calls = [self._record_call(run) for run in runs]
        with storage_errors("EVALSHA record", keys.job_key(runs[0].result.job_id)):
            replies = scripts.evalsha_many(self._r, scripts.RECORD, calls, raise_on_error=False)
            if self._cluster:
                done = zip(runs, replies, strict=True)
                globalkeys.project(self._r, [_projected(r) for r, out in done if out == "recorded"])
        return [_answer(run, out) for run, out in zip(runs, replies, strict=True)]

    def _record_call(self, run: Fenced) -> scripts.Call:
        """The ``RECORD`` script's keys and arguments for one run."""
        result, fence = run.result, run.fence
        job_id, finished = result.job_id, iso(result.finished_at)
        ts = json.dumps(result.finished_at.timestamp())
        entry = [x for kv in result.to_fields().items() for x in kv]
        return {
            "keys": scripts.record_keys(job_id, fence.run_id, cluster=self._cluster),
            "args": [
                fence.token,
                fence.run_id,
                job_id,
                str(run.status),
                finished,
                ts,
                finished if run.success else "",
                ts if run.success else "",
                json.dumps(result.summary()),
                self._history_limit,
                *entry,
            ],
        }


@dataclass(frozen=True)
class Fenced:
    """One run's result to record, fenced by its lease; ``status`` is the job's after it,
    ``success`` whether it moves the job's last success."""

    result: RunResult
    fence: Fence
    status: JobStatus
    success: bool


#: What recording one run of a batch came to (``RunHistory.record_fenced_many``).
RecordAnswer = bool | FenceLostError | StorageError


def _projected(run: Fenced) -> globalkeys.Projected:
    """The projection entry ``RECORD`` writes on a single Redis, for a cluster's ``PROJECT``."""
    ts = json.dumps(run.result.finished_at.timestamp())
    return globalkeys.Projected(run.result.job_id, str(run.status), ts, ts if run.success else "")


def _answer(run: Fenced, out: object) -> RecordAnswer:
    if isinstance(out, redis.RedisError):
        return StorageError("EVALSHA record", keys.job_key(run.result.job_id), str(out))
    if out == "lost":
        return FenceLostError(run.fence.job_id, run.fence.run_id)
    return bool(out != "unknown")
