"""Load, validate and apply jobs.yaml; keep the last good config when a new one is bad.

The same path serves the first load at startup, SIGHUP and file-watch reloads, so a
reload can never apply something the startup path would have refused.

``ConfigWatcher`` watches the jobs file's directory (not the file: editors, ``git`` and
Kubernetes replace files by renaming, which a watch on the old inode would never see)
and the directories of every symlink on the way to the real file, so a ConfigMap's
``..data`` swap is seen too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import watchfiles

from stocksched.clock import Clock, iso_utc
from stocksched.config import ConfigError, LoadedJobs, load_jobs_file, read_jobs_bytes
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
    box: list[bytes | ConfigError] = []

    def work() -> None:
        try:
            box.append(read_jobs_bytes(path))
        except ConfigError as exc:
            box.append(exc)
        except Exception as exc:  # reported, never lost with the thread
            box.append(ConfigError([f"{path}: cannot read the file: {exc}"]))

    t = threading.Thread(target=work, name="jobs-file-read", daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise ConfigError([f"{path}: reading the file took over {timeout:g}s; not applied"])
    result = box[0]
    if isinstance(result, ConfigError):
        raise result
    return result


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
        self._lock = threading.Lock()  # one reload at a time (SIGHUP and watcher)
        self.read_timeout_s = READ_TIMEOUT_S
        self.lock_wait_s = LOCK_WAIT_S
        self.current: LoadedJobs | None = None
        self.last = ReloadStatus()
        # Content whose outcome is final (applied, or invalid): seeing it again changes nothing.
        self._settled: str | None = None

    def reload(self, force: bool = True) -> ReloadStatus:
        """Validate the whole file first; apply its diff only if it is entirely valid.

        ``force=False`` is the watcher's call: file events also fire for writes that leave
        the content as it was, and those must not log, count or touch Redis.
        """
        if not self._lock.acquire(timeout=self.lock_wait_s):
            log.warning("a reload of %s is still in progress; not starting another", self.path)
            return self.last
        try:
            data: bytes | ConfigError
            try:
                data = _read_bounded(self.path, self.read_timeout_s)
            except ConfigError as exc:
                data = exc
            digest = hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else None
            if not force and digest is not None and digest == self._settled:
                log.debug("config unchanged sha256=%s; nothing to do", digest[:12])
                return self.last
            return self._reload(digest, data)
        finally:
            self._lock.release()

    def _reload(self, digest: str | None, data: bytes | ConfigError) -> ReloadStatus:
        now = self._clock.now()
        try:
            if isinstance(data, ConfigError):
                raise data
            loaded = load_jobs_file(self.path, data=data)
        except ConfigError as exc:
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


# -- watching --------------------------------------------------------------------------

MAX_SYMLINK_HOPS = 40  # as the kernel's ELOOP limit


@dataclass(frozen=True)
class WatchTargets:
    """What reading the jobs file depends on: each symlink on the way and the real file.

    ``paths`` are absolute, spelled as the watcher reports them (joined onto the
    watched directories), so an event's path can be compared as a string.
    """

    base: str
    paths: frozenset[str]
    dirs: tuple[str, ...]
    identity: tuple[tuple[int, int] | None, ...]

    @classmethod
    def resolve(cls, path: Path) -> WatchTargets:
        base, name = os.path.split(os.path.abspath(path))
        chain = _symlink_chain(base, name)
        dirs = sorted({base} | {os.path.dirname(p) for p in chain})
        dirs = [d for d in dirs if d == base or os.path.isdir(d)]
        return cls(base, frozenset(chain), tuple(dirs), tuple(_identity(d) for d in dirs))

    @property
    def base_exists(self) -> bool:
        return self.identity[self.dirs.index(self.base)] is not None

    def affected_by(self, paths: Iterable[str]) -> bool:
        """True if a change at one of ``paths`` can change what a read of the file returns."""
        for raw in paths:
            p = os.path.normpath(raw)
            prefix = p.rstrip(os.sep) + os.sep
            if p in self.paths or any(c.startswith(prefix) for c in self.paths):
                return True
        return False


def _symlink_chain(base: str, name: str) -> list[str]:
    """``base/name``, every symlink met resolving it (where it was met), and the real path.

    Like ``os.path.realpath`` but keeping the links: replacing any of them (a ConfigMap's
    ``..data``) changes the file without touching ``base/name`` itself.
    """
    chain = [os.path.join(base, name)]
    todo = [name]
    cur = base
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, part)
        if hops < MAX_SYMLINK_HOPS and os.path.islink(nxt):
            hops += 1
            chain.append(nxt)
            try:
                target = os.readlink(nxt)
            except OSError:
                break
            if os.path.isabs(target):
                cur = os.sep
            todo = target.split(os.sep) + todo
        else:
            cur = nxt
    chain.append(cur)
    return list(dict.fromkeys(chain))


def _identity(d: str) -> tuple[int, int] | None:
    try:
        st = os.stat(d)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


QUIET_MS = 800  # a change is applied once the file has been quiet this long


def _signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of what the path resolves to; None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigWatcher:
    """Reloads the config when its file changes, from its own thread, without ever dying.

    A change is applied only once the file has stopped changing: ``debounce_ms``
    (default ``QUIET_MS``, 0.8 s) after the last event that touched it, and only if its
    inode, size and mtime did not move meanwhile. So a ``git checkout``, an editor's
    temp-file-and-rename, or a file written in place in pieces up to 0.8 s apart (the
    first half alone may be a valid file with fewer jobs) is one reload of the final
    content. watchfiles' own ``step``/``debounce`` are no quiet period here: its batch
    is a set, so a second write of the same file adds nothing and the batch is yielded
    ``step`` ms after the first write however long the writing goes on; the quiet period
    is therefore timed here, with watchfiles waking the thread every ``tick``. SIGHUP
    (``ConfigReloader.reload``) does not wait. Re-resolves the symlink chain after every batch
    and re-watches when it changed (a ConfigMap swap points at a new directory) or a
    watched directory was deleted or replaced (inotify does not follow a recreated one).
    """

    def __init__(
        self,
        reloader: ConfigReloader,
        debounce_ms: int = QUIET_MS,
        *,
        retry_s: float = 1.0,
        storage_retry_s: float = 10.0,
        rust_timeout_ms: int = 1000,
    ) -> None:
        self._reloader = reloader
        self._debounce_ms = max(1, debounce_ms)
        self._step_ms = max(1, min(50, self._debounce_ms))
        # How often the thread wakes without events, to see whether the quiet period is over.
        self._tick_ms = max(1, min(rust_timeout_ms, max(self._step_ms, self._debounce_ms // 4)))
        self._pending: tuple[float, tuple[int, int, int] | None] | None = None
        self._retry_s = retry_s
        self._storage_retry_s = storage_retry_s
        self._rust_timeout_ms = rust_timeout_ms
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._missing_reported = False
        self._last_setup_error = ""
        self._last_attempt = 0.0
        self.reload_calls = 0  # reloads this watcher asked for (no-ops included)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop promptly: watchfiles checks the event every ``step`` ms; a reload in
        progress is let finish (it never waits for running jobs)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("config watcher did not stop within %.1fs", timeout)
            self._thread = None

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        log.info("watching %s for changes", self._reloader.path)
        while not self._stop.is_set():
            try:
                self._watch_once()
            except Exception as exc:  # the watcher must outlive anything the OS throws at it
                self._report_setup_error(exc)
                self._stop.wait(self._retry_s)
        log.debug("config watcher stopped")

    def _watch_once(self) -> None:
        """Watch until the set of paths to watch changes; then return to re-resolve."""
        targets = WatchTargets.resolve(self._reloader.path)
        if not targets.base_exists:
            if self._pending is not None:  # the change that took the directory away
                self._reload_if_quiet()
            if not self._missing_reported:
                log.warning(
                    "config directory %s is missing; retrying every %gs",
                    targets.base,
                    self._retry_s,
                )
                self._missing_reported = True
            self._stop.wait(self._retry_s)
            return
        if self._missing_reported:
            log.info("config directory %s is back", targets.base)
            self._missing_reported = False
        log.debug("watching %s for %s", ", ".join(targets.dirs), sorted(targets.paths))
        first = True
        for changes in watchfiles.watch(
            *targets.dirs,
            watch_filter=None,
            debounce=self._debounce_ms,
            step=self._step_ms,
            stop_event=self._stop,
            rust_timeout=self._tick_ms,
            yield_on_timeout=True,
            recursive=False,
            raise_interrupt=False,
        ):
            self._last_setup_error = ""
            if targets.affected_by(p for _, p in changes):
                self._pending = (time.monotonic(), _signature(self._reloader.path))
            if self._pending is not None:
                self._reload_if_quiet()
            # The first yield means the watch is in place: anything changed before that
            # was not seen as an event, so compare the content once (a quiet no-op if equal).
            elif first or self._retry_due():
                self._reload()
            first = False
            if WatchTargets.resolve(self._reloader.path) != targets:
                # What the path resolves to changed (a swap, a deleted directory), maybe
                # before its event was delivered: the new watch reloads after the quiet period.
                if self._pending is None:
                    self._pending = (time.monotonic(), _signature(self._reloader.path))
                return

    def _reload_if_quiet(self) -> None:
        """Reload once no event came for the quiet period and the file did not move."""
        assert self._pending is not None
        since, sig = self._pending
        now = time.monotonic()
        if (now - since) * 1000 < self._debounce_ms:
            return
        current = _signature(self._reloader.path)
        if current != sig:  # changed without an event we saw: wait a full period more
            self._pending = (now, current)
            return
        self._pending = None
        self._reload()

    def _retry_due(self) -> bool:
        """A valid file that Redis refused is tried again now and then, not only on a save."""
        return (
            self._reloader.last.retryable
            and time.monotonic() - self._last_attempt >= self._storage_retry_s
        )

    def _reload(self) -> None:
        self.reload_calls += 1
        self._last_attempt = time.monotonic()
        try:
            self._reloader.reload(force=False)
        except Exception:  # a bug in one reload must not end hot reload for good
            log.exception("config reload crashed; still watching %s", self._reloader.path)

    def _report_setup_error(self, exc: Exception) -> None:
        """Log a failing watch once per distinct error, not once per retry."""
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_setup_error:
            log.error(
                "cannot watch %s (%s); retrying every %gs", self._reloader.path, text, self._retry_s
            )
            self._last_setup_error = text
