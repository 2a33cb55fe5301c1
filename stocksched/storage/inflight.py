"""In-flight records: the evidence a crashed run leaves behind.

``scheduler:inflight:{job_id}`` is a hash ``run_id -> JSON`` with no expiry, written in
the same script that takes the running lease (stocksched.storage.leases), removed when
the run is recorded. A field whose run is not the one holding the running lease belongs
to a run whose heartbeat stopped: that run was interrupted. ``take_interrupted`` removes
and returns such fields in one Lua script per job, so when several replicas scan at
once each interrupted run is returned to exactly one of them. A hash (not one JSON
value) because a crashed run's record must survive while the next run of the same job
is already going. ``scheduler:inflight_index`` lists the jobs that have records, so the
scan reads a small set instead of SCANning a keyspace full of market data. On a Redis
Cluster the index is in another hash slot than the jobs' hashes, so the scripts leave it
alone: a claim adds the job just after its script (``globalkeys.after_claims``) and this
scan drops the ids whose hash is gone, then looks at those hashes again and puts back any
a claim wrote meanwhile -- the index stays a superset of the jobs with records.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stocksched.clock import Clock
from stocksched.model import Trigger, iso, parse_iso
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, storage_errors
from stocksched.storage.cluster import is_cluster

log = logging.getLogger(__name__)

# KEYS: inflight, running[, inflight index: a single Redis]. ARGV: job_id, dead owner
# prefix or ''
# Returns {run_id, json, run_id, json, ...} of records no live lease covers, deleting them.
_TAKE_INTERRUPTED = """
local live = false
local owner = redis.call('HGET', KEYS[2], 'owner')
if owner then
  if ARGV[2] ~= '' and string.sub(owner, 1, string.len(ARGV[2])) == ARGV[2] then
    redis.call('DEL', KEYS[2])
  else
    live = redis.call('HGET', KEYS[2], 'run_id')
  end
end
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  if all[i] ~= live then
    redis.call('HDEL', KEYS[1], all[i])
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
if KEYS[3] and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
end
return out
"""


@dataclass(frozen=True)
class InflightRun:
    """What is known of a run in progress; enough to record it as interrupted."""

    job_id: str
    run_id: str
    trigger: Trigger
    scheduled_for: datetime | None
    started_at: datetime
    owner: str  # lease token ("{replica}/{random}") or replica id of the runner

    def to_json(self) -> str:
        return json.dumps(
            {
                "job_id": self.job_id,
                "run_id": self.run_id,
                "trigger": str(self.trigger),
                "scheduled_for": iso(self.scheduled_for),
                "started_at": iso(self.started_at),
                "owner": self.owner,
            }
        )

    @classmethod
    def from_json(cls, job_id: str, run_id: str, raw: str, fallback_now: datetime) -> InflightRun:
        """Parse a stored record; a damaged one still yields the run (its id is the field)."""
        try:
            d = json.loads(raw)
            return cls(
                job_id=job_id,
                run_id=run_id,
                trigger=Trigger(d["trigger"]),
                scheduled_for=parse_iso(d.get("scheduled_for")),
                started_at=parse_iso(d.get("started_at")) or fallback_now,
                owner=str(d.get("owner", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(
                "damaged in-flight record job=%s run_id=%s: %s",
                job_id,
                run_id,
                exc,
                extra={"job": job_id, "run_id": run_id},
            )
            return cls(job_id, run_id, Trigger.SCHEDULE, None, fallback_now, "")


class InflightRecords:
    """The crash scan over ``scheduler:inflight:*`` (written and ended by LeaseManager)."""

    def __init__(self, adapter: RedisAdapter, clock: Clock) -> None:
        self._r = adapter.client
        self._cluster = is_cluster(self._r)
        self._clock = clock
        self._take = self._r.register_script(_TAKE_INTERRUPTED)

    def take_interrupted(self, *, dead_replica: str | None = None) -> list[InflightRun]:
        """Take the records whose running lease is gone; see ``LeaseManager.find_interrupted``."""
        if dead_replica is not None and (not dead_replica or "/" in dead_replica):
            raise ValueError("dead_replica must be a replica id")
        with storage_errors("SMEMBERS", keys.inflight_index_key()):
            job_ids = sorted(str(j) for j in self._r.smembers(keys.inflight_index_key()))
        prefix = f"{dead_replica}/" if dead_replica else ""
        found: list[InflightRun] = []
        for job_id in job_ids:
            found.extend(self._take_job(job_id, prefix))
        if self._cluster:
            self._prune(job_ids)
        return found

    def _prune(self, job_ids: list[str]) -> None:
        """A cluster's index upkeep: drop the jobs whose hash is gone, then put back any
        whose hash a claim wrote in between (it adds the id only after writing the hash)."""
        if not job_ids:
            return
        with storage_errors("SREM", keys.inflight_index_key()):
            gone = [j for j, n in zip(job_ids, self._exist(job_ids), strict=True) if not n]
            if not gone:
                return
            self._r.srem(keys.inflight_index_key(), *gone)
            back = [j for j, n in zip(gone, self._exist(gone), strict=True) if n]
            if back:
                self._r.sadd(keys.inflight_index_key(), *back)

    def _exist(self, job_ids: list[str]) -> list[int]:
        with self._r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(keys.inflight_key(job_id))
            return [int(n) for n in pipe.execute()]

    def _take_job(self, job_id: str, dead_prefix: str) -> list[InflightRun]:
        key = keys.inflight_key(job_id)
        with storage_errors("EVALSHA take_interrupted", key):
            flat: list[Any] = self._take(
                keys=[key, keys.running_key(job_id)]
                + ([] if self._cluster else [keys.inflight_index_key()]),
                args=[job_id, dead_prefix],
            )
        now = self._clock.now()
        return [
            InflightRun.from_json(job_id, str(flat[i]), str(flat[i + 1]), now)
            for i in range(0, len(flat), 2)
        ]
