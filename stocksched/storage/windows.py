"""A ticker's latest-window pointer: when a window moves it, and a cluster's window write.

On a single Redis ``DataIOButler`` SETs the window and moves the pointer in one MULTI/EXEC
that WATCHes the pointer and the run's lease. On a Redis Cluster the window key, the
pointer and the lease are in three hash slots (the window keys keep the original design's
text, which has no hash tag, for their consumers), so ``write_window_apart`` takes three
steps in this order: the run's fence checked (``fence.check_apart``), the window SET, the
pointer moved by a script on the pointer alone (``MOVE_LATEST``, forward only, so two
writers of one ticker still leave the newest window named). A reader still never sees
the pointer name a window that is not there; what the cluster gives up is the lease check
in the same step as the write (see ``stocksched.storage.fence``).
"""

from __future__ import annotations

from typing import Any

import redis

from stocksched.storage import keys
from stocksched.storage.fence import Fence, check_apart
from stocksched.storage.scripts import Call, evalsha_many

# KEYS: latest pointer. ARGV: window key, window head (``keys.window_head``), the window's
#       end date ("" when it has none), px ("" for no expiry)
# Moves the pointer unless it names a window of this head that ends later; 1 when moved.
MOVE_LATEST = """
local cur = redis.call('GET', KEYS[1])
if cur and ARGV[3] ~= '' and string.sub(cur, 1, #ARGV[2]) == ARGV[2] then
  local _, e = string.match(string.sub(cur, #ARGV[2] + 1), '^([^:]+):([^:]+)$')
  if e and ARGV[3] < e then
    return 0
  end
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
end
return 1
"""


def moves_forward(key: str, current: Any, prefix: str, ticker: str, interval: str) -> bool:
    """Whether ``key`` should become latest: no usable pointer yet, or its end is not earlier."""
    if current is None:
        return True
    current_end = window_end(str(current), prefix, ticker, interval)
    new_end = window_end(key, prefix, ticker, interval)
    return current_end is None or new_end is None or new_end >= current_end


def window_end(key: str, prefix: str, ticker: str, interval: str) -> str | None:
    """The end part of a window key of this prefix, ticker and interval, None if it is not one."""
    window = keys.data_key_window(key, prefix, ticker, interval=interval)
    return window[1] if window is not None else None


def write_window_apart(
    client: redis.Redis[str],
    key: str,
    window: tuple[str, str, str],
    payload: str,
    px: int | None,
    fence: Fence | None,
) -> None:
    """A cluster's window write (see the module docstring); ``window`` is (prefix, ticker,
    interval). FenceLostError when the run lost its lease before the write."""
    prefix, ticker, interval = window
    if fence is not None:
        check_apart(client, [fence])
    client.set(key, payload, px=px)
    call: Call = {
        "keys": [keys.latest_key(prefix, ticker, interval=interval)],
        "args": [
            key,
            keys.window_head(prefix, ticker, interval=interval),
            window_end(key, prefix, ticker, interval) or "",
            "" if px is None else px,
        ],
    }
    evalsha_many(client, MOVE_LATEST, [call])
