"""Writes that must not be lost while Redis is away: run results and history entries.

A write that fails with StorageError is kept, in order, and retried with exponential
backoff until Redis answers again. The outage is logged once when it starts and once
when it ends, not once per attempt.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from stocksched.clock import Clock
from stocksched.metrics import Metrics
from stocksched.storage.adapter import StorageError

log = logging.getLogger(__name__)

MAX_PENDING = 100_000  # beyond this the oldest writes are dropped, loudly
OOM_MARK = "OOM command not allowed"  # Redis's answer to a write beyond maxmemory


class OutageLog:
    """Logs a Redis outage of one background task once when it starts and once when it ends.

    Not per attempt; for a task whose failures need no other bookkeeping (the lease keeper,
    the replica heartbeat). ``StorageHealth`` is the daemon-wide one (state, metrics).
    """

    def __init__(self, what: str, logger: logging.Logger | None = None) -> None:
        self._what = what
        self._log = logger or log  # the task's own logger, so its records keep their name
        self._down = False

    def failed(self, exc: StorageError) -> None:
        if not self._down:
            self._down = True
            self._log.error("%s: redis unreachable, will keep retrying: %s", self._what, exc)

    def ok(self) -> None:
        if self._down:
            self._down = False
            self._log.info("%s: redis reachable again", self._what)


@dataclass(frozen=True)
class StorageState:
    """Redis as this daemon last saw it: up or down, since when, and why it is down."""

    up: bool
    since: datetime  # the last change between up and down (or the daemon's start)
    reason: str  # the failed operation and error while down; "" while up


class StorageHealth:
    """Tracks whether Redis is reachable, so an outage is logged once, not per attempt."""

    def __init__(
        self,
        clock: Clock,
        metrics: Metrics | None = None,
        on_recovered: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._on_recovered = on_recovered  # e.g. re-reconcile: a restarted Redis may be empty
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._state = StorageState(True, clock.now(), "")
        self._problem: str | None = None  # Redis answers but must not be used as it is

    def failed(self, what: str, exc: StorageError) -> None:
        if self._metrics is not None:
            self._metrics.redis_errors.inc()
        if OOM_MARK in str(exc):  # reads still work: an episode of its own, not an outage
            self.set_problem(f"Redis is out of memory and refuses writes ({what}): {exc}")
            return
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = self._clock.monotonic()
                self._state = StorageState(False, self._clock.now(), f"{what}: {exc}")
        if first:
            log.error("Redis unavailable (%s): %s; retrying with backoff", what, exc)
        else:
            log.debug("Redis still unavailable (%s): %s", what, exc)

    def ok(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
            if since is not None:
                self._state = StorageState(True, self._clock.now(), "")
        if since is not None:
            log.warning("Redis reachable again after %.1fs", self._clock.monotonic() - since)
            if self._on_recovered is not None:
                self._on_recovered()

    def set_problem(self, reason: str | None) -> None:
        """Redis answers but is not fit to use (out of memory, evicting): readyz says why.

        Logged once when an episode starts and once when it ends.
        """
        with self._lock:
            before, self._problem = self._problem, reason
        if reason is not None and before is None:
            log.error("Redis not usable: %s", reason)
        elif reason is None and before is not None:
            log.warning("Redis usable again (was: %s)", before)

    def problem(self) -> str | None:
        with self._lock:
            return self._problem

    def state(self) -> StorageState:
        with self._lock:
            return self._state


class Outbox:
    def __init__(
        self,
        health: StorageHealth,
        clock: Clock,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self._health = health
        self._clock = clock
        self._min = min_backoff
        self._max = max_backoff
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flusher at a time: writes stay in order, once
        self._pending: deque[tuple[str, Callable[[], object]]] = deque()
        self._backoff = min_backoff
        self._next_attempt = 0.0

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def run(self, what: str, write: Callable[[], object]) -> bool:
        """Do ``write`` now, or keep it for later if Redis is away (or writes are queued)."""
        with self._lock:
            queued = bool(self._pending)
            if queued:
                self._append(what, write)
        if queued:
            self.flush()
            return False
        try:
            write()
        except StorageError as exc:
            self._health.failed(what, exc)
            with self._lock:
                self._append(what, write)
                self._schedule_retry()
            return False
        self._health.ok()
        return True

    def run_many(
        self,
        what: str,
        writes: Sequence[Callable[[], object]],
        together: Callable[[], Sequence[StorageError | None]],
    ) -> int:
        """``writes`` done at once by ``together`` (one round trip for all), each kept
        for later as ``run`` keeps one if Redis is away (or writes are queued).

        ``together`` does what each write would do and answers, per write, None (done) or
        the StorageError that failed that one alone; it raises StorageError when the
        whole attempt failed. A write that failed is kept and retried on its own, in
        order. Returns how many ``together`` did (0 when they were queued).
        """
        with self._lock:
            queued = bool(self._pending)
            if queued:
                for write in writes:
                    self._append(what, write)
        if queued:
            self.flush()
            return 0
        try:
            errors = list(together())
        except StorageError as exc:
            errors = [exc] * len(writes)
        failed = [(w, e) for w, e in zip(writes, errors, strict=True) if e is not None]
        if not failed:
            self._health.ok()
            return len(writes)
        self._health.failed(what, failed[0][1])
        with self._lock:
            for write, _ in failed:
                self._append(what, write)
            self._schedule_retry()
        return len(writes) - len(failed)

    def _append(self, what: str, write: Callable[[], object]) -> None:
        if len(self._pending) >= MAX_PENDING:
            dropped, _ = self._pending.popleft()
            log.error("outbox full: dropped pending write %r", dropped)
        self._pending.append((what, write))

    def _schedule_retry(self) -> None:
        self._next_attempt = self._clock.monotonic() + self._backoff
        self._backoff = min(self._max, self._backoff * 2)

    def retry_in(self) -> float | None:
        """Seconds until the next retry is due; None when nothing is pending."""
        with self._lock:
            if not self._pending:
                return None
            return max(0.0, self._next_attempt - self._clock.monotonic())

    def flush(self) -> int:
        """Write pending entries in order; stop at the first failure. Returns how many went.

        A call while another thread is flushing returns at once: that flusher drains the queue.
        """
        if not self._flushing.acquire(blocking=False):
            return 0
        try:
            return self._flush_locked()
        finally:
            self._flushing.release()

    def _flush_locked(self) -> int:
        done = 0
        while True:
            with self._lock:
                if not self._pending or self._clock.monotonic() < self._next_attempt:
                    return done
                what, write = self._pending[0]
            try:
                write()
            except StorageError as exc:
                self._health.failed(what, exc)
                with self._lock:
                    self._schedule_retry()
                return done
            with self._lock:
                self._pending.popleft()
                self._backoff = self._min
            self._health.ok()
            done += 1
