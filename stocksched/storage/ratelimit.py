"""The shared request limiter's Redis part: GCRA in one Lua script.

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
``RateLimiterUnavailable`` (see stocksched.ratelimit) instead of letting the request
through unlimited.
"""

from __future__ import annotations

import threading
import time

from stocksched.ratelimit import NullRateLimiter, RateLimiter, RateLimiterUnavailable
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, StorageError, storage_errors

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


class RedisRateLimiter:
    """At most ``rate_per_s`` grants per second on average, ``burst`` at once from idle.

    All instances using the same Redis and ``key`` share one budget, in any process.
    """

    def __init__(
        self,
        adapter: RedisAdapter,
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
        self._script = adapter.client.register_script(_GCRA_SCRIPT)

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
            with storage_errors("EVALSHA gcra", self.key):
                reply = self._script(
                    keys=[self.key], args=[self._interval_us, self.burst, max_wait_us]
                )
        except StorageError as exc:
            raise RateLimiterUnavailable(
                f"rate limiter {self.key!r} unavailable: {exc.reason}"
            ) from exc
        granted, wait_us = reply
        return int(granted) == 1, int(wait_us)


def build_rate_limiter(
    adapter: RedisAdapter, rate_per_s: float | None, burst: int = 1, name: str = "yahoo"
) -> RateLimiter:
    """The limiter for settings' ``max_requests_per_second`` (None: no limit)."""
    if rate_per_s is None:
        return NullRateLimiter()
    return RedisRateLimiter(adapter, rate_per_s, burst=burst, key=keys.ratelimit_key(name))
