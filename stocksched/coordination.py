"""The background threads that keep this replica's claims alive in Redis.

``LeaseKeeper`` extends the running leases this replica holds (stocksched.storage.leases)
while their runs last; ``ReplicaHeartbeat`` keeps this replica's heartbeat key
(stocksched.storage.replicas) from expiring. Both ride over a Redis outage, logging it
once when it starts and once when it ends. The Redis structures themselves, their keys
and their Lua, are in ``stocksched.storage``; this module imports no redis.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from stocksched.clock import Clock, SystemClock
from stocksched.model import iso
from stocksched.outbox import OutageLog
from stocksched.storage.adapter import RedisAdapter, StorageError
from stocksched.storage.leases import Lease, LeaseManager
from stocksched.storage.replicas import ReplicaRecords
from stocksched.threads import Periodic

log = logging.getLogger(__name__)

DEFAULT_REPLICA_TTL_S = 15.0


LostCallback = Callable[[Lease, str], None]


class LeaseKeeper:
    """Extends every held lease each ``lease_ms / 3`` on a background thread.

    A lease that cannot be extended -- the key vanished or another token holds it, or
    Redis stayed unreachable until the lease must have expired -- is dropped and
    reported to ``on_lost(lease, reason)``, so the run it covered can be flagged.
    ``discard`` a lease before finishing it (``LeaseManager.finish``): one finished while still
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
        self._periodic = Periodic(
            "lease-keeper",
            self._interval,
            self.tick,
            failed="lease keeper step failed; continuing",
            logger=log,
        )
        self._outage = OutageLog("lease keeper", log)

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
                return  # finished meanwhile: nothing was lost
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
        self._periodic.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._periodic.stop(timeout)


class ReplicaHeartbeat:
    """This replica's presence: a key that expires ``ttl_s`` after the last beat."""

    def __init__(
        self,
        adapter: RedisAdapter,
        replica_id: str,
        info: Mapping[str, Any],
        ttl_s: float = DEFAULT_REPLICA_TTL_S,
        *,
        clock: Clock | None = None,
    ) -> None:
        if ttl_s <= 0.01:
            raise ValueError("ttl_s must be more than 10 ms")
        self._records = ReplicaRecords(adapter)
        self.replica_id = replica_id
        self._info = dict(info)
        self._ttl_ms = int(ttl_s * 1000)
        self._clock = clock or SystemClock()
        self._started_at = self._clock.now()
        self._periodic = Periodic(
            "replica-heartbeat",
            self._ttl_ms / 3000,
            self._beat_logged,
            failed="replica heartbeat step failed; continuing",
            logger=log,
        )
        self._outage = OutageLog(f"replica heartbeat {replica_id}", log)

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
        self._records.beat(self.replica_id, body, self._ttl_ms)

    def present(self) -> bool:
        """Whether this replica's heartbeat key exists (gone: expired, or Redis lost it)."""
        return self._records.present(self.replica_id)

    def start(self) -> None:
        """Beat now (best effort) and then every ``ttl_s / 3`` on a background thread."""
        self._beat_logged()
        self._periodic.start()

    def _beat_logged(self) -> None:
        try:
            self.beat()
        except StorageError as exc:
            self._outage.failed(exc)
        else:
            self._outage.ok()

    @property
    def alive(self) -> bool:
        return self._periodic.alive

    def stop(self, timeout: float = 5.0) -> None:
        """Stop beating and withdraw at once (others need not wait out the ttl)."""
        self._periodic.stop(timeout)
        try:
            self._records.withdraw(self.replica_id)
        except StorageError as exc:
            log.warning(
                "could not withdraw replica %s (its key expires by itself): %s",
                self.replica_id,
                exc,
            )
