"""Test doubles for things inside the process that tests must control: time."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._mono = 1000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def set(self, t: datetime) -> None:
        with self._lock:
            self._mono += (t - self._now).total_seconds()
            self._now = t

    def advance(self, delta: timedelta | float) -> datetime:
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        self.set(self.now() + delta)
        return self.now()

    def step_wall(self, delta: timedelta | float) -> datetime:
        """Move the wall clock alone (an NTP step, ``date -s``); monotonic time goes on."""
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        with self._lock:
            self._now += delta
            return self._now
