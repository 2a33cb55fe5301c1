"""Follows what other replicas change in Redis, so every replica acts on the same state.

Pause and resume go through any replica's API and are written to Redis (the job record
and the paused set, in one transaction). Slot claims check the paused set atomically, so
no replica ever starts a scheduled run of a paused job; this poll brings each replica's
own view (its heap, ``/scheduler/jobs``, ``stocksched_job_paused``) in line within
``every_s``, and on a resume arms the job with the usual catch-up.
"""

from __future__ import annotations

import logging

from stocksched.outbox import StorageHealth
from stocksched.registry import JobRegistry
from stocksched.scheduler import JobScheduler
from stocksched.storage.adapter import StorageError

log = logging.getLogger(__name__)

SYNC_EVERY_S = 1.0


class StateSync:
    """One cheap read per round (SMEMBERS of the paused set); called from the main loop."""

    def __init__(
        self,
        registry: JobRegistry,
        scheduler: JobScheduler,
        health: StorageHealth,
        every_s: float = SYNC_EVERY_S,
    ) -> None:
        self._registry = registry
        self._scheduler = scheduler
        self._health = health
        self.every_s = every_s

    def tick(self) -> list[str]:
        """Follow pause overrides made elsewhere; returns the jobs whose state changed."""
        epoch = self._scheduler.pause_epoch()
        try:
            paused = self._registry.paused_ids()
        except StorageError as exc:
            self._health.failed("read pause overrides", exc)
            return []
        self._health.ok()
        return self._scheduler.sync_paused(paused, epoch)
