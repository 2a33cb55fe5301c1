"""Slot claims, run leases and in-flight records: what lets several replicas share one Redis.

Several daemons share one ``jobs.yaml`` and one Redis. Three promises need three keys,
because each outlives a different thing:

``scheduler:slot:{run_id}`` -- *each slot runs at most once.*
    A plain string (owner token), ``SET NX PX`` with a long expiry (``slot_ttl_ms``,
    default one day) and never released or extended. Run ids are deterministic
    (``{job}:{unix_ms(slot)}``, as arq names cron runs), so every replica computes the
    same id for a slot and only the first ``SET NX`` wins, however late the others are
    and whether or not the winner has finished. Releasing it at the end of the run
    would let a replica that is a little behind run a finished slot again. The expiry
    only bounds memory (one key per slot per job); it must exceed the catch-up window
    plus any replica's lag, since a slot older than the expiry may be claimed again.

``scheduler:running:{job_id}`` -- *a job never runs twice at once.*
    A hash ``{owner: token, run_id: ...}`` with a short expiry (``lease_ms``, 30 s),
    extended by the owner's ``LeaseKeeper`` (stocksched.coordination) while the run
    lasts and deleted with a compare-and-delete at the end. This is the heartbeat of the
    run: a replica that dies stops extending it, so it expires within ``lease_ms``.
    Manual triggers take it too, so a manual run and a scheduled one never overlap
    across replicas.

``scheduler:inflight:{job_id}`` -- *a crash leaves evidence* (stocksched.storage.inflight).

Claiming is one script (``scripts.CLAIM``): if the slot is taken nothing happens (``SLOT_TAKEN``);
otherwise the slot becomes ours, and either the job is free and we also get the
running lease and the in-flight record (``CLAIMED``), or another run holds the job
(``JOB_BUSY``) and we own only the slot, so we alone record it as skipped, or queue
it and take the lease later with ``wait_lease_job``. Slots that will
not run at all (missed while down, market closed) are claimed with ``claim_slots``
before they are recorded, so several replicas write one history entry per slot. A
claim that wins may also mark the job running (``MarkRunning``), in the same script.
All three keys carry the job id as hash tag (``scheduler:slot:{job}:...``), so on a
Redis Cluster the claim is still one script; the in-flight index and the runtime
projection follow in a second round trip there (``stocksched.storage.globalkeys``).

Limits, stated rather than hidden: a lease is time-based, so a run whose process
stalls (or whose Redis is unreachable) for longer than ``lease_ms`` loses it while
still running; ``LeaseKeeper`` reports that through its callback so the run can be
flagged, and another replica may meanwhile record the run as interrupted.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from stocksched.clock import Clock, SystemClock
from stocksched.model import Trigger, iso
from stocksched.storage import globalkeys, keys, scripts
from stocksched.storage.adapter import RedisAdapter, storage_errors
from stocksched.storage.cluster import is_cluster
from stocksched.storage.fence import Fence
from stocksched.storage.inflight import InflightRecords, InflightRun

DEFAULT_LEASE_MS = 30_000
DEFAULT_SLOT_TTL_MS = 86_400_000  # one day


class ClaimOutcome(StrEnum):
    PAUSED = "paused"  # the job is paused in Redis (through any replica): nothing is taken
    CLAIMED = "claimed"  # slot and job lease are ours: run it
    SLOT_TAKEN = "slot_taken"  # another replica (or an earlier claim) has this slot: do nothing
    JOB_BUSY = "job_busy"  # the slot is ours, but another run holds the job: skip or queue


@dataclass(frozen=True)
class Lease:
    """A held per-job running lease; ``token`` is ``{replica_id}/{incarnation}.{random}``."""

    job_id: str
    run_id: str
    token: str
    lease_ms: int

    @property
    def replica_id(self) -> str:
        return self.token.rsplit("/", 1)[0]

    def fence(self) -> Fence:
        """What the run's writes check: this lease still held (see stocksched.storage.fence)."""
        return Fence(self.job_id, self.run_id, self.token)


@dataclass(frozen=True)
class MarkRunning:
    """What a claim also writes to the job's runtime fields when it wins: status running,
    and for a scheduled slot its next slot (``moves_next_run``), in the same script, so a
    run's start is one round trip."""

    next_run: datetime | None = None
    moves_next_run: bool = True

    @classmethod
    def keeping_next_run(cls) -> MarkRunning:
        """For a manual run: next_run does not move."""
        return cls(None, moves_next_run=False)

    def args(self) -> list[str]:
        return ["next" if self.moves_next_run else "keep", iso(self.next_run)]


@dataclass(frozen=True)
class ClaimRequest:
    """One slot to claim in ``try_claim_many`` (as the arguments of ``try_claim``)."""

    job_id: str
    run_id: str
    trigger: Trigger
    scheduled_for: datetime | None
    started_at: datetime | None
    slot_ttl_ms: int | None
    mark: MarkRunning | None


@dataclass(frozen=True)
class ClaimResult:
    outcome: ClaimOutcome
    lease: Lease | None = None
    busy_with: str | None = None  # run id holding the job, for JOB_BUSY


