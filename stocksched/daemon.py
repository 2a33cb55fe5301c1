"""Wires every component from settings, in one place, and runs the daemon's lifetime.

Start order: storage, sources, registry, executor, scheduler, first config load. Signal
handlers only set flags; the main thread acts on them (SIGTERM/SIGINT drain, SIGHUP reload).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import prometheus_client

from stocksched import __version__
from stocksched.clock import Clock, SystemClock, iso_utc
from stocksched.coordination import ReplicaHeartbeat
from stocksched.executor import JobExecutor
from stocksched.exitcodes import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from stocksched.facade import SchedulerServingApp
from stocksched.fanout import FanoutRuns
from stocksched.fanoutworker import FanoutWorker
from stocksched.http import Access, ApiConfigError, ApiServer, ApiStartError, create_app, load_token
from stocksched.metrics import Metrics
from stocksched.notify import SystemdNotifier
from stocksched.outbox import StorageHealth
from stocksched.ratelimit import RateLimiter, budget_name
from stocksched.registry import JobRegistry
from stocksched.reload import JobsReloader
from stocksched.scheduling.scheduler import MAX_SLEEP_S, JobScheduler
from stocksched.settings import Settings, SettingsError, split_listen, startup_summary
from stocksched.sources import lazy_fetchers, warm_up, yahoo_fetcher
from stocksched.sources.base import Fetcher
from stocksched.statesync import StateSync
from stocksched.storage.adapter import RedisAdapter, StorageError, connect
from stocksched.storage.butler import DataIOButler
from stocksched.storage.fanout import FanoutStore
from stocksched.storage.leases import LeaseManager
from stocksched.storage.ratelimit import build_rate_limiter
from stocksched.storage.replicas import list_replicas
from stocksched.watch import JobsWatcher

log = logging.getLogger(__name__)


def state_dir(settings: Settings) -> Path | None:
    """Where yfinance may keep caches: never the user's home.

    None means no state directory is configured: yfinance then gets a private temp
    directory that is removed at exit.
    """
    if settings.state_dir is not None:
        return settings.state_dir
    if os.environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return None


def _connect(settings: Settings) -> RedisAdapter:
    try:
        return RedisAdapter(connect(settings.redis_url, settings.redis_password_file))
    except ValueError as exc:  # bad URL scheme, unreadable password file: settings errors
        raise SettingsError(f"redis_url: {exc}") from None


def rate_limiter(settings: Settings, adapter: RedisAdapter) -> RateLimiter:
    """The limiter of ``max_requests_per_second``: this host's budget, or the shared one."""
    name = budget_name(settings.rate_limit_scope, settings.egress_id or socket.gethostname())
    return build_rate_limiter(adapter, settings.max_requests_per_second, name=name)


def _yahoo_fetchers(settings: Settings, adapter: RedisAdapter) -> dict[str, Fetcher]:
    """The production sources: one Yahoo session, rate limited across replicas, cached."""
    base = state_dir(settings)
    cache = base / "yfinance" if base is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    limiter = rate_limiter(settings, adapter)
    # yfinance and curl_cffi are imported by the first Yahoo fetch, not at start.
    return lazy_fetchers(lambda: yahoo_fetcher(cache, limiter))


class Watchdog:
    """Pings systemd's watchdog from the scheduler loop, at most once per interval."""

    def __init__(self, notifier: SystemdNotifier) -> None:
        self._notifier = notifier
        self._every = notifier.watchdog_interval()
        self._last = 0.0

    def max_sleep(self, default: float) -> float:
        """The loop pings from each round, so it must wake at least once per interval."""
        return default if self._every is None else min(default, self._every)

    def ping(self) -> None:
        now = time.monotonic()
        if self._every is not None and now - self._last >= self._every:
            self._last = now
            self._notifier.watchdog()


