"""Test-only lease operations, kept out of the product (the daemon never needs them).

``LeaseManagerForTests`` is the product's ``LeaseManager`` on a raw redis-py client,
plus the two half-steps of ``finish`` (release the lease; drop the in-flight record)
that the coordination tests take one at a time, and a read of the lease's run id.
"""

from __future__ import annotations

import redis

from stocksched.clock import Clock
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.cluster import is_cluster
from stocksched.storage.leases import DEFAULT_LEASE_MS, DEFAULT_SLOT_TTL_MS, Lease, LeaseManager

# KEYS: running. ARGV: token
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: inflight[, inflight index: a single Redis]. ARGV: run_id, job_id
_FINISH = """
local n = redis.call('HDEL', KEYS[1], ARGV[1])
if KEYS[2] and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return n
"""


class LeaseManagerForTests(LeaseManager):
    def __init__(
        self,
        client: redis.Redis,
        owner: str,
        lease_ms: int = DEFAULT_LEASE_MS,
        *,
        slot_ttl_ms: int = DEFAULT_SLOT_TTL_MS,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            RedisAdapter(client), owner, lease_ms, slot_ttl_ms=slot_ttl_ms, clock=clock
        )
        self._release = client.register_script(_RELEASE)
        self._finish = client.register_script(_FINISH)

    def release(self, lease: Lease) -> bool:
        """Delete the running lease if still ours; the slot claim stays."""
        return bool(self._release(keys=[keys.running_key(lease.job_id)], args=[lease.token]))

    def finish_inflight(self, job_id: str, run_id: str) -> bool:
        """Drop the run's record; False if a scan took it first."""
        return bool(
            self._finish(
                keys=[keys.inflight_key(job_id)]
                + ([] if is_cluster(self._r) else [keys.inflight_index_key()]),
                args=[run_id, job_id],
            )
        )

    def running_run_id(self, job_id: str) -> str | None:
        """The run id holding the job's running lease on any replica, if any."""
        holder = self.holder(job_id)
        return None if holder is None else holder[1]
