"""Load, validate and apply jobs.yaml; keep the last good config when a new one is bad.

The same path serves the first load at startup, SIGHUP and file-watch reloads, so a
reload can never apply something the startup path would have refused.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from stocksched.clock import Clock
from stocksched.config import ConfigError, LoadedJobs, load_jobs_file
from stocksched.metrics import Metrics
from stocksched.registry import JobRegistry, ReconcileDiff
from stocksched.scheduler import JobScheduler
from stocksched.storage.adapter import StorageError

log = logging.getLogger(__name__)


@dataclass
class ReloadStatus:
    at: datetime | None = None
    ok: bool = False
    errors: list[str] = field(default_factory=list)
    sha256: str = ""
    diff: ReconcileDiff | None = None


class ConfigReloader:
    def __init__(
        self,
        path: Path,
        registry: JobRegistry,
        scheduler: JobScheduler,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.path = path
        self._registry = registry
        self._scheduler = scheduler
        self._clock = clock
        self._metrics = metrics
        self._lock = threading.Lock()  # one reload at a time
        self.current: LoadedJobs | None = None
        self.last = ReloadStatus()

    def reload(self) -> ReloadStatus:
        """Validate the whole file first; apply its diff only if it is entirely valid."""
        with self._lock:
            now = self._clock.now()
            try:
                loaded = load_jobs_file(self.path)
            except ConfigError as exc:
                for line in exc.errors:
                    log.error("config invalid, keeping last good config: %s", line)
                return self._finish(ReloadStatus(now, False, list(exc.errors)))
            try:
                diff = self._registry.reconcile(loaded.jobs)
                wanted = {j.id for j in loaded.jobs}
                self._scheduler.set_jobs(j for j in self._registry.list_jobs() if j.job_id in wanted)
            except StorageError as exc:
                log.error("config valid but could not be applied: %s", exc)
                return self._finish(ReloadStatus(now, False, [f"storage: {exc}"], loaded.sha256))
            self.current = loaded
            log.info("config applied %s sha256=%s", diff.summary(), loaded.sha256[:12])
            return self._finish(ReloadStatus(now, True, [], loaded.sha256, diff))

    def _finish(self, status: ReloadStatus) -> ReloadStatus:
        self.last = status
        m = self._metrics
        if m is not None:
            m.config_reloads.labels(result="success" if status.ok else "failure").inc()
            m.config_last_reload_ok.set(1 if status.ok else 0)
            if status.ok and status.at is not None:
                m.config_last_reload_success.set(status.at.timestamp())
        return status
