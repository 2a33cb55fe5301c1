"""SlotClaimer: due slots claimed in batches, one Redis round trip for all that are waiting.

When many jobs fall due in the same second (167 at once in ``bench/schedule_10k.py``),
claiming each on its own worker serialises the claims behind the pool and the GIL: the
last run starts long after its slot. The scheduler thread hands each due run to this one
thread instead; it claims every run queued since its previous round trip with one
pipeline of claim scripts (``LeaseManager.try_claim_many``, each script atomic on its
own) and gives each run to the worker pool together with its claim's answer, which the
worker acts on as before (``Claims.claim``). The scheduler thread itself still does no
network I/O, and a slow Redis delays the claims, not the scheduling.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from datetime import datetime

from stocksched.jobs.spec import JobSpec
from stocksched.scheduling.claims import RunHandle
from stocksched.scheduling.timetable import Timetable
from stocksched.storage.adapter import StorageError
from stocksched.storage.leases import ClaimRequest, ClaimResult, LeaseManager, MarkRunning
from stocksched.threads import BackgroundThread

log = logging.getLogger(__name__)

Due = tuple[JobSpec, RunHandle, datetime | None]  # the run, its handle, the job's next slot
#: Starts a claimed run on the pool: the run and its claim's answer (or why it failed).
Start = Callable[[JobSpec, RunHandle, datetime | None, ClaimResult | StorageError], None]


class SlotClaimer:
    """One thread claiming due slots in batches; started by the first ``put``.

    ``put`` and ``flush`` are called under the scheduler's lock. ``put`` only appends to
    a list: waking this thread for every slot of a burst would hand it the GIL each time
    and slow the dispatch of the rest; ``flush`` hands the batch over at the end of the
    scheduler's tick.
    """

    def __init__(self, leases: LeaseManager, table: Timetable, start: Start) -> None:
        self._leases = leases
        self._table = table
        self._start = start
        self._pending: list[Due] = []
        self._queue: queue.SimpleQueue[list[Due] | None] = queue.SimpleQueue()
        self._thread = BackgroundThread("claims", self._loop)

    def put(self, spec: JobSpec, handle: RunHandle, next_run: datetime | None) -> None:
        """Queue a due slot; it is claimed at the next ``flush``."""
        self._pending.append((spec, handle, next_run))

    def flush(self) -> None:
        """The slots queued so far are all there are for now: claim them."""
        if self._pending:
            self._thread.start()  # a no-op while it runs
            batch, self._pending = self._pending, []
            self._queue.put(batch)

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread once what is queued has been claimed and handed on."""
        if self._thread.alive:
            self._queue.put(None)
            self._thread.join(timeout)

    def _loop(self) -> None:
        while (batch := self._queue.get()) is not None:
            self._claim(batch)

    def _claim(self, batch: list[Due]) -> None:
        requests = [
            ClaimRequest(
                spec.id,
                handle.run_id,
                handle.trigger,
                handle.scheduled_for,
                handle.started_at,
                self._table.slot_ttl_ms(spec.id),
                MarkRunning(next_run),
            )
            for spec, handle, next_run in batch
        ]
        answers: list[ClaimResult | StorageError]
        try:
            answers = list(self._leases.try_claim_many(requests))
        except StorageError as exc:  # each run records it (``Claims.claim``)
            answers = [exc] * len(batch)
        for (spec, handle, next_run), answer in zip(batch, answers, strict=True):
            try:
                self._start(spec, handle, next_run, answer)
            except Exception:  # one run that cannot start must not stop the others
                log.exception(
                    "could not start run job=%s run_id=%s",
                    spec.id,
                    handle.run_id,
                    extra={"job": spec.id, "run_id": handle.run_id},
                )
