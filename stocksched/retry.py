"""Retrying a ticker's fetch within one run: exponential backoff, full jitter, Retry-After.

Only ``TransientFetchError`` is retried (timeouts, connection errors, HTTP 5xx, 429);
a permanent failure (unknown or delisted symbol, no data) and every other exception
propagate at once, because asking again would only spend the shared request budget.

The delay before retry ``n`` (0-based) is drawn uniformly from
``[0, min(max_backoff, backoff * 2**n)]`` ("full jitter", AWS Architecture Blog,
"Exponential Backoff and Jitter"): replicas and threads that failed together do not
come back together. When the server sent ``Retry-After`` the delay is never shorter
than it, but a ``Retry-After`` above ``max_retry_after`` (default 300 s) is cut to
that: a misbehaving proxy asking for a day must not park a worker thread for a day.

A run bound by a timeout passes its ``deadline`` (``time.monotonic()`` seconds): a
retry whose delay would end at or after the deadline is not attempted and the last
error is raised at once, so a run never sleeps past its end. A set ``cancel`` event
does the same, and wakes a wait in progress.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from stocksched.sources.base import TransientFetchError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest ``Retry-After`` honoured, in seconds; a longer one is cut to this.
MAX_RETRY_AFTER_S = 300.0
#: Beyond this exponent ``backoff * 2**n`` is above any sane cap anyway; stops overflow.
_MAX_EXPONENT = 62


class RetryPolicy:
    """How often and how patiently one ticker's fetch is retried within a run.

    ``retries`` is the number of retries after the first attempt (0: one attempt only).
    ``backoff`` is the base delay (a job's ``retry_backoff``), ``max_backoff`` caps the
    exponential ceiling, ``rng`` makes the jitter reproducible in tests.
    """

    def __init__(
        self,
        retries: int,
        backoff: timedelta | float,
        max_backoff: float = 60.0,
        rng: random.Random | None = None,
        max_retry_after: float = MAX_RETRY_AFTER_S,
    ) -> None:
        base = backoff.total_seconds() if isinstance(backoff, timedelta) else float(backoff)
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if base < 0 or max_backoff < 0 or max_retry_after < 0:
            raise ValueError("backoff, max_backoff and max_retry_after must be >= 0")
        self.retries = retries
        self.backoff = base
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self._rng = rng if rng is not None else random.Random()
        self._rng_lock = threading.Lock()  # one policy may serve a run's worker threads

    def ceiling(self, attempt: int) -> float:
        """Upper bound of the jittered delay before retry ``attempt`` (0-based)."""
        exponent: int = min(max(attempt, 0), _MAX_EXPONENT)
        return float(min(self.max_backoff, self.backoff * 2**exponent))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): full jitter, >= Retry-After."""
        with self._rng_lock:
            jittered = self._rng.uniform(0.0, self.ceiling(attempt))
        if retry_after is None:
            return jittered
        return max(jittered, min(max(retry_after, 0.0), self.max_retry_after))

    def call(
        self,
        fn: Callable[[], T],
        *,
        sleep: Callable[[float], None] | None = None,
        on_retry: Callable[[int, Exception, float], None] | None = None,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> T:
        """``fn()``, retried on ``TransientFetchError`` as this policy allows.

        Raises the last error when retries are exhausted, when the next delay would end
        at or after ``deadline`` (a ``clock()`` instant), or when ``cancel`` is set.
        ``on_retry(n, error, delay)`` is called before the n-th retry's wait (n from 1).
        ``sleep`` defaults to waiting on ``cancel`` (so a cancel cuts the wait short),
        else ``time.sleep``; tests inject a recorder so nothing really sleeps.
        """
        attempt = 0
        while True:
            try:
                return fn()
            except TransientFetchError as exc:
                wait = self._next_wait(attempt, exc, deadline, cancel, clock)
                if wait is None:
                    raise
                if on_retry is not None:
                    on_retry(attempt + 1, exc, wait)
                if not _pause(wait, sleep, cancel):
                    raise
                attempt += 1

    def _next_wait(
        self,
        attempt: int,
        exc: TransientFetchError,
        deadline: float | None,
        cancel: threading.Event | None,
        clock: Callable[[], float],
    ) -> float | None:
        """The delay before the next retry, or None when there must be no retry."""
        if attempt >= self.retries or (cancel is not None and cancel.is_set()):
            return None
        wait = self.delay(attempt, exc.retry_after)
        if deadline is not None and clock() + wait >= deadline:
            log.debug(
                "no retry for %s: a %.2fs wait would pass the run's deadline", exc.ticker, wait
            )
            return None
        return wait


def _pause(
    seconds: float, sleep: Callable[[float], None] | None, cancel: threading.Event | None
) -> bool:
    """Wait ``seconds``; False when ``cancel`` was set before or during the wait."""
    if sleep is not None:
        sleep(seconds)
    elif cancel is not None:
        return not cancel.wait(seconds)
    else:
        time.sleep(seconds)
    return cancel is None or not cancel.is_set()
