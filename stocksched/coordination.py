"""Redis coordination between replicas: slot claims, run leases, crash records, heartbeats.

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
    extended by the owner's ``LeaseKeeper`` while the run lasts and deleted with a
    compare-and-delete at the end. This is the heartbeat of the run: a replica that
    dies stops extending it, so it expires within ``lease_ms``. Manual triggers take
    it too, so a manual run and a scheduled one never overlap across replicas.

``scheduler:inflight:{job_id}`` -- *a crash leaves evidence.*
    A hash ``run_id -> JSON`` with no expiry, written in the same script that takes
    the running lease, removed when the run is recorded. A field whose run is not the
    one holding the running lease belongs to a run whose heartbeat stopped: that run
    was interrupted. ``find_interrupted`` removes and returns such fields in one Lua
    script per job, so when several replicas scan at once each interrupted run is
    returned to exactly one of them. A hash (not one JSON value) because a crashed
    run's record must survive while the next run of the same job is already going.
    ``scheduler:inflight_index`` lists the jobs that have records, so the scan reads
    a small set instead of SCANning a keyspace full of market data.

Claiming is one script: if the slot is taken nothing happens (``SLOT_TAKEN``);
otherwise the slot becomes ours, and either the job is free and we also get the
running lease and the in-flight record (``CLAIMED``), or another run holds the job
(``JOB_BUSY``) and we own only the slot, so we alone record it as skipped, or queue
it and take the lease later with ``lease_job`` / ``wait_lease_job``. Slots that will
not run at all (missed while down, market closed) are claimed with ``claim_slots``
before they are recorded, so several replicas write one history entry per slot.

Limits, stated rather than hidden: a lease is time-based, so a run whose process
stalls (or whose Redis is unreachable) for longer than ``lease_ms`` loses it while
still running; ``LeaseKeeper`` reports that through its callback so the run can be
flagged, and another replica may meanwhile record the run as interrupted. The
scripts touch several keys, so this targets one Redis (or a primary with
replicas), not Redis Cluster.

Replica heartbeats are ``scheduler:replica:{id}`` (JSON, ``PX`` expiry) plus a sorted
set ``scheduler:replica_index`` scored by expiry in Redis server time, pruned on read:
listing costs O(live replicas) and needs no agreement between replicas' clocks.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import redis

from stocksched.clock import Clock, SystemClock
from stocksched.model import Trigger, iso, parse_iso
from stocksched.storage import keys
from stocksched.storage.adapter import StorageError, storage_errors
from stocksched.storage.fence import Fence

log = logging.getLogger(__name__)

DEFAULT_LEASE_MS = 30_000
DEFAULT_SLOT_TTL_MS = 86_400_000  # one day
DEFAULT_REPLICA_TTL_S = 15.0

# KEYS: slot, running, inflight, inflight index, paused set
# ARGV: token, run_id, lease_ms, slot_ttl_ms, record json, job_id, take_slot ("1"/"0"),
#       honour_pause ("1"/"0")
# A retry by the same owner (redis-py resends a script after a timeout) is a success.
_CLAIM = """
if redis.call('HGET', KEYS[2], 'owner') == ARGV[1] then
  return {'claimed', ''}
end
if ARGV[8] == '1' and redis.call('SISMEMBER', KEYS[5], ARGV[6]) == 1 then
  return {'paused', ''}
end
local slot = redis.call('GET', KEYS[1])
if ARGV[7] == '1' and slot and slot ~= ARGV[1] then
  return {'slot_taken', ''}
end
local holder = redis.call('HGET', KEYS[2], 'run_id')
if ARGV[7] == '1' and not slot then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
end
if holder then
  return {'job_busy', holder}
