"""Put on PYTHONPATH only for daemons the clock-step tests run under libfaketime.

libfaketime 0.9.10 with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` (a step of the wall clock
alone, as NTP or ``date -s`` make it) mangles ``clock_nanosleep(CLOCK_MONOTONIC,
TIMER_ABSTIME)``, which ``time.sleep`` uses from Python 3.11: every sleep fails with
EINVAL (wolfcw/libfaketime#426). A relative ``select`` timeout sleeps just as long
without that call, so the daemon under test sleeps as it would on a real host.
"""

import select
import time


def _sleep(secs: float) -> None:
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], secs)


time.sleep = _sleep  # type: ignore[assignment]