class Components:
    """Every collaborator, built from settings; shared by `run` and `run-job`."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        fetchers: dict[str, Fetcher] | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.notifier = notifier or SystemdNotifier()
        self.watchdog = Watchdog(self.notifier)
        # Set when Redis is reachable again: a restarted Redis may be empty, so reload.
        self.reload_requested = threading.Event()
        # `_created` samples double every counter's series for little use; at 10,000 jobs
        # they cost a quarter of /metrics (process-wide switch, so it is set here, once).
        prometheus_client.disable_created_metrics()
        self.metrics = Metrics(__version__)
        self.adapter = _connect(settings)
        self.embedded = self.adapter.embedded
        self.butler = DataIOButler(self.adapter)
        self.fetchers = (
            fetchers if fetchers is not None else _yahoo_fetchers(settings, self.adapter)
        )
        self.registry = JobRegistry(self.adapter, self.clock, settings.run_history)
        self.health = StorageHealth(
            self.clock, self.metrics, on_recovered=self.reload_requested.set
        )
        self._build_replica(settings)
        self._build_executor(settings)
        self._build_scheduling(settings)

    def _build_executor(self, settings: Settings) -> None:
        """The executor, and the fan-out of runs over replicas (not on the embedded store,
        which no other replica shares: a fan-out job then runs on its own replica)."""
        idle_ms = int(settings.fanout_reclaim_idle * 1000)
        store = None if self.embedded else FanoutStore(self.adapter, reclaim_idle_ms=idle_ms)
        n = settings.ticker_concurrency
        fanout = FanoutRuns(store, self.replica_id, n) if store is not None else None
        self.executor = JobExecutor(
            self.fetchers, self.butler, self.clock, n, self.metrics,
            parallel_runs=settings.pool_size, fanout=fanout,
        )  # fmt: skip
        self.fanout_worker = (
            FanoutWorker(store, self.executor, self.replica_id, n) if store is not None else None
        )

    def _build_replica(self, settings: Settings) -> None:
        """This replica's identity, its run leases and its heartbeat."""
        self.replica_id = settings.replica_id or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        )
        lease_ms = int(settings.lease_ttl * 1000)
        self.leases = LeaseManager(self.adapter, self.replica_id, lease_ms, clock=self.clock)
        self.heartbeat = ReplicaHeartbeat(
            self.adapter,
            self.replica_id,
            {"version": __version__, "hostname": socket.gethostname(), "pid": os.getpid()},
            settings.replica_ttl,
        )

    def _build_scheduling(self, settings: Settings) -> None:
        """The scheduler, and what feeds it: the jobs file's reloader, watcher and state sync."""
        self.scheduler = JobScheduler(
            self.registry,
            self.executor,
            self.clock,
            pool_size=settings.pool_size,
            metrics=self.metrics,
            health=self.health,
            leases=self.leases,
            max_sleep=self.watchdog.max_sleep(MAX_SLEEP_S),
            on_loop=self.watchdog.ping,
        )
        self.reloader = JobsReloader(
            settings.jobs, self.registry, self.scheduler, self.clock, self.metrics
        )
        self.watcher = JobsWatcher(self.reloader)
        self.sync = StateSync(
            self.registry,
            self.scheduler,
            self.reloader,
            self.heartbeat,
            self.health,
            self.adapter,
            allow_evicting=settings.allow_evicting_redis,
        )

    def replicas(self) -> list[dict[str, Any]] | None:
        try:
            found = list_replicas(self.adapter)
        except StorageError as exc:
            self.health.failed("list replicas", exc)
            return None  # status still answers during an outage, and says Redis is down
        self.health.ok()
        return found