end
redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'run_id', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
redis.call('SADD', KEYS[4], ARGV[6])
return {'claimed', ''}
"""

# KEYS: slot keys. ARGV: token, slot_ttl_ms, owner prefix ("{replica}/{incarnation}.")
# Per key 1 when the slot is now ours (newly, or already by this process), else 0.
_CLAIM_SLOTS = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  elseif string.sub(v, 1, string.len(ARGV[3])) == ARGV[3] then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: running. ARGV: token, lease_ms
_EXTEND = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: running. ARGV: token
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: inflight, inflight index. ARGV: run_id, job_id
_FINISH = """
local n = redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return n
"""

# KEYS: inflight, inflight index, running. ARGV: run_id, job_id, token
# The end of a run in one step: record gone and lease gone, never one without the other.
_FINISH_RUN = """
local n = redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[2])
end
if redis.call('HGET', KEYS[3], 'owner') == ARGV[3] then
  redis.call('DEL', KEYS[3])
end
return n
"""

# KEYS: inflight, running, inflight index. ARGV: job_id, dead owner prefix or ''
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
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
end
return out
"""

# Server time in ms, so replicas with skewed clocks agree on expiry.
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: replica, replica index. ARGV: json, ttl_ms, replica_id
_BEAT = (
    _NOW_MS
    + """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], string.format('%d', now + tonumber(ARGV[2])), ARGV[3])
return 1
"""
)

# KEYS: replica index. Returns the ids whose heartbeat has not expired yet.
_PRUNE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)


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
class ClaimResult:
    outcome: ClaimOutcome
    lease: Lease | None = None
    busy_with: str | None = None  # run id holding the job, for JOB_BUSY


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


def rerun_run_id(run_id: str) -> str:
    """Deterministic id for re-running an interrupted run (its own id's slot stays claimed).

    ``job:1700000000000`` -> ``job:1700000000000-r1`` -> ``...-r2``; deterministic so
    that two replicas deciding to rerun the same run still claim one slot.
    """
    base, sep, n = run_id.rpartition("-r")
    if sep and n.isdigit() and ":" in base:
        return f"{base}-r{int(n) + 1}"
    return f"{run_id}-r1"


