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
from dataclasses import dataclass

from stocksched.fanout import TickerRun, TickerWorker, drain
from stocksched.storage.adapter import StorageError
from stocksched.storage.fanout import FanoutRun, FanoutStore
from stocksched.threads import Periodic

log = logging.getLogger(__name__)

DISCOVER_S = 0.2  # how soon a replica joins a run another replica published
NO_DEADLINE_S = 24 * 3600.0  # a run without a timeout: as long as its keys live


@dataclass
class _Joined:
    """A run this replica works on: its meta, its task here, its consumers, and the timer
    that ends it here at the run's deadline."""

    run: FanoutRun
    task: TickerRun
    futures: list[Future[None]]
    ends: threading.Timer


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
        self._working: dict[str, _Joined] = {}  # by index member
        # Runs this replica does not work on: its own, or with a spec it cannot read.
        self._passed: set[str] = set()
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
            for joined in self._working.values():
                joined.task.cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def poll(self) -> None:
        """Join the runs published since the last poll; drop runs that ended or lost
        their lease. Idle, this is one read of the index."""
        try:
            members = set(self._store.members())
            with self._lock:
                working = dict(self._working)
                new = members - set(working) - self._passed
            found = self._store.runs(sorted(new))
            held = {
                m for m, j in working.items() if m in members and self._store.holds_lease(j.run)
            }
            joinable = [r for r in found if r.owner != self._replica and self._store.holds_lease(r)]
        except StorageError as exc:
            log.debug("fan-out worker: %s", exc)
            return
        with self._lock:
            for member, joined in list(self._working.items()):
                if member in held:
                    continue  # joined once: its consumers run until it is all accounted for
                joined.task.cancel.set()
                if all(f.done() for f in joined.futures):
                    joined.ends.cancel()
                    del self._working[member]
            self._passed = (self._passed & members) | {r.member for r in found} - {
                r.member for r in joinable
            }
            for run in joinable:
                self._join(run)

    def _join(self, run: FanoutRun) -> None:
        try:
            task = TickerRun.of(run, threading.Event())
        except ValueError as exc:  # a spec this version cannot read: leave it to others
            log.warning("fan-out run %s of job %s skipped: %s", run.run_id, run.job_id, exc)
            self._passed.add(run.member)
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
        self._working[run.member] = _Joined(run, task, futures, ends)
        log.info(
            "joined fan-out run job=%s run_id=%s owner=%s tickers=%d",
            run.job_id,
            run.run_id,
            run.owner,
            run.total,
            extra={"job": run.job_id, "run_id": run.run_id},
        )
