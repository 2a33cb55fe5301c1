"""Background threads: the one way stocksched starts, watches and stops one.

``BackgroundThread`` is a named daemon thread with ``start``, ``alive`` and a bounded
``join`` that says when a thread outlived it (the jobs-file watcher, the HTTP server, the
scheduler loop). ``Periodic`` runs one step every ``interval_s`` on such a thread (the
lease keeper, the replica heartbeat); a step that raises is logged and the next one runs
as usual, so a surprise never silently ends the thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class BackgroundThread:
    """One named daemon thread running ``target`` once; restartable after it ended."""

    def __init__(self, name: str, target: Callable[[], object]) -> None:
        self.name = name
        self._target = target
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread; a no-op while it is still running."""
        if self.alive:
            return
        self._thread = threading.Thread(target=self._target, name=self.name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the thread to end; False (and a warning) if it did not."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("%s thread did not stop within %.1fs", self.name, timeout)
            return False
        self._thread = None
        return True


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
        self._thread = BackgroundThread(name, self._loop)

    def start(self) -> None:
        self._stop.clear()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._step()
            except Exception:  # the thread must outlive any surprise
                self._log.exception(self._failed)

    @property
    def alive(self) -> bool:
        return self._thread.alive

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current step and wait for the thread (at most ``timeout``)."""
        self._stop.set()
        self._thread.join(timeout)
