"""Fencing: a run's writes land only while the run still holds its job's running lease.

A process frozen past its lease (SIGSTOP, a VM pause, a long GC) wakes up believing it
still runs the job, while another replica has recorded the run as interrupted and may be
re-running the slot. Every write a run makes therefore checks the lease owner in the
same atomic step: its bars (``DataIOButler``) WATCH the lease key and read its owner
before MULTI, so a lease that changes hands before EXEC aborts the write; its result,
history entry and release are one script that checks the owner first
(``scripts.RECORD``). A run that lost its lease writes nothing (``FenceLostError``).

That script also marks the slot claim done (``DONE_PREFIX`` + token), so a retry of it
after a timeout (the first attempt did land) is recognised as already done rather than as
a lost lease.
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
    def watched(self) -> tuple[str]:
        """The keys to WATCH before ``check``."""
        return (self.lease_key,)

    def check(self, pipe: redis.client.Pipeline) -> None:
        """Raise FenceLostError unless the lease is still ours (immediate mode, after
        WATCH: a lease that changes hands before EXEC aborts the write)."""
        if pipe.hget(self.lease_key, "owner") != self.token:
            raise FenceLostError(self.job_id, self.run_id)
