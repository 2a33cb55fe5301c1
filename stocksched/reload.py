"""Load, validate and apply jobs.yaml; keep the last good jobs file when a new one is bad.

The same path serves the first load at startup, SIGHUP and file-watch reloads (``watch``),
so a reload can never apply something the startup path would have refused.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from stocksched.clock import Clock, iso_utc
from stocksched.jobs import JobsFileError, LoadedJobs, load_jobs_file, read_jobs_bytes
from stocksched.jobs.gcpause import paused_gc
from stocksched.jobs.reuse import JobsFileCache
from stocksched.metrics import Metrics
from stocksched.registry import JobRegistry, ReconcileDiff
from stocksched.scheduling.scheduler import JobScheduler
from stocksched.storage.adapter import StorageError

log = logging.getLogger(__name__)


@dataclass
class ReloadStatus:
    """Outcome of the last reload attempt: what the status endpoint shows.

    ``retryable`` is set when the file was valid but could not be applied (Redis down):
    trying the same content again later can succeed, unlike an invalid file.
    """

    at: datetime | None = None
    ok: bool = False
    errors: list[str] = field(default_factory=list)
    sha256: str = ""
    diff: ReconcileDiff | None = None
    retryable: bool = False
    # An early try (``reload(tentative=True)``) found the file invalid: nothing was
    # logged, counted or kept, and the watcher tries again after the full quiet period.
    deferred: bool = False


LOGGED_IDS = 10  # job ids named per kind of change in a reload's log line


def _id_list(ids: list[str], limit: int = LOGGED_IDS) -> str:
    """``a, b, c``; past ``limit`` ids, ``a, ..., j, +N more`` (a big reload stays one line)."""
    shown = ", ".join(ids[:limit])
    return f"{shown}, +{len(ids) - limit} more" if len(ids) > limit else shown


def _diff_ids(diff: ReconcileDiff) -> str:
    """`` (added: a; changed: b, c; removed: d)`` for the kinds that happened, else ``""``."""
    parts = [
        f"{kind}: {_id_list(ids)}"
        for kind, ids in (
            ("added", diff.added),
            ("changed", diff.changed),
            ("removed", diff.removed),
        )
        if ids
    ]
    return f" ({'; '.join(parts)})" if parts else ""


READ_TIMEOUT_S = 5.0  # a read of the jobs file taking longer (a hung NFS mount) is an error
LOCK_WAIT_S = 5.0  # a reload waits this long for one in progress, then gives up


def _read_bounded(path: Path, timeout: float) -> bytes:
    """``read_jobs_bytes`` (never opens a FIFO or device), but given up after ``timeout``.

    The read runs in a daemon thread, so a file system that hangs a read leaves that thread
    behind, never the caller: SIGHUP's reload in the main loop cannot stop SIGTERM.
    """
    box: list[bytes | JobsFileError] = []

    def work() -> None:
        try:
            box.append(read_jobs_bytes(path))
        except JobsFileError as exc:
            box.append(exc)
        except Exception as exc:  # reported, never lost with the thread
            box.append(JobsFileError([f"{path}: cannot read the file: {exc}"]))

    t = threading.Thread(target=work, name="jobs-file-read", daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise JobsFileError([f"{path}: reading the file took over {timeout:g}s; not applied"])
    result = box[0]
    if isinstance(result, JobsFileError):
        raise result
    return result


class JobsReloader:
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
        self._lock = threading.Lock()  # one reload at a time (SIGHUP and watcher)
        self.read_timeout_s = READ_TIMEOUT_S
        self.lock_wait_s = LOCK_WAIT_S
        self.current: LoadedJobs | None = None
        self.last = ReloadStatus()
        # Content whose outcome is final (applied, or invalid): seeing it again changes nothing.
        self._settled: str | None = None
        # The last clean load's validated jobs by their text: a save that changes one job
        # parses and validates that job only (stocksched.jobs.reuse).
        self.file_cache = JobsFileCache()

    def reload(self, force: bool = True, *, tentative: bool = False) -> ReloadStatus:
        """Validate the whole file first; apply its diff only if it is entirely valid.

        ``force=False`` is the watcher's call: file events also fire for writes that leave
        the content as it was, and those must not log, count or touch Redis.
        ``tentative``: the watcher's early try after an atomic replacement (``watch``); a
        file that is not valid (yet) is then not reported: the status says ``deferred``
        and ``last`` is left as it was.
        """
        if not self._lock.acquire(timeout=self.lock_wait_s):
            log.warning("a reload of %s is still in progress; not starting another", self.path)
            return self.last
        try:
            data: bytes | JobsFileError
            try:
                data = _read_bounded(self.path, self.read_timeout_s)
            except JobsFileError as exc:
                data = exc
            digest = hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else None
            if not force and digest is not None and digest == self._settled:
                log.debug("config unchanged sha256=%s; nothing to do", digest[:12])
                return self.last
            with paused_gc():  # a big file allocates much and frees nothing until the end
                return self._reload(digest, data, tentative)
        finally:
            self._lock.release()

    def _reload(
        self, digest: str | None, data: bytes | JobsFileError, tentative: bool = False
    ) -> ReloadStatus:
        now = self._clock.now()
        try:
            if isinstance(data, JobsFileError):
                raise data
            loaded = load_jobs_file(self.path, data=data, cache=self.file_cache)
        except JobsFileError as exc:
            if tentative:
                log.debug("config not valid yet (%s); waiting for the quiet period", exc.errors[0])
                return ReloadStatus(now, False, list(exc.errors), digest or "", deferred=True)
            for line in exc.errors:
                log.error(
                    "config invalid%s: %s",
                    ", keeping last good config" if self.current is not None else "",
                    line,
                )
            self._settled = digest
            return self._finish(ReloadStatus(now, False, list(exc.errors), digest or ""))
        try:
            diff = self._registry.reconcile(loaded.jobs, known=self._scheduler.known_runtime)
            self._log_restored(diff)
            self._scheduler.set_jobs(diff.records.values())
        except StorageError as exc:
            log.error("config valid but could not be applied: %s", exc)
            self._settled = None  # the same content must be tried again
            return self._finish(
                ReloadStatus(now, False, [f"storage: {exc}"], loaded.sha256, retryable=True)
            )
        self.current = loaded
        self._settled = loaded.sha256
        log.info(
            "config applied %s sha256=%s%s", diff.summary(), loaded.sha256[:12], _diff_ids(diff)
        )
        for line in loaded.warnings:  # once applied: a storage retry does not repeat them
            log.warning("config warning: %s", line)
        return self._finish(ReloadStatus(now, True, [], loaded.sha256, diff))

    def _log_restored(self, diff: ReconcileDiff) -> None:
        """Say which records were re-created from this replica's memory.

        A job this replica already runs but whose record was missing was lost by Redis
        (wiped, restarted empty, failed over to an empty replica): ``reconcile`` re-created
        it with the pause override and next slot known here, so a paused job stays paused.
        """
        for job_id in diff.added:
            known = self._scheduler.known_runtime(job_id)
            if known is None:
                continue
            paused, next_run = known
            log.warning(
                "job %s: record was missing from Redis; restored (paused=%s, next_run=%s)",
                job_id,
                paused,
                iso_utc(next_run),
                extra={"job": job_id},
            )

    def _finish(self, status: ReloadStatus) -> ReloadStatus:
        self.last = status
        m = self._metrics
        if m is not None:
            m.config_reloads.labels(result="success" if status.ok else "failure").inc()
            m.config_last_reload_ok.set(1 if status.ok else 0)
            if status.ok and status.at is not None:
                m.config_last_reload_success.set(status.at.timestamp())
        return status
