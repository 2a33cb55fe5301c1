"""One request budget (``max_requests_per_second``) shared by every job, thread and replica.

``RedisRateLimiter`` runs GCRA (the generic cell rate algorithm, a token bucket kept as
a single "theoretical arrival time") in ONE Lua script, so granting a slot is atomic on
the Redis server whatever the number of callers. The script reads the server's ``TIME``,
never the caller's clock: replicas whose clocks disagree still share one timeline.

A grant is a *reservation*: the script books the next free slot and returns how long
the caller must wait for it (microseconds), and the caller then sleeps that long
locally. Each caller holds at most one booking, so waits stay short (waiting callers /
rate) and no caller polls Redis in a loop. A caller whose ``timeout`` is shorter than
the wait books nothing and gets False at once. A caller cancelled while waiting
forfeits its slot: the shared rate then runs slightly under the limit, never over it.

The key (``keys.ratelimit_key(name)``) expires (``PX``) when the bucket is full again,
so an idle limiter leaves nothing behind.

If Redis cannot be asked (unreachable, timed out, refused the script) ``acquire`` raises
``RateLimiterUnavailable`` instead of letting the request through unlimited: with Redis
gone the fetched data could not be stored either, and an unlimited burst from every
replica is exactly what gets a host banned. The caller decides (e.g. fail the ticker).

Where to spend slots: one per HTTP REQUEST, not one per fetch. A yfinance fetch is
several requests (cookie and crumb once per process, a time-zone probe per symbol not
yet in its cache, the chart, and yfinance's own repeat of any answer >= 400), so the
HTTP session calls ``acquire_in_scope`` before each request, and the executor opens a
``request_scope`` (the run's deadline and cancel event) around each ticker's fetch.
``rate_limited`` gates a whole callable instead, for sources of one request per call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import redis

from stocksched.storage import keys

T = TypeVar("T")

# KEYS[1]: the bucket. ARGV: emission interval (us), burst, longest acceptable wait
# (us, negative: any). Returns {granted (1/0), wait in us}; on 0 nothing was booked.
# Integer microseconds throughout: exact in Lua 5.1 doubles (< 2^53) and precise enough
# for any sane rate. Before Redis 5 a script calling TIME must replicate effects.
_GCRA_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local wait = tat - (burst - 1) * interval - now
if wait < 0 then wait = 0 end
if max_wait >= 0 and wait > max_wait then return {0, wait} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat),
           'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, wait}
"""


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


class RedisRateLimiter:
    """At most ``rate_per_s`` grants per second on average, ``burst`` at once from idle.

    All instances using the same Redis and ``key`` share one budget, in any process.
    """

    def __init__(
        self,
        client: redis.Redis,
        rate_per_s: float,
        burst: int = 1,
        key: str | None = None,
    ) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.key = key if key is not None else keys.ratelimit_key("yahoo")
        self._interval_us = max(1, round(1_000_000 / rate_per_s))
        self._script = client.register_script(_GCRA_SCRIPT)

    def acquire(self, timeout: float | None = None, cancel: threading.Event | None = None) -> bool:
        """Book the next slot and wait for it; raises ``RateLimiterUnavailable``."""
        if cancel is not None and cancel.is_set():
            return False
        max_wait_us = -1 if timeout is None else max(0, int(timeout * 1_000_000))
        granted, wait_us = self._book(max_wait_us)
        if not granted:
            return False  # the queue ahead is longer than the timeout: say so now
        if wait_us <= 0:
            return True
        if cancel is None:
            time.sleep(wait_us / 1_000_000)
            return True
        return not cancel.wait(wait_us / 1_000_000)

    def _book(self, max_wait_us: int) -> tuple[bool, int]:
        try:
            reply = self._script(keys=[self.key], args=[self._interval_us, self.burst, max_wait_us])
        except redis.RedisError as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise RateLimiterUnavailable(
                f"rate limiter {self.key!r} unavailable: {reason}"
            ) from exc
        granted, wait_us = reply
        return int(granted) == 1, int(wait_us)


def build_rate_limiter(
    client: redis.Redis, rate_per_s: float | None, burst: int = 1, name: str = "yahoo"
) -> RateLimiter:
    """The limiter for settings' ``max_requests_per_second`` (None: no limit)."""
    if rate_per_s is None:
        return NullRateLimiter()
    return RedisRateLimiter(client, rate_per_s, burst=burst, key=keys.ratelimit_key(name))


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


def rate_limited(
    fn: Callable[[], T],
    limiter: RateLimiter,
    *,
    deadline: float | None = None,
    cancel: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], T]:
    """``fn`` behind a slot: each call first acquires one from ``limiter``.

    For a source with one request per fetch (the session-level ``acquire_in_scope``
    is the right place for Yahoo, whose fetch makes several). Wrap the fetch with this,
    then the result in ``RetryPolicy.call``, so every attempt spends a slot.
    ``deadline`` is a ``clock()`` instant; see ``acquire_in_scope`` for what is raised.
    """

    def attempt() -> T:
        _acquire_or_raise(limiter, deadline, cancel, clock)
        return fn()

    return attempt


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