class LeaseManager:
    """Claims, extends and releases slots and per-job running leases for one replica."""

    def __init__(
        self,
        client: redis.Redis,
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
        self._r = client
        self.owner = owner
        self.lease_ms = lease_ms
        self.slot_ttl_ms = slot_ttl_ms
        self._clock = clock or SystemClock()
        self._claim = client.register_script(_CLAIM)
        self._claim_slots = client.register_script(_CLAIM_SLOTS)
        self._extend = client.register_script(_EXTEND)
        self._release = client.register_script(_RELEASE)
        self._finish = client.register_script(_FINISH)
        self._finish_run = client.register_script(_FINISH_RUN)
        self._take = client.register_script(_TAKE_INTERRUPTED)
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
    ) -> ClaimResult:
        """Claim slot ``run_id`` and, if the job is free, its running lease and in-flight record."""
        return self._run_claim(
            job_id,
            run_id,
            trigger,
            scheduled_for,
            started_at,
            take_slot=True,
            slot_ttl_ms=slot_ttl_ms,
        )

    def claim(
        self,
        job_id: str,
        run_id: str,
        *,
        trigger: Trigger = Trigger.SCHEDULE,
        scheduled_for: datetime | None = None,
        started_at: datetime | None = None,
    ) -> Lease | None:
        """The lease when this replica should run the slot now, else None."""
        return self.try_claim(
            job_id, run_id, trigger=trigger, scheduled_for=scheduled_for, started_at=started_at
        ).lease

    def lease_job(
        self,
        job_id: str,
        run_id: str,
        *,
        trigger: Trigger = Trigger.SCHEDULE,
        scheduled_for: datetime | None = None,
        started_at: datetime | None = None,
    ) -> Lease | None:
        """Only the running lease (plus in-flight record), for a slot already claimed here.

        For a queued slot (its ``try_claim`` said JOB_BUSY): call again when the job
        is free; None while another run still holds it.
        """
        return self._run_claim(
            job_id, run_id, trigger, scheduled_for, started_at, take_slot=False, slot_ttl_ms=None
        ).lease

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
    ) -> Lease | None:
        """``lease_job`` retried until the job is free: a queued slot behind another replica.

        None when ``stop`` is set, ``timeout_s`` passes or the job is paused first;
        StorageError propagates.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            res = self._run_claim(
                job_id, run_id, trigger, scheduled_for, None, take_slot=False, slot_ttl_ms=None
            )
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

    def _run_claim(
        self,
        job_id: str,
        run_id: str,
        trigger: Trigger,
        scheduled_for: datetime | None,
        started_at: datetime | None,
        *,
        take_slot: bool,
        slot_ttl_ms: int | None,
    ) -> ClaimResult:
        token = self._new_token()
        record = InflightRun(
            job_id, run_id, trigger, scheduled_for, started_at or self._clock.now(), token
        )
        with storage_errors("EVALSHA claim", keys.slot_key(run_id)):
            outcome, holder = self._claim(
                keys=[
                    keys.slot_key(run_id),
                    keys.running_key(job_id),
                    keys.inflight_key(job_id),
                    keys.inflight_index_key(),
                    keys.paused_index_key(),
                ],
                args=[
                    token,
                    run_id,
                    self.lease_ms,
                    slot_ttl_ms or self.slot_ttl_ms,
                    record.to_json(),
                    job_id,
                    "1" if take_slot else "0",
                    # Scheduled runs only: an operator's manual trigger runs a paused job.
                    "1" if trigger == Trigger.SCHEDULE else "0",
                ],
            )
        result = ClaimOutcome(str(outcome))
        if result == ClaimOutcome.CLAIMED:
            return ClaimResult(result, lease=Lease(job_id, run_id, token, self.lease_ms))
        if result == ClaimOutcome.JOB_BUSY:
            return ClaimResult(result, busy_with=str(holder))
        return ClaimResult(result)

    # -- holding and releasing -------------------------------------------------------

    def extend(self, lease: Lease) -> bool:
        """Push the expiry out by ``lease_ms``; False when the lease is no longer ours."""
        key = keys.running_key(lease.job_id)
        with storage_errors("EVALSHA extend", key):
            return bool(self._extend(keys=[key], args=[lease.token, lease.lease_ms]))

    def release(self, lease: Lease) -> bool:
        """Delete the running lease if still ours; the slot claim stays so the slot never reruns."""
        key = keys.running_key(lease.job_id)
        with storage_errors("EVALSHA release", key):
            return bool(self._release(keys=[key], args=[lease.token]))

    def finish(self, lease: Lease) -> bool:
        """End a recorded run: drop its in-flight record and release its lease, atomically.

        Call after the run's outcome is stored. False when a crash scan had already
        taken the record (the lease was lost and the run recorded as interrupted).
        """
        key = keys.inflight_key(lease.job_id)
        with storage_errors("EVALSHA finish_run", key):
            return bool(
                self._finish_run(
                    keys=[key, keys.inflight_index_key(), keys.running_key(lease.job_id)],
                    args=[lease.run_id, lease.job_id, lease.token],
                )
            )

    def running_run_id(self, job_id: str) -> str | None:
        """The run id holding the job's running lease on any replica, if any."""
        key = keys.running_key(job_id)
        with storage_errors("HGET", key):
            value = self._r.hget(key, "run_id")
        return None if value is None else str(value)

    # -- in-flight records -------------------------------------------------------------

    def finish_inflight(self, job_id: str, run_id: str) -> bool:
        """Drop the run's record once its outcome is stored; False if a scan took it first."""
        key = keys.inflight_key(job_id)
        with storage_errors("EVALSHA finish", key):
            return bool(self._finish(keys=[key, keys.inflight_index_key()], args=[run_id, job_id]))

    def find_interrupted(self, *, dead_replica: str | None = None) -> list[InflightRun]:
        """Take the in-flight records whose running lease is gone; each goes to one caller only.

        ``dead_replica``: leases whose token starts with this replica id are treated as
        expired. Pass the replica's own id once at startup, before its first claim, when
        replica ids are stable and unique among live daemons (then a crash is found at
        restart instead of ``lease_ms`` later). Never pass another live replica's id.
        """
        if dead_replica is not None and (not dead_replica or "/" in dead_replica):
            raise ValueError("dead_replica must be a replica id")
        with storage_errors("SMEMBERS", keys.inflight_index_key()):
            job_ids = sorted(str(j) for j in self._r.smembers(keys.inflight_index_key()))
        prefix = f"{dead_replica}/" if dead_replica else ""
        found: list[InflightRun] = []
        for job_id in job_ids:
            found.extend(self._take_interrupted(job_id, prefix))
        return found

    def _take_interrupted(self, job_id: str, dead_prefix: str) -> list[InflightRun]:
        key = keys.inflight_key(job_id)
        with storage_errors("EVALSHA take_interrupted", key):
            flat: list[Any] = self._take(
                keys=[key, keys.running_key(job_id), keys.inflight_index_key()],
                args=[job_id, dead_prefix],
            )
        now = self._clock.now()
        return [
            InflightRun.from_json(job_id, str(flat[i]), str(flat[i + 1]), now)
            for i in range(0, len(flat), 2)
        ]


