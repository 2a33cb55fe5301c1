"""Python's full garbage-collection passes kept out of the bursts of due runs.

A full (generation 2) pass walks every object the collector tracks while it holds the
GIL: with 10,000 jobs loaded that is 40-100 ms in which no run starts. Runs allocate, so
now and then one fell in a busy second, and it set the p99 of the start lateness in
``bench/schedule_10k.py`` at 20 and at 167 due per second (one late second: p99 about
equal to the max; issue 11). ``GcSettler`` freezes what is alive (``gc.freeze``: moved
to a generation the collector never walks) once the jobs are loaded, and later, when the
scheduler is idle (nothing running, nothing due within a second), collects and freezes
again, so the passes in a busy second walk only what came since. The price: a reference
cycle that becomes garbage once frozen is never freed (objects without cycles are freed
by reference counting, as always); each settle collects first, so only what is alive
and reachable is frozen.
"""

from __future__ import annotations

import gc
from datetime import datetime

from stocksched.clock import Clock

IDLE_S = 1.0  # settle only when the next slot is at least this far away
# and at most this often: soon enough after the start to take in the modules the daemon
# warms up once ready (pandas: ~33,000 objects, ~12 ms a pass), rare enough to cost
# nothing (a pass over what is not frozen yet takes a few ms)
EVERY_S = 10.0


class GcSettler:
    def __init__(self, clock: Clock, every_s: float = EVERY_S) -> None:
        self._clock = clock
        self._every = every_s
        self._last: float | None = None

    def freeze(self) -> None:
        """Freeze what is alive now (the loaded jobs); no collection, so it costs nothing."""
        gc.freeze()
        self._last = self._clock.monotonic()

    def idle(self, next_due: datetime | None, busy: bool) -> None:
        """The scheduler is about to sleep until ``next_due`` (None: no slot armed):
        collect and freeze if nothing runs, nothing is due soon, and none was lately."""
        if busy or (
            next_due is not None and (next_due - self._clock.now()).total_seconds() < IDLE_S
        ):
            return
        now = self._clock.monotonic()
        if self._last is not None and now - self._last < self._every:
            return
        gc.collect()  # walks only what is not frozen yet
        gc.freeze()
        self._last = now
