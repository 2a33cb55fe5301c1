"""Fencing: a run's writes land only while the run still holds its job's running lease.

A process frozen past its lease (SIGSTOP, a VM pause, a long GC) wakes up believing it
still runs the job, while another replica has recorded the run as interrupted and may be
re-running the slot. Every write a run makes -- its bars, its job-record updates, its
history entry -- therefore checks the lease owner in the same MULTI/EXEC: the lease key
is WATCHed and its owner read before MULTI, so a lease that changes hands before EXEC
aborts the write. A run that lost its lease writes nothing (``FenceLostError``).

The run's final write also marks its slot claim done (``done:{token}``), so a retry of
that write after a timeout (the first attempt did land) is recognised as already done
rather than as a lost lease.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from stocksched.storage import keys

DONE_PREFIX = "done:"


class FenceLostError(Exception):
    """The run no longer holds its job's running lease: nothing was written."""

    def __init__(self, job_id: str, run_id: str) -> None:
        super().__init__(f"run {run_id} of job {job_id} no longer holds the job's lease")
        self.job_id = job_id
        self.run_id = run_id


@dataclass(frozen=True)
class Fence:
    """The lease a run's writes are fenced by: job, run id and the owner token."""

    job_id: str
    run_id: str
    token: str

    @property
    def lease_key(self) -> str:
        return keys.running_key(self.job_id)

    @property
    def slot_key(self) -> str:
        return keys.slot_key(self.run_id)

    @property
    def inflight_key(self) -> str:
        return keys.inflight_key(self.job_id)

    @property
    def watched(self) -> tuple[str, str, str]:
        """The keys to WATCH before ``holds`` / ``done`` / ``alone_in_flight``."""
        return self.lease_key, self.slot_key, self.inflight_key

    def holds(self, pipe: redis.client.Pipeline) -> bool:
        """Whether the lease is still ours (call in immediate mode, after WATCH)."""
        return bool(pipe.hget(self.lease_key, "owner") == self.token)

    def done(self, pipe: redis.client.Pipeline) -> bool:
        """Whether this run's final write already landed (a retried final write)."""
        return bool(pipe.get(self.slot_key) == DONE_PREFIX + self.token)

    def check(self, pipe: redis.client.Pipeline) -> None:
        if not self.holds(pipe):
            raise FenceLostError(self.job_id, self.run_id)

    def alone_in_flight(self, pipe: redis.client.Pipeline) -> bool:
        """Whether this run's in-flight record is the job's only one (immediate mode)."""
        return bool(pipe.hkeys(self.inflight_key) == [self.run_id])

    def finish(self, pipe: redis.client.Pipeline, alone: bool) -> None:
        """Queue the end of the run (inside MULTI): lease and in-flight record gone, slot done.

        ``alone`` (from ``alone_in_flight``): the job leaves the crash-scan index too;
        otherwise a crashed run's record is still there for the scan to find.
        """
        pipe.delete(self.lease_key)
        pipe.hdel(self.inflight_key, self.run_id)
        if alone:
            pipe.srem(keys.inflight_index_key(), self.job_id)
        pipe.set(self.slot_key, DONE_PREFIX + self.token, keepttl=True)
