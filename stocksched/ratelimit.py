"""Request budgets (``max_requests_per_second``): one per egress identity, or one shared.

Yahoo limits requests per client address, so by default (``rate_limit_scope: host``) each
host spends its own budget, shared by every job, thread and replica on that host (they
share its address); ``rate_limit_scope: shared`` gives every replica one budget, as
before issue 14 (``budget_name``).

This module is the limiter's contract and the part that needs no Redis: the
``RateLimiter`` protocol, the errors, the no-limit limiter and the per-thread request
scope. The shared limiter itself, GCRA in one Lua script on the Redis server, is
``stocksched.storage.ratelimit.RedisRateLimiter`` (built by ``build_rate_limiter``
there).

If Redis cannot be asked (unreachable, timed out, refused the script) ``acquire`` raises
``RateLimiterUnavailable`` instead of letting the request through unlimited: with Redis
gone the fetched data could not be stored either, and an unlimited burst from every
replica is exactly what gets a host banned. The caller decides (e.g. fail the ticker).

Where to spend slots: one per HTTP REQUEST, not one per fetch. A yfinance fetch is
several requests (cookie and crumb once per process, a time-zone probe per symbol not
yet in its cache, the chart, and yfinance's own repeat of any answer >= 400), so the
HTTP session calls ``acquire_in_scope`` before each request, and the executor opens a
``request_scope`` (the run's deadline and cancel event) around each ticker's fetch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

SHARED_BUDGET = "yahoo"


def budget_name(scope: str, egress_id: str) -> str:
    """The name of the budget this process spends: its egress identity's (``host``
    scope: the hostname, or ``egress_id`` when one host sends from several addresses),
    or the one every replica shares (``shared``, the name it always had)."""
    if scope == "shared":
        return SHARED_BUDGET
    return f"{SHARED_BUDGET}:host:{egress_id}"


class RateLimitError(Exception):
    """No request slot was granted; the request was not made. Never retried in a run."""


class RateLimiterUnavailable(RateLimitError):
    """The shared limiter's Redis could not be asked (unreachable, timed out, refused)."""


class RateLimitTimeout(RateLimitError):
    """No slot before the run's deadline, or the run was cancelled while waiting.

    Not a ``TransientFetchError``: retrying within the same run cannot get a slot
    sooner, so ``RetryPolicy`` lets it through and the ticker is recorded as failed.
    """


class RateLimiter(Protocol):
    """Grants request slots; ``acquire`` blocks until one is granted.

    Returns False when ``timeout`` (seconds) would pass first or ``cancel`` is set.
    """

    def acquire(
        self, timeout: float | None = None, cancel: threading.Event | None = None
    ) -> bool: ...


class NullRateLimiter:
    """No limit configured: every request may go at once (unless the run is cancelled)."""

    def acquire(self, timeout: float | None = None, cancel: threading.Event | None = None) -> bool:
        return cancel is None or not cancel.is_set()


@dataclass(frozen=True)
class _Scope:
    deadline: float | None
    cancel: threading.Event | None


_scopes = threading.local()


@contextmanager
def request_scope(
    deadline: float | None = None, cancel: threading.Event | None = None
) -> Iterator[None]:
    """Bound the slot waits of the HTTP requests this thread makes inside the block.

    The executor opens one around each ticker's fetch (with the run's deadline, a
    ``time.monotonic()`` instant, and its cancel event); the HTTP session, which cannot
    see the run, calls ``acquire_in_scope`` before each request. Scopes nest.
    """
    previous = getattr(_scopes, "current", None)
    _scopes.current = _Scope(deadline, cancel)
    try:
        yield
    finally:
        _scopes.current = previous


def acquire_in_scope(limiter: RateLimiter, clock: Callable[[], float] = time.monotonic) -> None:
    """One slot for one HTTP request, within this thread's ``request_scope`` (if any).

    Raises ``RateLimitTimeout`` when the scope's deadline comes first or its cancel is
    set, ``RateLimiterUnavailable`` when Redis cannot be asked. Both pass through
    yfinance unchanged (it re-raises what it does not know as a network error).
    """
    scope: _Scope | None = getattr(_scopes, "current", None)
    deadline = scope.deadline if scope is not None else None
    cancel = scope.cancel if scope is not None else None
    _acquire_or_raise(limiter, deadline, cancel, clock)


def _acquire_or_raise(
    limiter: RateLimiter,
    deadline: float | None,
    cancel: threading.Event | None,
    clock: Callable[[], float],
) -> None:
    timeout = None if deadline is None else max(0.0, deadline - clock())
    if limiter.acquire(timeout=timeout, cancel=cancel):
        return
    if cancel is not None and cancel.is_set():
        raise RateLimitTimeout("rate limiter: run cancelled while waiting for a request slot")
    raise RateLimitTimeout("rate limiter: no request slot before the run's deadline")