class LeaseManager:
    """Claims and extends slots and per-job running leases for one replica, and ends runs."""

    def __init__(
        self,
        adapter: RedisAdapter,
        owner: str,
        lease_ms: int = DEFAULT_LEASE_MS,
        *,
        slot_ttl_ms: int = DEFAULT_SLOT_TTL_MS,
        clock: Clock | None = None,
    ) -> None:
        if lease_ms < 10 or slot_ttl_ms < lease_ms:
            raise ValueError("need lease_ms >= 10 and slot_ttl_ms >= lease_ms")
        if not owner or "/" in owner:
            raise ValueError("owner (the replica id) must be non-empty and contain no '/'")
        client = adapter.client
        self._r = client
        self._cluster = is_cluster(client)
        self.owner = owner
        self.lease_ms = lease_ms
        self.slot_ttl_ms = slot_ttl_ms
        self._clock = clock or SystemClock()
        self._claim = client.register_script(scripts.CLAIM)
        self._claim_slots = client.register_script(scripts.CLAIM_SLOTS)
        self._extend = client.register_script(scripts.EXTEND)
        self._finish_run = client.register_script(scripts.FINISH_RUN)
        self._inflight = InflightRecords(adapter, self._clock)
        # One per manager (per process): a restart with a stable replica id must not take
        # its crashed predecessor's slot claims for its own (see ``claim_slots``).
        self._incarnation = secrets.token_hex(4)

    def _new_token(self) -> str:
        return f"{self.owner}/{self._incarnation}.{secrets.token_hex(6)}"

    # -- claiming ----------------------------------------------------------------

    def try_claim(
        self,
        job_id: str,
        run_id: str,
        *,
        trigger: Trigger = Trigger.SCHEDULE,
        scheduled_for: datetime | None = None,
        started_at: datetime | None = None,
        slot_ttl_ms: int | None = None,
        mark: MarkRunning | None = None,
    ) -> ClaimResult:
        """Claim slot ``run_id`` and, if the job is free, its running lease and in-flight
        record; with ``mark``, the job is marked running in the same step."""
        record = self._record(job_id, run_id, trigger, scheduled_for, started_at)
        return self._run_claim(record, take_slot=True, slot_ttl_ms=slot_ttl_ms, mark=mark)

    def claim(
        self,
        job_id: str,
        run_id: str,
        *,
        trigger: Trigger = Trigger.SCHEDULE,
        scheduled_for: datetime | None = None,
        started_at: datetime | None = None,
        mark: MarkRunning | None = None,
    ) -> Lease | None:
        """The lease when this replica should run the slot now, else None."""
        kw = {"scheduled_for": scheduled_for, "started_at": started_at, "mark": mark}
        return self.try_claim(job_id, run_id, trigger=trigger, **kw).lease  # type: ignore[arg-type]

    def wait_lease_job(
        self,
        job_id: str,
        run_id: str,
        *,
        stop: threading.Event,
        timeout_s: float,
        poll_s: float = 0.25,
        trigger: Trigger = Trigger.SCHEDULE,
        scheduled_for: datetime | None = None,
        mark: MarkRunning | None = None,
    ) -> Lease | None:
        """Only the running lease (plus in-flight record) for a slot already claimed here
        (its ``try_claim`` said JOB_BUSY), retried until the job is free: a queued slot
        behind another replica.

        None when ``stop`` is set, ``timeout_s`` passes or the job is paused first;
        StorageError propagates.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            record = self._record(job_id, run_id, trigger, scheduled_for, None)
            res = self._run_claim(record, take_slot=False, slot_ttl_ms=None, mark=mark)
            if res.outcome != ClaimOutcome.JOB_BUSY:
                return res.lease  # None when the job was paused meanwhile
            left = deadline - time.monotonic()
            if left <= 0 or stop.wait(min(poll_s, left)):
                return None

    def claim_slots(self, run_ids: Sequence[str], *, slot_ttl_ms: int | None = None) -> list[bool]:
        """Claim slots that will not run (missed, skipped), so one replica alone records each.

        True per slot this manager now owns; idempotent for this manager, so a history
        write retried after an outage claims the same slots again. Not for an earlier
        process with the same replica id: a slot its crashed run claimed is recorded as
        interrupted by the crash scan, and must not also be recorded here as missed.
        """
        if not run_ids:
            return []
        first = keys.slot_key(run_ids[0])
        with storage_errors("EVALSHA claim_slots", first):
            won = self._claim_slots(
                keys=[keys.slot_key(r) for r in run_ids],
                args=[
                    self._new_token(),
                    slot_ttl_ms or self.slot_ttl_ms,
                    f"{self.owner}/{self._incarnation}.",
                ],
            )
        return [bool(w) for w in won]

    def _record(
        self,
        job_id: str,
        run_id: str,
        trigger: Trigger,
        scheduled_for: datetime | None,
        started_at: datetime | None,
    ) -> InflightRun:
        """The in-flight record a claim writes, owned by a fresh token."""
        started = started_at or self._clock.now()
        return InflightRun(job_id, run_id, trigger, scheduled_for, started, self._new_token())

    def _run_claim(
        self,
        record: InflightRun,
        *,
        take_slot: bool,
        slot_ttl_ms: int | None,
        mark: MarkRunning | None,
    ) -> ClaimResult:
        with storage_errors("EVALSHA claim", keys.slot_key(record.run_id)):
            reply = self._claim(**self._claim_call(record, take_slot, slot_ttl_ms, mark))
            result = self._claim_result(record, reply)
            if self._cluster and result.lease is not None:
                globalkeys.after_claims(self._r, [(record.job_id, mark is not None)])
        return result

    def try_claim_many(self, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
        """``try_claim`` for each request in one round trip: a pipeline of claim scripts,
        each atomic on its own (a burst of due slots claimed at once, issue 11)."""
        if not requests:
            return []
        records = [
            self._record(q.job_id, q.run_id, q.trigger, q.scheduled_for, q.started_at)
            for q in requests
        ]
        calls = [
            self._claim_call(r, True, q.slot_ttl_ms, q.mark)
            for q, r in zip(requests, records, strict=True)
        ]
        with storage_errors("EVALSHA claim", keys.slot_key(requests[0].run_id)):
            replies = scripts.evalsha_many(self._r, scripts.CLAIM, calls)
            out = [self._claim_result(r, reply) for r, reply in zip(records, replies, strict=True)]
            if self._cluster:
                won = zip(out, requests, strict=True)
                globalkeys.after_claims(
                    self._r, [(q.job_id, q.mark is not None) for r, q in won if r.lease]
                )
        return out

    def _claim_call(
        self,
        record: InflightRun,
        take_slot: bool,
        slot_ttl_ms: int | None,
        mark: MarkRunning | None,
    ) -> dict[str, list[str | int]]:
        """The claim script's keys and arguments (``scripts.CLAIM``)."""
        job_id, run_id = record.job_id, record.run_id
        return {
            "keys": scripts.claim_keys(job_id, run_id, cluster=self._cluster),
            "args": [
                record.owner,
                run_id,
                self.lease_ms,
                slot_ttl_ms or self.slot_ttl_ms,
                record.to_json(),
                job_id,
                "1" if take_slot else "0",
                # Scheduled runs only: an operator's manual trigger runs a paused job.
                "1" if record.trigger == Trigger.SCHEDULE else "0",
                *(mark.args() if mark is not None else ["", ""]),
            ],
        }

    def _claim_result(self, record: InflightRun, reply: list[str]) -> ClaimResult:
        outcome, holder = reply
        result = ClaimOutcome(str(outcome))
        if result == ClaimOutcome.CLAIMED:
            lease = Lease(record.job_id, record.run_id, record.owner, self.lease_ms)
            return ClaimResult(result, lease=lease)
        if result == ClaimOutcome.JOB_BUSY:
            return ClaimResult(result, busy_with=str(holder))
        return ClaimResult(result)

    # -- holding and ending ----------------------------------------------------------

    def extend(self, lease: Lease) -> bool:
        """Push the expiry out by ``lease_ms``; False when the lease is no longer ours."""
        key = keys.running_key(lease.job_id)
        with storage_errors("EVALSHA extend", key):
            return bool(self._extend(keys=[key], args=[lease.token, lease.lease_ms]))

    def finish(self, lease: Lease) -> bool:
        """End a recorded run: drop its in-flight record and release its lease, atomically.

        Call after the run's outcome is stored; the slot claim stays so the slot never
        reruns. False when a crash scan had already taken the record (the lease was lost
        and the run recorded as interrupted).
        """
        key = keys.inflight_key(lease.job_id)
        with storage_errors("EVALSHA finish_run", key):
            return bool(
                self._finish_run(
                    keys=[key, keys.running_key(lease.job_id)]
                    + ([] if self._cluster else [keys.inflight_index_key()]),
                    args=[lease.run_id, lease.job_id, lease.token],
                )
            )

    def holder(self, job_id: str) -> tuple[str, str] | None:
        """(replica id, run id) of the job's running lease, held on any replica; None if free.
        A read for messages only: ``claim`` decides. A field the hash lacks reads as ``?``."""
        key = keys.running_key(job_id)
        with storage_errors("HMGET", key):
            owner, run_id = self._r.hmget(key, ["owner", "run_id"])
        if owner is None and run_id is None:
            return None
        return str(owner or "?").rsplit("/", 1)[0], str(run_id or "?")

    # -- crashes -------------------------------------------------------------------

    def find_interrupted(self, *, dead_replica: str | None = None) -> list[InflightRun]:
        """Take the in-flight records whose running lease is gone; each goes to one caller only.

        ``dead_replica``: leases whose token starts with this replica id are treated as
        expired. Pass the replica's own id once at startup, before its first claim, when
        replica ids are stable and unique among live daemons (then a crash is found at
        restart instead of ``lease_ms`` later). Never pass another live replica's id.
        """
        return self._inflight.take_interrupted(dead_replica=dead_replica)
