"""RunRecorder: the results of runs that ended, recorded in batches on one thread.

A worker hands its run here as soon as the body is over (``put``) and is free for the
next due run. The recorder thread takes every run that ended since its previous round
trip and sends their ``RECORD`` scripts in one pipeline (``JobRegistry.record_own_runs``),
each script still atomic and fenced by its own run's lease, then releases and forgets
them under one hold of the scheduler's lock. With one round trip per result, the 167
runs of a burst shared the GIL with a thread that gave it up and took it back for every
result (the convoy effect of an I/O thread among CPU-bound ones): start lateness p99
4.6x APScheduler's (issue 11). What each result comes to is its own, as before: a lost
lease writes nothing and is logged, a job that left the config keeps its history, and a
result Redis did not take is kept in the outbox and retried on its own.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor

from stocksched.jobs.spec import JobSpec
from stocksched.model import RunResult
from stocksched.registry import JobRegistry
from stocksched.scheduling.bookkeeping import Bookkeeping
from stocksched.scheduling.claims import Claims, RunHandle
from stocksched.storage.adapter import StorageError
from stocksched.storage.fence import FenceLostError

log = logging.getLogger(__name__)

#: A run whose body is over: its job, handle, and result (None: nothing to record).
Ended = tuple[JobSpec, RunHandle, RunResult | None]
Own = tuple[RunResult, RunHandle]  # a result fenced by the run's lease


class RunRecorder:
    """Records ended runs in the order they end, every one waiting in one round trip.

    ``thread`` is a one-thread executor (the scheduler shuts it down at drain); once it
    is shut down, ``put`` records on the caller's thread. ``finish`` forgets a batch of
    recorded runs (``Runs._finish_all``).
    """

    def __init__(
        self,
        registry: JobRegistry,
        book: Bookkeeping,
        claims: Claims,
        thread: Executor,
        finish: Callable[[list[Ended]], None],
    ) -> None:
        self._registry = registry
        self._book = book
        self._claims = claims
        self._thread = thread
        self._finish = finish
        self._lock = threading.Lock()
        self._waiting: list[Ended] = []
        self._draining = False  # a drain is queued or running: it takes what is waiting

    def put(self, spec: JobSpec, handle: RunHandle, result: RunResult | None) -> None:
        """Record ``result`` (if any), release the lease and forget the run, soon.

        Wakes the thread only when no drain is under way: a result that ends during a
        round trip goes with the next batch, without a hand-over of its own.
        """
        with self._lock:
            self._waiting.append((spec, handle, result))
            if self._draining:
                return
            self._draining = True
        try:
            self._thread.submit(self._drain)
        except RuntimeError:  # the recorder is shut down (drain over): record here
            self._drain()

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._waiting = self._waiting, []
                if not batch:
                    self._draining = False
                    return
            try:
                self.conclude(batch)
            except Exception:  # the next batch must still be recorded
                log.exception("recording %d run(s) failed", len(batch))

    def conclude(self, batch: list[Ended]) -> None:
        """Record the batch's results (fenced; the same scripts end the leases), then
        release and forget every run of it, whatever the records came to."""
        try:
            self._record(batch)
        finally:
            for _, handle, _ in batch:
                self._claims.release(handle)
            self._finish(batch)

    def _record(self, batch: list[Ended]) -> None:
        own: list[Own] = []
        for _, handle, result in batch:
            if result is None:
                continue
            if handle.lease is None:  # holds no lease: an unfenced record (not a slot's)
                self._book.outbox.run("record run", functools.partial(self._book.record, result))
            else:
                own.append((result, handle))
        if own:
            self._book.outbox.run_many(
                "record run",
                [functools.partial(self._record_one, result, handle) for result, handle in own],
                functools.partial(self._record_many, own),
            )

    def _record_many(self, own: list[Own]) -> list[StorageError | None]:
        """One pipeline of fenced records; per run, the StorageError that kept it out."""
        fenced = []
        for result, handle in own:
            assert handle.lease is not None
            fenced.append((result, handle.lease.fence()))
        errors: list[StorageError | None] = []
        for (result, handle), answer in zip(
            own, self._registry.record_own_runs(fenced), strict=True
        ):
            if isinstance(answer, StorageError):
                errors.append(answer)  # this one alone goes to the outbox
            else:
                _recorded(result, handle, answer)
                errors.append(None)
        return errors

    def _record_one(self, result: RunResult, handle: RunHandle) -> None:
        """One result on its own: the outbox's retry of a record Redis did not take."""
        assert handle.lease is not None
        answer: bool | FenceLostError
        try:
            answer = self._registry.record_own_run(result, handle.lease.fence())
        except FenceLostError as exc:
            answer = exc
        _recorded(result, handle, answer)


def _recorded(result: RunResult, handle: RunHandle, answer: bool | FenceLostError) -> None:
    """What the record of a run of ours came to; either way the lease needs no release."""
    if isinstance(answer, FenceLostError):
        log_fence_lost(result.job_id, result.run_id, "before its result was recorded")
    elif not answer:
        log.info(
            "job %s left the config mid-run; run %s kept in its history",
            result.job_id,
            result.run_id,
            extra={"job": result.job_id, "run_id": result.run_id},
        )
    handle.lease_done = True


def log_fence_lost(job_id: str, run_id: str, when: str) -> None:
    log.error(
        "lease lost job=%s run_id=%s %s: nothing more of this run is stored (another "
        "replica recorded it as interrupted; this process was stalled past its lease)",
        job_id,
        run_id,
        when,
        extra={"job": job_id, "run_id": run_id},
    )
