"""A background thread that runs one step every ``interval_s`` until stopped.

The one way stocksched runs a periodic step beside its main loop (the lease keeper and
the replica heartbeat): ``start``, ``stop`` (joins), ``alive``. A step that raises is
logged and the next one runs as usual, so a surprise never silently ends the thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(
        self,
        name: str,
        interval_s: float,
        step: Callable[[], object],
        *,
        failed: str,
        logger: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self._interval = interval_s
        self._step = step
        self._failed = failed  # logged with the traceback when a step raises
        self._log = logger or log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._step()
            except Exception:  # the thread must outlive any surprise
                self._log.exception(self._failed)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current step and wait for the thread (at most ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
