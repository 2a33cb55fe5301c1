"""The global keys' writes apart from a job's script, for a Redis Cluster.

On a single Redis each run-path script (``scripts.CLAIM``, ``RECORD``, ``CREATE``) keeps
the global keys in step with the job's own keys in the same atomic step. On a cluster a
script runs on one hash slot only, so the scripts write the job's keys (one slot, its
hash tag) and the callers send these writes right after, one pipeline for a whole batch:

- the in-flight index gains the job after its claim wrote the in-flight record (after,
  so the crash scan, which drops ids whose hash is gone and then looks again, never
  drops an id whose record exists);
- the runtime projection follows a claim's "running" and a record's run times
  (``scripts.PROJECT``); a write lost between the two (the process died in between) is
  overwritten by the job's next run; a missing entry is rebuilt at reconcile;
- a new record's job index entry, projection and paused membership; a record left
  unindexed is put back in the index at reconcile (``JobRecords.index``).

The job's keys are the truth; these keys are what every replica reads to list, gauge
and follow pauses, and a claim reads the record's own pause there, not the paused set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import NoScriptError

from stocksched.storage import keys, scripts


@dataclass(frozen=True)
class Projected:
    """A runtime projection update: the status and, when known, the run times (Unix s)."""

    job_id: str
    status: str
    last_run: str = ""  # "" keeps the stored one
    last_success: str = ""


def after_claims(client: redis.Redis[str], claimed: Sequence[tuple[str, bool]]) -> None:
    """For each (job id, marked running) a claim won: the in-flight index entry, and the
    projection's status when the claim marked the job running."""
    if not claimed:
        return
    calls = [_project_call(Projected(job_id, "running")) for job_id, mark in claimed if mark]
    sha = hashlib.sha1(scripts.PROJECT.encode()).hexdigest()
    with client.pipeline(transaction=False) as pipe:  # one round trip (per node)
        pipe.sadd(keys.inflight_index_key(), *sorted({job_id for job_id, _ in claimed}))
        for c in calls:
            pipe.evalsha(sha, len(c["keys"]), *c["keys"], *c["args"])
        replies = pipe.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, NoScriptError):  # not loaded yet: load it, send the calls again
            scripts.evalsha_many(client, scripts.PROJECT, calls)
            return
        if isinstance(reply, Exception):
            raise reply


def project(client: redis.Redis[str], updates: Sequence[Projected]) -> None:
    """The projection entries of recorded runs, in one round trip."""
    if updates:
        scripts.evalsha_many(client, scripts.PROJECT, [_project_call(p) for p in updates])


def _project_call(p: Projected) -> scripts.Call:
    return {
        "keys": [keys.job_runtime_key()],
        "args": [p.job_id, p.status, p.last_run, p.last_success],
    }


def after_creates(client: redis.Redis[str], created: Sequence[tuple[str, str, bool]]) -> None:
    """For each (job id, projection JSON, paused) of a new record: its index entry, its
    projection, its paused membership."""
    if not created:
        return
    paused = [job_id for job_id, _, p in created if p]
    with client.pipeline(transaction=False) as pipe:
        pipe.sadd(keys.job_index_key(), *(job_id for job_id, _, _ in created))
        pipe.hset(keys.job_runtime_key(), mapping={job_id: rt for job_id, rt, _ in created})
        if paused:
            pipe.sadd(keys.paused_index_key(), *paused)
        pipe.execute()


def unlist(pipe: Any, job_id: str) -> Any:
    """Queue a deleted job's removal from the index and the projections (inside the
    record's MULTI on a single Redis, in a pipeline of its own on a cluster)."""
    pipe.srem(keys.job_index_key(), job_id)
    pipe.srem(keys.paused_index_key(), job_id)
    return pipe.hdel(keys.job_runtime_key(), job_id)
