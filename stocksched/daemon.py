"""Wires every component from settings, in one place, and runs the daemon's lifetime.

Start order: storage, sources, registry, executor, scheduler, first config load. Signal
handlers only set flags; the main thread acts on them (SIGTERM/SIGINT drain, SIGHUP reload).
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType

from stocksched import __version__
from stocksched.clock import Clock, SystemClock
from stocksched.executor import JobExecutor
from stocksched.metrics import Metrics
from stocksched.registry import JobRegistry
from stocksched.reload import ConfigReloader
from stocksched.scheduler import JobScheduler
from stocksched.settings import Settings
from stocksched.sources import build_fetchers, configure_yfinance, new_session
from stocksched.sources.base import Fetcher
from stocksched.storage.adapter import RedisAdapter, connect, is_embedded
from stocksched.storage.butler import DataIOButler

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 1


def state_dir(settings: Settings) -> Path:
    """Where yfinance may keep caches: never the user's home."""
    if settings.state_dir is not None:
        return settings.state_dir
    if os.environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path(tempfile.mkdtemp(prefix="stocksched-"))


class Components:
    """Every collaborator, built from settings; shared by `run` and `run-job`."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        fetchers: dict[str, Fetcher] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = Metrics(__version__)
        self.client = connect(settings.redis_url, settings.redis_password_file)
        self.embedded = is_embedded(self.client)
        self.adapter = RedisAdapter(self.client)
        self.butler = DataIOButler(self.adapter)
        if fetchers is None:
            cache = state_dir(settings) / "yfinance"
            cache.mkdir(parents=True, exist_ok=True)
            session = new_session()
            configure_yfinance(cache, session=session)
            fetchers = build_fetchers(session=session)
        self.fetchers = fetchers
        self.registry = JobRegistry(self.adapter, self.clock, settings.run_history)
        self.executor = JobExecutor(self.fetchers, self.butler, self.clock,
                                    settings.ticker_concurrency, self.metrics)
        self.scheduler = JobScheduler(self.registry, self.executor, self.clock,
                                      pool_size=settings.pool_size, metrics=self.metrics)
        self.reloader = ConfigReloader(settings.jobs, self.registry, self.scheduler,
                                       self.clock, self.metrics)


class Daemon:
    def __init__(self, components: Components) -> None:
        self.c = components
        self._stop = threading.Event()
        self._reload = threading.Event()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
        else:
            self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        c = self.c
        if c.embedded:
            log.warning("no redis_url configured: using the embedded in-process store; "
                        "job records and market data are NOT persisted")
        status = c.reloader.reload()
        if not status.ok:
            log.error("not starting: %s has errors (see above)", c.settings.jobs)
            return EXIT_CONFIG
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        c.scheduler.start()
        log.info("stocksched %s running: %d jobs from %s", __version__,
                 len(c.reloader.current.jobs) if c.reloader.current else 0, c.settings.jobs)
        while not self._stop.is_set():
            self._stop.wait(0.5)
            if self._reload.is_set():
                self._reload.clear()
                log.info("SIGHUP: reloading %s", c.settings.jobs)
                c.reloader.reload()
        return self._shutdown()

    def _shutdown(self) -> int:
        grace = self.c.settings.shutdown_grace
        log.info("stopping: no new runs; waiting up to %.0fs for running jobs", grace)
        left = self.c.scheduler.stop(grace)
        if left:
            log.warning("shutdown grace over; abandoning runs of %s", ", ".join(left))
            logging.shutdown()
            os._exit(EXIT_OK)  # worker threads are not daemonic; do not wait for them
        log.info("stopped")
        return EXIT_OK
