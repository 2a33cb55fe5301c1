"""Claim ahead of the slot: the Redis round trip of a slot claim happens before the
slot time, and the run's body starts at the slot time itself (issue 11).

The scheduler thread hands a slot to the ``SlotClaimer`` ``CLAIM_LEAD`` before it is
due, so waking up, the claim script's round trip and the hand-over to a worker are
behind it when the slot comes; the worker then waits for the slot time (its fire time:
the slot plus its jitter offset) on the scheduler's clock and starts the body. What is
decided early and what is not:

- A slot whose job still has a run in progress here is not handed over early: it stays
  in the timetable until its fire time (or until that run ends), so ``overlap: skip``
  and ``queue`` judge it at the slot time, as without a lead.
- A pause (or a shutdown) that lands between the claim and the slot time does not stop
  the run: it runs as if the pause had come just after its start, the same as a pause
  made during a run. Only a cancelled run (shutdown grace over, lease lost) does not
  start; it is recorded failed with the reason, which also ends its lease.
- Manual runs, catch-up runs and reruns are due now: no wait.
- The wait is at most the lead, measured once: a wall clock stepped back while a run
  waits delays it by no more than ``CLAIM_LEAD``.

The lead is larger than a typical claim round trip with 167 slots in one pipeline on a
loaded 2-core machine (a few ms) plus the scheduler thread waking late, and small
against a lease (the lease is taken 25 ms earlier: nothing that matters).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime, timedelta

from stocksched.clock import Clock
from stocksched.scheduling.slots import Entry

CLAIM_LEAD = timedelta(milliseconds=25)


class ClaimLead:
    """Which due entries the scheduler thread hands over early, and how long it sleeps.

    Used under the scheduler's lock, once per tick: ``begin``, then ``hold`` for each
    entry popped before its fire time, then ``sleep_s``.
    """

    def __init__(self, running: Mapping[str, object]) -> None:
        self._running = running  # job id -> its run in progress here
        self._now = datetime.min
        self._lead = timedelta(0)
        self._holding = False

    def begin(self, now: datetime, lead: timedelta) -> datetime:
        """Start a tick at ``now``; returns the horizon: slots firing up to it are due."""
        self._now, self._lead, self._holding = now, lead, False
        return now + lead

    def hold(self, entry: Entry) -> bool:
        """Leave an early entry in the timetable while its job has a run in progress."""
        if entry.fire_at > self._now and entry.job_id in self._running:
            self._holding = True
            return True
        return False

    def sleep_s(self, next_due: datetime, now: datetime) -> float:
        """Seconds until the next tick: the lead before ``next_due``, or ``next_due``
        itself when it is an entry held back (the end of that run also wakes the loop)."""
        lead = timedelta(0) if self._holding else self._lead
        return (next_due - lead - now).total_seconds()


def wait_for_slot(clock: Clock, start_at: datetime | None, cancel: threading.Event) -> bool:
    """On the worker: wait until ``start_at`` on ``clock``; False if cancelled meanwhile.

    One wait of at most ``CLAIM_LEAD`` (a fake clock that does not move is not waited
    for beyond it); ``threading.Event.wait`` wakes within a fraction of a millisecond.
    """
    if start_at is not None:
        remaining = (start_at - clock.now()).total_seconds()
        if remaining > 0:
            cancel.wait(min(remaining, CLAIM_LEAD.total_seconds()))
    return not cancel.is_set()
