"""Fan-out of one run's tickers over every live replica (``fanout: true``, issue 14).

One host's request budget caps one run's fetch rate (Yahoo limits per client address),
so a big job runs faster only on several hosts. The replica that claims the slot owns
the run: ``FanoutRuns`` puts one entry per ticker on the run's Redis stream
(``stocksched.storage.fanout``), works on them itself, and assembles the run's result
from every ticker's outcome, with how many tickers each replica fetched. Every other
replica's ``FanoutWorker`` (stocksched.fanoutworker) finds the run in the index and
works on it too. Both go through ``drain``: take an entry (``XREADGROUP``), fetch and
store the ticker through the executor's own per-ticker code (the series upsert is
idempotent, so a redelivered ticker changes nothing), record its outcome and
acknowledge it.

What keeps a run whole: an entry a replica took and never acknowledged (it was killed)
is reclaimed by any replica after ``reclaim_idle_s`` (``XAUTOCLAIM``); one handed out
more than ``MAX_DELIVERIES`` times is dead-lettered and fails its ticker. The run still
ends at its ``timeout`` (tickers not done by then fail, as in a run on one replica), and
every replica's writes are fenced by the owner's lease: a run that lost its lease stores
nothing more, wherever its tickers are fetched. A replica that stops (SIGTERM, lost
lease) leaves the entry it was working on pending, for another to reclaim.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from typing import Protocol

from stocksched.jobs.spec import JobSpec
from stocksched.storage.adapter import StorageError
from stocksched.storage.fanout import FanoutRun, FanoutStore
from stocksched.storage.fence import Fence
from stocksched.tickers import TickerOutcome

log = logging.getLogger(__name__)

POLL_S = 0.1  # how soon an idle consumer looks again (and the owner counts outcomes)
RECLAIM_IDLE_S = 30.0  # default: an entry pending this long is taken from its replica

Work = Callable[[str], TickerOutcome]
Submit = Callable[[Callable[[], None]], Future[None]]


@dataclass(frozen=True)
class TickerRun:
    """One run as every replica works on it: the owner's job, window, deadline and fence."""

    job: JobSpec
    run_id: str
    start: date
    end: date
    deadline: float | None  # this process's time.monotonic() instant; None: no timeout
    cancel: threading.Event
    fence: Fence | None

    def describe(self, owner: str, total: int) -> FanoutRun:
        """The run's ``meta``: the deadline as Unix time, so other hosts read it."""
        left = None if self.deadline is None else self.deadline - time.monotonic()
        return FanoutRun(
            job_id=self.job.id,
            run_id=self.run_id,
            spec_json=json.dumps(self.job.to_json()),
            start=self.start.isoformat(),
            end=self.end.isoformat(),
            deadline=None if left is None else time.time() + left,
            owner=owner,
            token=self.fence.token if self.fence is not None else "",
            total=total,
        )

    @classmethod
    def of(cls, run: FanoutRun, cancel: threading.Event) -> TickerRun:
        """The task another replica works on, from the run's ``meta``."""
        deadline = None
        if run.deadline is not None:
            deadline = time.monotonic() + (run.deadline - time.time())
        return cls(
            job=JobSpec.model_validate(json.loads(run.spec_json)),
            run_id=run.run_id,
            start=date.fromisoformat(run.start),
            end=date.fromisoformat(run.end),
            deadline=deadline,
            cancel=cancel,
            fence=Fence(run.job_id, run.run_id, run.token) if run.token else None,
        )

    def over(self) -> bool:
        """Cancelled, or past the deadline: this replica takes no more of its tickers."""
        if self.cancel.is_set():
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline


class TickerWorker(Protocol):
    """What fetches and stores one ticker of a run (``JobExecutor.ticker_work``)."""

    def ticker_work(self, task: TickerRun) -> Work: ...


@dataclass
class Fanned:
    """A run's ticker outcomes: fanned out (as the owner assembled them) or run here."""

    outcomes: dict[str, TickerOutcome]
    fetched_by: dict[str, int] = field(default_factory=dict)
    cut_short: bool = False  # ended (timeout, cancel) before every ticker was done


def encode(outcome: TickerOutcome, replica: str) -> str:
    return json.dumps({**asdict(outcome), "replica": replica})


def decode(raw: str) -> tuple[TickerOutcome, str]:
    """An outcome ``encode`` wrote, on this or another version (unknown fields ignored)."""
    data = json.loads(raw)
    known = {f.name for f in fields(TickerOutcome)}
    outcome = TickerOutcome(**{k: v for k, v in data.items() if k in known})
    return outcome, str(data.get("replica", ""))


