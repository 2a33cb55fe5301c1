"""Fencing: a run's writes land only while the run still holds its job's running lease.

A process frozen past its lease (SIGSTOP, a VM pause, a long GC) wakes up believing it
still runs the job, while another replica has recorded the run as interrupted and may be
re-running the slot. Every write a run makes therefore checks the lease owner in the
same atomic step: its bars (``DataIOButler``) WATCH the lease key and read its owner
before MULTI, so a lease that changes hands before EXEC aborts the write; its result,
history entry and release are one script that checks the owner first
(``scripts.RECORD``). A run that lost its lease writes nothing (``FenceLostError``).

On a Redis Cluster a run's bars are in its tickers' hash slots and its lease in its job's,
so no one step can hold both: there the fence is checked just before the write instead
(``check_apart``), which still stops a run that lost its lease before it writes, but not
one that loses it in the round trip between check and write -- a window of one round trip
instead of none; what it can write then is the bars it fetched, which the rerun's upsert
merges with (the series store is idempotent).

That script also marks the slot claim done (``DONE_PREFIX`` + token), so a retry of it
after a timeout (the first attempt did land) is recognised as already done rather than as
a lost lease.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def check_apart(client: redis.Redis[str], fences: Sequence[Fence]) -> None:
    """A cluster's fence: raise FenceLostError unless every lease is still held, read in
    one round trip just before the write (see the module docstring for what it misses)."""
    with client.pipeline(transaction=False) as pipe:
        for fence in fences:
            pipe.hget(fence.lease_key, "owner")
        owners = pipe.execute()
    for fence, owner in zip(fences, owners, strict=True):
        if owner != fence.token:
            raise FenceLostError(fence.job_id, fence.run_id)