class Daemon:
    """The process lifetime: wait for Redis and config, serve, reload on SIGHUP, drain."""

    def __init__(self, components: Components) -> None:
        self.c = components
        self.notifier = components.notifier
        self._stop = threading.Event()
        self._reload = components.reload_requested
        self._refused = False  # Redis refused at startup (evicting policy): exit 2
        self._warned_evicting = False
        self.api: ApiServer | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
        else:
            self._stop.set()

    def _build_api(self) -> ApiServer | None:
        """Refuse bad HTTP settings before anything starts (raises ApiConfigError)."""
        c = self.c
        http = c.settings.http
        if not http.enabled:
            return None
        host, port = split_listen(http.listen)
        token = load_token(http.token_file) if http.token_file else None
        access = Access.for_listen(host, token, protect_metrics=http.protect_metrics)
        facade = SchedulerServingApp(
            registry=c.registry,
            scheduler=c.scheduler,
            reloader=c.reloader,
            adapter=c.adapter,
            metrics=c.metrics,
            clock=c.clock,
            version=__version__,
            started_at=c.clock.now(),
            replicas=c.replicas,
        )
        return ApiServer(
            create_app(facade, access, http.max_body_bytes),
            host,
            port,
            log_level=c.settings.log_level,
            max_connections=http.max_connections,
            idle_timeout=http.idle_timeout,
        )

    def run(self) -> int:
        log.info(
            "starting stocksched %s: %s",
            __version__,
            startup_summary(self.c.settings, self.c.replica_id),
        )
        try:
            self.api = self._build_api()
        except ApiConfigError as exc:
            log.error("not starting: %s", exc)
            return EXIT_USAGE
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        if self.c.embedded:
            log.warning(
                "using the embedded in-process store (no redis_url, or memory://): "
                "job records and market data are NOT persisted"
            )
        # The API listens before Redis is waited for, so probes get the reason (/readyz 503
        # "waiting for Redis: ...", /healthz 200) instead of "connection refused". Nothing
        # runs before the first load, so a bind failure still leaves nothing behind.
        if self.api is not None:
            try:
                self.api.start()
            except ApiStartError as exc:
                log.error("not starting: %s", exc)
                return EXIT_FAIL
        if not self._first_load():
            if self.api is not None:
                self.api.stop()
            if self._refused:
                return EXIT_USAGE
            if not self._stop.is_set():
                return EXIT_FAIL
            self.notifier.stopping("stopped while waiting for Redis")
            return EXIT_OK
        # Runs of ours that a crash left behind: with a stable replica id they are ours
        # to record now; others' are found once their leases expire (main loop).
        self.c.scheduler.recover_interrupted(dead_replica=self.c.settings.replica_id)
        self.c.heartbeat.start()
        self.c.scheduler.start()
        if self.c.fanout_worker is not None:
            self.c.fanout_worker.start()
        self.c.watcher.start()
        line = self.status_line()
        log.info("stocksched %s running: %s", __version__, line)
        self.notifier.ready(line)
        threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()
        self._main_loop()
        return self._shutdown()

    def _warm_up(self) -> None:
        try:
            warm_up()
        except Exception:  # the first run then builds it, and reports what fails
            log.exception("warming up for the first runs failed; continuing")

    def _main_loop(self) -> None:
        """Until stopped: reloads, state other replicas changed, crash scans, STATUS=."""
        last_status = last_scan = last_sync = time.monotonic()
        scan_every = self.c.settings.lease_ttl / 2
        while not self._stop.is_set():
            self._stop.wait(0.5)
            if self._reload.is_set():
                self._do_reload()
            now = time.monotonic()
            if now - last_sync >= self.c.sync.every_s:
                last_sync = now
                self.c.sync.tick()
            if now - last_scan >= scan_every:
                last_scan = now
                self.c.scheduler.recover_interrupted()
            if self.notifier.enabled and now - last_status >= 10:
                last_status = now
                self.notifier.status(self.status_line())

    def _redis_fit(self) -> bool:
        """Refuse a Redis that may evict our keys (unless allowed); True if unreachable."""
        try:
            mem = self.c.adapter.memory()
        except StorageError:
            return True  # the load below fails and is retried with backoff
        if mem is None or not mem.evicts:
            return True
        if not self.c.settings.allow_evicting_redis:
            log.error("not starting: %s", mem.refusal())
            self._refused = True
            return False
        if not self._warned_evicting:
            self._warned_evicting = True
            log.warning("allow_evicting_redis is set, running anyway: %s", mem.refusal())
        return True

    def _first_load(self) -> bool:
        """Load the config, waiting (with backoff) for Redis; False on a bad config or stop."""
        delay = 0.5
        while not self._stop.is_set():
            if not self._redis_fit():
                return False
            status = self.c.reloader.reload()
            if status.ok:
                return True
            if not status.retryable:
                log.error("not starting: %s has errors (see above)", self.c.settings.jobs)
                return False
            self.notifier.status(f"waiting for Redis: {status.errors[0]}")
            self._stop.wait(delay)
            delay = min(30.0, delay * 2)
        return False

    def _do_reload(self) -> None:
        self._reload.clear()
        log.info("reloading %s", self.c.settings.jobs)
        self.notifier.reloading("reloading jobs file")
        self.c.reloader.reload()
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        """One line for `systemctl status`: jobs, next due job, last reload result."""
        c = self.c
        jobs = len(c.reloader.current.jobs) if c.reloader.current else 0
        nxt = c.scheduler.next_due()
        due = f"next {nxt[0]} at {iso_utc(nxt[1], 'seconds')}" if nxt else "nothing due"
        last = c.reloader.last
        reload = "ok" if last.ok else f"FAILED ({len(last.errors)} errors, old config kept)"
        return f"{jobs} jobs; {due}; last reload {reload}"

    def _shutdown(self) -> int:
        grace = self.c.settings.shutdown_grace
        self.notifier.stopping("draining running jobs")
        self.c.watcher.stop()
        log.info("stopping: no new runs; waiting up to %.0fs for running jobs", grace)
        if self.c.fanout_worker is not None:
            self.c.fanout_worker.stop()  # what it was working on is left to the others
        left = self.c.scheduler.stop(grace)
        self.c.heartbeat.stop()
        if self.api is not None:
            self.api.stop()
        if left:
            log.warning("shutdown grace over; abandoning runs of %s", ", ".join(left))
            logging.shutdown()
            os._exit(EXIT_OK)  # worker threads are not daemonic; do not wait for them
        log.info("stopped")
        return EXIT_OK