class _OutageLog:
    """Logs a Redis outage once when it starts and once when it ends, not per attempt."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._down = False

    def failed(self, exc: StorageError) -> None:
        if not self._down:
            self._down = True
            log.error("%s: redis unreachable, will keep retrying: %s", self._what, exc)

    def ok(self) -> None:
        if self._down:
            self._down = False
            log.info("%s: redis reachable again", self._what)


LostCallback = Callable[[Lease, str], None]


class LeaseKeeper:
    """Extends every held lease each ``lease_ms / 3`` on a background thread.

    A lease that cannot be extended -- the key vanished or another token holds it, or
    Redis stayed unreachable until the lease must have expired -- is dropped and
    reported to ``on_lost(lease, reason)``, so the run it covered can be flagged.
    ``discard`` a lease before releasing or finishing it: one released while still
    held here would be reported lost by the next extension.
    """

    def __init__(
        self,
        manager: LeaseManager,
        on_lost: LostCallback,
        *,
        interval_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._manager = manager
        self._on_lost = on_lost
        self._interval = interval_s if interval_s is not None else manager.lease_ms / 3000
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._held: dict[Lease, float] = {}  # lease -> monotonic time of its last extension
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = _OutageLog("lease keeper")

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._held[lease] = self._monotonic()

    def discard(self, lease: Lease) -> None:
        with self._lock:
            self._held.pop(lease, None)

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._held)

    def tick(self) -> list[Lease]:
        """Extend every held lease once; return (and report) those lost."""
        lost: list[tuple[Lease, str]] = []
        for lease in self.held():
            reason = self._extend_one(lease)
            if reason is not None:
                lost.append((lease, reason))
        for lease, reason in lost:
            self._report(lease, reason)
        return [lease for lease, _ in lost]

    def _extend_one(self, lease: Lease) -> str | None:
        try:
            ok = self._manager.extend(lease)
        except StorageError as exc:
            self._outage.failed(exc)
            with self._lock:
                last = self._held.get(lease)
            if last is not None and self._monotonic() - last >= lease.lease_ms / 1000:
                return "redis unreachable until the lease expired"
            return None
        self._outage.ok()
        if not ok:
            return "lease expired or taken over by another replica"
        with self._lock:
            if lease in self._held:
                self._held[lease] = self._monotonic()
        return None

    def _report(self, lease: Lease, reason: str) -> None:
        with self._lock:
            if self._held.pop(lease, None) is None:
                return  # released meanwhile: nothing was lost
        log.error(
            "lease lost job=%s run_id=%s: %s",
            lease.job_id,
            lease.run_id,
            reason,
            extra={"job": lease.job_id, "run_id": lease.run_id},
        )
        try:
            self._on_lost(lease, reason)
        except Exception:
            log.exception(
                "lease-lost callback failed job=%s",
                lease.job_id,
                extra={"job": lease.job_id, "run_id": lease.run_id},
            )

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception:  # the keeper must outlive any surprise
                log.exception("lease keeper step failed; continuing")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class ReplicaHeartbeat:
    """This replica's presence: a key that expires ``ttl_s`` after the last beat."""

    def __init__(
        self,
        client: redis.Redis,
        replica_id: str,
        info: Mapping[str, Any],
        ttl_s: float = DEFAULT_REPLICA_TTL_S,
        *,
        clock: Clock | None = None,
    ) -> None:
        if ttl_s <= 0.01:
            raise ValueError("ttl_s must be more than 10 ms")
        self._r = client
        self.replica_id = replica_id
        self._info = dict(info)
        self._ttl_ms = int(ttl_s * 1000)
        self._clock = clock or SystemClock()
        self._started_at = self._clock.now()
        self._beat = client.register_script(_BEAT)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = _OutageLog(f"replica heartbeat {replica_id}")

    def beat(self) -> None:
        """Announce this replica for another ``ttl_s``; raises StorageError."""
        body = json.dumps(
            {
                **self._info,
                "replica_id": self.replica_id,
                "started_at": iso(self._started_at),
                "last_beat": iso(self._clock.now()),
                "ttl_s": self._ttl_ms / 1000,
            }
        )
        key = keys.replica_key(self.replica_id)
        with storage_errors("EVALSHA beat", key):
            self._beat(
                keys=[key, keys.replica_index_key()], args=[body, self._ttl_ms, self.replica_id]
            )

    def present(self) -> bool:
        """Whether this replica's heartbeat key exists (gone: expired, or Redis lost it)."""
        key = keys.replica_key(self.replica_id)
        with storage_errors("EXISTS", key):
            return bool(self._r.exists(key))

    def start(self) -> None:
        """Beat now (best effort) and then every ``ttl_s / 3`` on a background thread."""
        self._stop.clear()
        self._beat_logged()
        self._thread = threading.Thread(target=self._loop, name="replica-heartbeat", daemon=True)
        self._thread.start()

    def _beat_logged(self) -> None:
        try:
            self.beat()
        except StorageError as exc:
            self._outage.failed(exc)
        else:
            self._outage.ok()

    def _loop(self) -> None:
        while not self._stop.wait(self._ttl_ms / 3000):
            self._beat_logged()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop beating and withdraw at once (others need not wait out the ttl)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        key = keys.replica_key(self.replica_id)
        try:
            with storage_errors("MULTI DEL", key), self._r.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.zrem(keys.replica_index_key(), self.replica_id)
                pipe.execute()
        except StorageError as exc:
            log.warning(
                "could not withdraw replica %s (its key expires by itself): %s",
                self.replica_id,
                exc,
            )


def list_replicas(client: redis.Redis) -> list[dict[str, Any]]:
    """Live replicas' heartbeat bodies, sorted by replica id; raises StorageError."""
    prune = client.register_script(_PRUNE)
    with storage_errors("EVALSHA prune", keys.replica_index_key()):
        ids = [str(i) for i in prune(keys=[keys.replica_index_key()])]
    if not ids:
        return []
    with storage_errors("MGET", keys.REPLICA_PREFIX + "*"):
        raws = client.mget([keys.replica_key(i) for i in ids])
    out: list[dict[str, Any]] = []
    for replica_id, raw in zip(ids, raws, strict=True):
        if raw is None:
            continue  # expired between the two reads
        try:
            out.append(dict(json.loads(str(raw))))
        except ValueError:
            out.append({"replica_id": replica_id, "error": "unreadable heartbeat"})
    return sorted(out, key=lambda d: str(d.get("replica_id", "")))
