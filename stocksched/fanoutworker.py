"""Every replica's share of other replicas' fanned-out runs (``fanout: true``, issue 14).

``FanoutWorker`` polls the index of fanned-out runs every ``DISCOVER_S``; for each run
another replica owns, it puts ``concurrency`` consumers (``stocksched.fanout.drain``) on
its own pool, fetching and storing through the executor's per-ticker code with the
owner's window, deadline and lease token. A run whose owner lost its lease (it died, or
stalled past it) is dropped at once: its writes would be refused anyway; at the run's
deadline the fetches in flight here are cancelled, so nothing is stored after it. Stopping the
worker leaves the entries it was working on pending, for another replica to reclaim.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from stocksched.fanout import TickerRun, TickerWorker, drain
from stocksched.storage.adapter import StorageError
from stocksched.storage.fanout import FanoutRun, FanoutStore
from stocksched.threads import Periodic

log = logging.getLogger(__name__)

DISCOVER_S = 0.2  # how soon a replica joins a run another replica published
NO_DEADLINE_S = 24 * 3600.0  # a run without a timeout: as long as its keys live


class FanoutWorker:
    """Joins the fanned-out runs of other replicas; ``start``/``stop`` with the daemon."""

    def __init__(
        self, store: FanoutStore, executor: TickerWorker, replica_id: str, concurrency: int
    ) -> None:
        self._store = store
        self._executor = executor
        self._replica = replica_id
        self._concurrency = concurrency
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fanout")
        # run member -> its task here, its consumers, and the timer that ends it here
        self._working: dict[str, tuple[TickerRun, list[Future[None]], threading.Timer]] = {}
        self._skipped: set[str] = set()  # runs whose spec this replica cannot read
        self._lock = threading.Lock()
        self._loop = Periodic(
            "fanout-worker", DISCOVER_S, self.poll, failed="fan-out worker step failed"
        )

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        """No more entries taken; those being worked on are left pending."""
        self._loop.stop()
        with self._lock:
            for task, _futures, _ends in self._working.values():
                task.cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def poll(self) -> None:
        """Join the runs published since the last poll; drop runs that ended or lost
        their lease."""
        try:
            runs = [r for r in self._store.active() if r.owner != self._replica]
            live = {r.member: r for r in runs if self._store.holds_lease(r)}
        except StorageError as exc:
            log.debug("fan-out worker: %s", exc)
            return
        with self._lock:
            for member, (task, futures, ends) in list(self._working.items()):
                if member in live:
                    continue  # joined once: its consumers run until it is all accounted for
                task.cancel.set()
                if all(f.done() for f in futures):
                    ends.cancel()
                    del self._working[member]
            self._skipped &= set(live)
            for member, run in live.items():
                if member not in self._working and member not in self._skipped:
                    self._join(run)

    def _join(self, run: FanoutRun) -> None:
        try:
            task = TickerRun.of(run, threading.Event())
        except ValueError as exc:  # a spec this version cannot read: leave it to others
            log.warning("fan-out run %s of job %s skipped: %s", run.run_id, run.job_id, exc)
            self._skipped.add(run.member)
            return
        # Past the run's timeout nothing more is stored here: the fetches in flight then
        # see the run cancelled, as the owner's own do.
        left = NO_DEADLINE_S if task.deadline is None else task.deadline - time.monotonic()
        ends = threading.Timer(max(0.0, left), task.cancel.set)
        ends.daemon = True
        ends.start()
        work = self._executor.ticker_work(task)
        futures = [
            self._pool.submit(drain, self._store, run, self._replica, task, work, hand_back=True)
            for _ in range(max(1, min(self._concurrency, run.total)))
        ]
        self._working[run.member] = (task, futures, ends)
        log.info(
            "joined fan-out run job=%s run_id=%s owner=%s tickers=%d",
            run.job_id,
            run.run_id,
            run.owner,
            run.total,
            extra={"job": run.job_id, "run_id": run.run_id},
        )
