"""Watching jobs.yaml for changes: ``JobsWatcher`` reloads it from its own thread.

``JobsWatcher`` watches the jobs file's directory (not the file: editors, ``git`` and
Kubernetes replace files by renaming, which a watch on the old inode would never see)
and the directories of every symlink on the way to the real file, so a ConfigMap's
``..data`` swap is seen too.

When a change is applied depends on how the file was changed:

- Replaced atomically (every event on the file's paths is an addition: a finished file
  renamed or linked into place, as ``mv``, ``sed -i``, Ansible, editors' "safe write"
  and a ConfigMap's ``..data`` swap do): applied ``SETTLE_MS`` (0.1 s) after the event,
  if it is valid by then. Such a file cannot be half-written; one that is not valid is
  not reported yet (it may be a file created empty and written afterwards) and waits
  the full quiet period like an in-place write, after which its errors are reported.
- Written in place, deleted and re-created, truncated (``>``, most editors, ``git
  checkout``, ``cp``): applied once the file has been quiet for ``QUIET_MS`` (0.8 s), so
  a file written in pieces up to 0.8 s apart is one reload of the final content.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from stocksched.reload import JobsReloader
from stocksched.threads import BackgroundThread

# The logger of the reloader: log lines keep the name they had before the split.
log = logging.getLogger("stocksched.reload")

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


QUIET_MS = 800  # a change written in place is applied once the file was quiet this long
SETTLE_MS = 100  # an atomic replacement is applied (if valid) once it was quiet this long


def _signature(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of what the path resolves to; None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class JobsWatcher:
    """Reloads the jobs file when it changes, from its own thread, without ever dying.

    A change is applied only once the file has stopped changing: ``debounce_ms``
    (default ``QUIET_MS``, 0.8 s) after the last event that touched it, and only if its
    inode, size and mtime did not move meanwhile. So a ``git checkout`` or a file written
    in place in pieces up to 0.8 s apart (the first half alone may be a valid file with
    fewer jobs) is one reload of the final content. A change whose every event on the
    file's paths was an addition (renamed or linked into place, never written there) is
    tried after ``settle_ms`` (default ``SETTLE_MS``, 0.1 s) instead, and applied then only
    if the whole file is valid (``reload(tentative=True)``); otherwise it waits the full
    quiet period. watchfiles' own ``step``/``debounce`` are no quiet period here: its batch
    is a set, so a second write of the same file adds nothing and the batch is yielded
    ``step`` ms after the first write however long the writing goes on; the quiet period
    is therefore timed here, with watchfiles waking the thread every ``tick``. SIGHUP
    (``JobsReloader.reload``) does not wait. Re-resolves the symlink chain after every batch
    and re-watches when it changed (a ConfigMap swap points at a new directory) or a
    watched directory was deleted or replaced (inotify does not follow a recreated one).
    """

    def __init__(
        self,
        reloader: JobsReloader,
        debounce_ms: int = QUIET_MS,
        *,
        settle_ms: int = SETTLE_MS,
        retry_s: float = 1.0,
        storage_retry_s: float = 10.0,
        rust_timeout_ms: int = 1000,
    ) -> None:
        self._reloader = reloader
        self._debounce_ms = max(1, debounce_ms)
        self._settle_ms = max(1, min(settle_ms, self._debounce_ms))
        self._step_ms = max(1, min(50, self._settle_ms))
        # How often the thread wakes without events, to see whether the quiet period is over.
        self._tick_ms = max(1, min(rust_timeout_ms, max(self._step_ms, self._settle_ms // 2)))
        # (last event, file signature then, only additions so far) of a change not applied
        self._pending: tuple[float, tuple[int, int, int] | None, bool] | None = None
        self._retry_s = retry_s
        self._storage_retry_s = storage_retry_s
        self._rust_timeout_ms = rust_timeout_ms
        self._stop = threading.Event()
        self._thread = BackgroundThread("config-watcher", self._run)
        self._missing_reported = False
        self._last_setup_error = ""
        self._last_attempt = 0.0
        self.reload_calls = 0  # reloads this watcher asked for and saw end (no-ops included)

    @property
    def alive(self) -> bool:
        return self._thread.alive

    def start(self) -> None:
        if self.alive:
            return
        self._stop.clear()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop promptly: watchfiles checks the event every ``step`` ms; a reload in
        progress is let finish (it never waits for running jobs)."""
        self._stop.set()
        self._thread.join(timeout)

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
            self._note(targets, changes)
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
                    self._pending = (time.monotonic(), _signature(self._reloader.path), False)
                return

    def _note(self, targets: WatchTargets, changes: set[tuple[watchfiles.Change, str]]) -> None:
        """Start (or restart) the quiet period if ``changes`` touch the file."""
        ours = [c for c, p in changes if targets.affected_by((p,))]
        if not ours:
            return
        added = all(c == watchfiles.Change.added for c in ours)
        if self._pending is not None:
            added = added and self._pending[2]
        self._pending = (time.monotonic(), _signature(self._reloader.path), added)

    def _reload_if_quiet(self) -> None:
        """Reload once no event came for the quiet period and the file did not move.

        Only additions (an atomic replacement): tried after the short settle, applied if
        valid; else the full quiet period applies, counted from the same last event.
        """
        assert self._pending is not None
        since, sig, added = self._pending
        now = time.monotonic()
        if (now - since) * 1000 < (self._settle_ms if added else self._debounce_ms):
            return
        current = _signature(self._reloader.path)
        if current != sig:  # changed without an event we saw: wait a full period more
            self._pending = (now, current, False)
            return
        self._pending = None
        early = added and self._settle_ms < self._debounce_ms
        if self._reload(tentative=early) and early:
            self._pending = (since, sig, False)  # not valid (yet): wait the full period

    def _reload(self, tentative: bool = False) -> bool:
        """Ask for a reload; True if a tentative one was deferred (the file was invalid)."""
        self._last_attempt = time.monotonic()
        deferred = False
        try:
            if tentative:
                deferred = self._reloader.reload(force=False, tentative=True).deferred
            else:
                self._reloader.reload(force=False)
        except Exception:  # a bug in one reload must not end hot reload for good
            log.exception("config reload crashed; still watching %s", self._reloader.path)
        finally:  # counted once done: "compared once" means the content was read by then
            self.reload_calls += 1
        return deferred

    def _retry_due(self) -> bool:
        """A valid file that Redis refused is tried again now and then, not only on a save."""
        return (
            self._reloader.last.retryable
            and time.monotonic() - self._last_attempt >= self._storage_retry_s
        )

    def _report_setup_error(self, exc: Exception) -> None:
        """Log a failing watch once per distinct error, not once per retry."""
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_setup_error:
            log.error(
                "cannot watch %s (%s); retrying every %gs", self._reloader.path, text, self._retry_s
            )
            self._last_setup_error = text
