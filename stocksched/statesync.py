"""Follows what changes in Redis behind this replica's back, so every replica acts on it.

- Pause and resume go through any replica's API and are written to Redis (the job record
  and the paused set, in one transaction). Slot claims check the paused set atomically,
  so no replica ever starts a scheduled run of a paused job; this poll brings each
  replica's own view (its heap, ``/scheduler/jobs``, ``stocksched_job_paused``) in line
  within ``every_s``, and on a resume arms the job with the usual catch-up. This poll,
  not a reload, is what follows pauses: a reload reads again only the records whose spec
  or pause it has reason to doubt (``JobRegistry.reconcile``), and a save may never come.
- Lost state. Redis can lose everything without a disconnect (``FLUSHALL``, a restart
  quick enough for the client's retries to hide it, a failover to an empty replica).
  Each round checks that the job index and this replica's own heartbeat key exist; when
  either is gone the config is reconciled again, which re-creates the records, and the
  runtime state this replica still knows (pauses, next slots) is put back
  (``JobsReloader``), so a paused job stays paused. Logged once per loss.
"""

from __future__ import annotations

import logging

from stocksched.coordination import ReplicaHeartbeat
from stocksched.outbox import StorageHealth
from stocksched.registry import JobRegistry
from stocksched.reload import JobsReloader
from stocksched.scheduling.scheduler import JobScheduler
from stocksched.storage.adapter import AbstractDatabaseAdapter, StorageError

log = logging.getLogger(__name__)

SYNC_EVERY_S = 1.0


class StateSync:
    """A few cheap reads per round (SMEMBERS, two EXISTS); called from the main loop."""

    def __init__(
        self,
        registry: JobRegistry,
        scheduler: JobScheduler,
        reloader: JobsReloader,
        heartbeat: ReplicaHeartbeat,
        health: StorageHealth,
        adapter: AbstractDatabaseAdapter,
        *,
        allow_evicting: bool = False,
        every_s: float = SYNC_EVERY_S,
    ) -> None:
        self._adapter = adapter
        self._allow_evicting = allow_evicting
        self._registry = registry
        self._scheduler = scheduler
        self._reloader = reloader
        self._heartbeat = heartbeat
        self._health = health
        self.every_s = every_s
        self._lost = False

    def tick(self) -> list[str]:
        """One round; returns the jobs whose pause state changed here."""
        try:
            self._check_memory()
            self._check_state()
            changed = self._follow_pauses()
        except StorageError as exc:
            self._health.failed("sync with Redis", exc)
            return []
        self._health.ok()
        return changed

    def _check_memory(self) -> None:
        """Eviction policy (it may change, or a failover may land on another server) and
        out-of-memory, as readyz reasons; each episode logged once (StorageHealth)."""
        mem = self._adapter.memory()
        if mem is None:
            return
        if mem.evicts and not self._allow_evicting:
            self._health.set_problem(mem.refusal())
        elif mem.full:
            self._health.set_problem(
                f"Redis is out of memory (used {mem.used} of maxmemory {mem.limit} bytes, "
                f"policy {mem.policy}): writes are refused; raise maxmemory or free memory"
            )
        else:
            self._health.set_problem(None)

    def _follow_pauses(self) -> list[str]:
        epoch = self._scheduler.pause_epoch()
        paused = self._registry.paused_ids()
        return self._scheduler.sync_paused(paused, epoch)

    def _check_state(self) -> None:
        current = self._reloader.current
        if current is None:
            return
        missing = []
        if current.jobs and not self._registry.index_present():
            missing.append("the job index")
        if not self._heartbeat.present():
            missing.append(f"this replica's heartbeat ({self._heartbeat.replica_id})")
        if not missing:
            self._lost = False
            return
        if not self._lost:
            log.error(
                "Redis lost stocksched's state (%s missing: wiped, restarted empty or failed "
                "over?); restoring %d job record(s) from %s and this replica's memory",
                " and ".join(missing),
                len(current.jobs),
                self._reloader.path,
            )
            self._lost = True
        self._heartbeat.beat()
        status = self._reloader.reload()
        if status.ok and status.diff is not None:
            log.warning("state restored: %s", status.diff.summary())