def drain(
    store: FanoutStore,
    run: FanoutRun,
    consumer: str,
    task: TickerRun,
    work: Work,
    *,
    hand_back: bool,
) -> None:
    """Work on the run's entries, one at a time, until it is all accounted for or over.

    Takes new entries first, then ones other replicas left pending too long; with
    neither, waits ``POLL_S`` for a reclaimable one unless every ticker is accounted for.
    An outage of Redis is waited out (until the run is over). ``hand_back``: an entry
    whose work this replica's cancel cut short is left pending for another replica (a
    worker stopping); the owner records it as it ended, since its cancel ends the run.
    """
    while not task.over():
        try:
            entries = store.take(run, consumer)
            if entries is None:
                return  # the run is finished: its keys are gone
            entries = entries or store.reclaim(run, consumer)
            if not entries and store.counts(run) >= run.total:
                return
            for entry in entries:
                outcome = work(entry.ticker)
                if hand_back and task.cancel.is_set():
                    return  # stopped while working: left pending, for another to reclaim
                store.complete(run, entry, encode(outcome, consumer))
        except StorageError as exc:
            log.warning(
                "fan-out of run %s of job %s: %s; trying again",
                run.run_id,
                run.job_id,
                exc,
                extra={"job": run.job_id, "run_id": run.run_id},
            )
            entries = []
        if not entries:
            task.cancel.wait(POLL_S)


class FanoutRuns:
    """The owner's part of a fanned-out run: publish, work on it, assemble its outcomes."""

    def __init__(self, store: FanoutStore, replica_id: str, concurrency: int) -> None:
        self._store = store
        self._replica = replica_id
        self._concurrency = concurrency
        self._running: dict[str, FanoutRun] = {}  # run id -> its run, while it runs here

    def progress(self, run_id: str) -> tuple[int, int] | None:
        """(tickers done on any replica, tickers in all) of a run this replica owns."""
        run = self._running.get(run_id)
        if run is None:
            return None
        try:
            return self._store.counts(run), run.total
        except StorageError:
            return None  # the page says nothing of progress during an outage

    def run(self, task: TickerRun, work: Work, submit: Submit) -> Fanned:
        """Every ticker's outcome (those not done by the deadline or cancel are missing).

        A run that cannot be published fails every ticker as not stored (Redis is
        unavailable); once published, an outage is waited out until the deadline.
        """
        tickers = list(task.job.tickers)
        run = task.describe(self._replica, len(tickers))
        try:
            self._store.publish(run, tickers)
        except StorageError as exc:
            return Fanned(
                {t: TickerOutcome(t, error=str(exc), storage_failed=True) for t in tickers}
            )
        self._running[run.run_id] = run
        try:
            own = [
                submit(lambda: drain(self._store, run, self._replica, task, work, hand_back=False))
                for _ in range(max(1, min(self._concurrency, len(tickers))))
            ]
            cut_short = not self._wait(run, task)
            if cut_short:  # let this replica's tickers that just ended say how (lost lease)
                wait(own, timeout=POLL_S)
            done, dead = self._store.results(run)
        finally:
            del self._running[run.run_id]
            try:
                self._store.finish(run)
            except StorageError as exc:  # its keys expire after the deadline anyway
                log.warning("fan-out keys of run %s left to expire: %s", run.run_id, exc)
        return _assemble(done, dead, cut_short)

    def _wait(self, run: FanoutRun, task: TickerRun) -> bool:
        """Until every ticker is accounted for (True), or the run is over (False)."""
        while not task.over():
            try:
                if self._store.counts(run) >= run.total:
                    return True
            except StorageError as exc:
                log.warning("fan-out of run %s: %s; trying again", run.run_id, exc)
            task.cancel.wait(POLL_S)
        return False


def _assemble(done: dict[str, str], dead: dict[str, str], cut_short: bool) -> Fanned:
    """Outcomes by ticker: completed ones (a late outcome beats a dead letter), then dead
    letters as failures; the count of tickers each replica fetched."""
    fanned = Fanned({t: TickerOutcome(t, error=why) for t, why in dead.items()}, {}, cut_short)
    for ticker, raw in done.items():
        outcome, replica = decode(raw)
        fanned.outcomes[ticker] = outcome
        if not outcome.error:
            fanned.fetched_by[replica] = fanned.fetched_by.get(replica, 0) + 1
    return fanned
