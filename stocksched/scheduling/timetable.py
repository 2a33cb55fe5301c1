"""The timetable: when each job's slots fire, and what becomes of each slot.

Pure timing decisions: no threads, no Redis. The job table and the heap of fire times,
arming, catch-up, jitter, calendar sessions, overlap and wall-clock steps (a job's
state, jitter and repeat ids are in ``slots``). What must be stored (a next_run, slots
not run) goes to a ``SlotSink``; the scheduler calls in under its lock.

Slot policies (per job, from jobs.yaml):

- catch-up: at startup and on resume, slots missed since the persisted ``next_run``
  are looked at. The newest one runs once, now, if it is less than ``catchup`` old;
  every other missed slot is recorded as ``missed``. A running daemon that falls
  behind (a suspended host) coalesces the same way but always runs the newest slot.
- overlap: a slot due while the job's previous run is still going is skipped
  (recorded) or, with ``overlap: queue``, runs once right after it.
- jitter: each slot fires at ``slot + offset``, the offset a hash of (job, slot) below
  ``jitter``, so every replica picks the same instant.
- calendar: a slot on a day the exchange does not trade is recorded as skipped.
- wall clock stepped back (seen live as a drop of wall minus monotonic time, or at
  startup as a job record whose last run finished after "now"): logged once; every job
  is re-armed from the new now. A slot at or before the job's latest slot ("mark") has
  been given its id already, so it runs again only if the job's period is shorter than
  the step (cronie's rule for wildcard jobs), under ``repeat_run_id`` so it neither
  collides with the earlier run nor runs twice across replicas; a fixed-time slot that
  already ran is passed over (DEBUG). Once the clock passes the mark, plain ids resume.
  A forward step is an ordinary "fell behind" and is caught up as such.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta

from stocksched.calendars import MarketCalendars
from stocksched.clock import Clock, iso_utc
from stocksched.jobs.spec import JobSpec
from stocksched.metrics import Metrics
from stocksched.model import JobStatus, RunStatus, ScheduledJob
from stocksched.scheduling.policies import SlotPolicy, SlotSink, slot_ttl_ms
from stocksched.scheduling.slots import (
    CLOCK_STEP_TOLERANCE_S,
    Entry,
    JobState,
    Repeat,
    adopt_mark,
    jitter_offset,
    log_step_back,
    plain_catchup,
)

log = logging.getLogger(__name__)

# Slots examined when catching up; beyond this the oldest are counted, not enumerated.
MAX_MISSED_SCAN = 100_000


class Timetable:
    """The job table and the heap of fire times; every method runs under the scheduler's lock."""

    def __init__(
        self, clock: Clock, metrics: Metrics, calendars: MarketCalendars, sink: SlotSink
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._sink = sink
        self._policy = SlotPolicy(calendars, sink)
        self.jobs: dict[str, JobState] = {}
        self._heap: list[Entry] = []
        self._seq = itertools.count()
        # Generations are never reused, also for a job removed and added back: a heap
        # entry left from before is then stale, not the job's next slot.
        self._gens = itertools.count(1)
        self.dirty = False  # the heap changed since the last tick
        self._wall_offset = self._read_wall_offset()

    # -- job set -----------------------------------------------------------------

    def set_jobs(self, records: Iterable[ScheduledJob], now: datetime) -> None:
        """Adopt the registry's records; unchanged jobs keep their place in the heap."""
        seen = set()
        behind: list[Repeat] = []  # jobs whose record says the clock went back
        for rec in records:
            seen.add(rec.job_id)
            old = self.jobs.get(rec.job_id)
            if old is not None and (old.spec_hash, old.paused) == (rec.spec_hash, rec.paused):
                continue
            state = self._new_state(rec, old, now, behind)
            self.jobs[rec.job_id] = state
            if (
                old is not None
                and old.active
                and state.active
                and (old.spec.schedule, old.spec.timezone) == (rec.spec.schedule, rec.spec.timezone)
            ):
                state.next_run = old.next_run  # a change that does not touch timing
                self._push(state, state.next_run)
            else:
                self.arm(state, now)
        if behind:
            log_step_back(max(r.step for r in behind), now, max(r.mark for r in behind), True)
        for job_id in set(self.jobs) - seen:
            del self.jobs[job_id]  # a run in progress finishes and is recorded
            self._metrics.remove_job(job_id)
        self.dirty = True

    def _new_state(
        self, rec: ScheduledJob, old: JobState | None, now: datetime, behind: list[Repeat]
    ) -> JobState:
        state = JobState(rec.spec, rec.spec_hash, rec.paused, rec.next_run, gen=next(self._gens))
        if old is not None:  # a slot queued behind a running run survives a reload
            state.outcome, state.queued = old.outcome, old.queued
            state.last_slot, state.repeats = old.last_slot, old.repeats
            return state
        if rec.status in (JobStatus.COMPLETED, JobStatus.FAILED):
            state.outcome = rec.status
        found = adopt_mark(state, rec, now)
        if found is not None:
            behind.append(found)
        return state

    def _read_wall_offset(self) -> float:
        """Wall minus monotonic seconds: constant while the wall clock only ticks or slews."""
        return self._clock.now().timestamp() - self._clock.monotonic()

    def check_clock(self, now: datetime) -> None:
        """Notice a backward wall-clock step since the last look and re-arm every job."""
        offset = self._read_wall_offset()
        before, self._wall_offset = self._wall_offset, offset
        if before - offset <= CLOCK_STEP_TOLERANCE_S:
            return  # a forward step is caught up by ``_advance`` as falling behind
        step = timedelta(seconds=round(before - offset, 3))
        marks: list[datetime] = []
        for state in self.jobs.values():
            if state.last_slot is not None and state.last_slot > now:
                # Repeats of an earlier step below this mark are covered by the new one.
                state.repeats = [
                    Repeat(state.last_slot, step),
                    *(r for r in state.repeats if r.mark > state.last_slot),
                ]
                marks.append(state.last_slot)
                state.last_slot = None
            if state.active and state.next_run is not None and state.next_run > now:
                state.gen = next(self._gens)  # the armed slot is an hour (a step) away
                state.next_run = state.spec.next_fire(now)
                self._push(state, state.next_run)
                self._persist_next_run(state)
        log_step_back(step, now, max(marks) if marks else None, False)

    # -- arming ------------------------------------------------------------------------

    def arm(self, state: JobState, now: datetime) -> None:
        """Give a (re)activated job its next slot, catching up on slots it missed."""
        if not state.active:
            self._push(state, None)
            return
        missed_from = state.next_run
        state.next_run = state.spec.next_fire(now)
        self._push(state, state.next_run)
        if missed_from is not None and missed_from <= now:
            self._catch_up(state, missed_from, now)
        if state.next_run != missed_from:
            self._persist_next_run(state)

    def _persist_next_run(self, state: JobState) -> None:
        """Keep the record's next_run current, so a restart does not re-count missed slots."""
        self._sink.next_run_changed(state.spec.id, state.next_run)

    def _catch_up(self, state: JobState, first: datetime, now: datetime) -> None:
        spec = state.spec
        missed = [
            first,
            *spec.parsed_schedule.slots_between(first, now, spec.zone, limit=MAX_MISSED_SCAN),
        ]
        newest = missed[-1]
        if spec.catchup > timedelta(0) and now - newest <= spec.catchup:
            missed.pop()
            log.info(
                "catching up job=%s slot=%s (missed while down)",
                spec.id,
                iso_utc(newest),
                extra={"job": spec.id},
            )
            self._push_entry(state, newest, newest, catchup=True)
        if missed:  # logged once written, by the replica that claimed them
            self.record_not_run(
                spec, missed, now, RunStatus.MISSED, "daemon was not running or job was paused"
            )

    def _push(self, state: JobState, slot: datetime | None) -> None:
        if state.active and slot is not None:
            self._push_entry(
                state, slot, slot + jitter_offset(state.spec.id, slot, state.spec.jitter), False
            )
        job_id = state.spec.id
        ts = state.next_run.timestamp() if state.active and state.next_run else 0
        self._metrics.job_next_run.labels(job=job_id).set(ts)
        self._metrics.job_paused.labels(job=job_id).set(0 if state.active else 1)

    def _push_entry(
        self,
        state: JobState,
        slot: datetime,
        fire_at: datetime,
        catchup: bool,
        run_id: str | None = None,
    ) -> None:
        heapq.heappush(
            self._heap,
            Entry(fire_at, next(self._seq), state.spec.id, state.gen, slot, catchup, run_id),
        )

    # -- due slots ---------------------------------------------------------------------

    def due(
        self, now: datetime, hold: Callable[[Entry], bool] | None = None
    ) -> Iterator[tuple[JobState, datetime, str | None, datetime]]:
        """Pop every slot firing by ``now``: (job, slot, run id of a rerun or None, fire
        time); ``hold``: which to leave in the heap for a later tick (``lead``)."""
        held: list[Entry] = []
        while self._heap and self._heap[0].fire_at <= now:
            entry = heapq.heappop(self._heap)
            state = self.jobs.get(entry.job_id)
            if state is None or state.gen != entry.gen or not state.active:
                continue  # stale entry: the job changed, paused or left the config
            if hold is not None and hold(entry):
                held.append(entry)
                continue
            slot = entry.slot
            if not entry.catchup:
                slot = self._advance(state, slot, now)
            yield state, slot, entry.run_id, entry.fire_at
        for entry in held:
            heapq.heappush(self._heap, entry)

    def next_fire_at(self) -> datetime | None:
        return self._heap[0].fire_at if self._heap else None

    def _advance(self, state: JobState, slot: datetime, now: datetime) -> datetime:
        """Move the job to its next slot; if it fell behind, run only the newest due slot."""
        spec = state.spec
        nxt = spec.next_fire(slot)  # one croniter step in the usual case
        if nxt <= now:  # fell behind: slots passed unseen; run only the newest
            later = [
                nxt,
                *spec.parsed_schedule.slots_between(nxt, now, spec.zone, limit=MAX_MISSED_SCAN),
            ]
            self.record_not_run(
                spec,
                [slot, *later[:-1]],
                now,
                RunStatus.MISSED,
                "scheduler fell behind (host suspended or overloaded)",
            )
            slot = later[-1]
            nxt = spec.next_fire(slot)
        state.next_run = nxt
        self._push(state, state.next_run)
        return slot

    def dispatch(
        self, state: JobState, slot: datetime, now: datetime, busy: bool, run_id: str | None
    ) -> str | None:
        """The run id to start for a due slot, or None (passed over, recorded, queued)."""
        return self._policy.dispatch(state, slot, now, busy, run_id)

    def record_not_run(
        self, spec: JobSpec, slots: list[datetime], now: datetime, status: RunStatus, reason: str
    ) -> None:
        self._policy.record_not_run(self.jobs.get(spec.id), spec, slots, now, status, reason)

    def slot_ttl_ms(self, job_id: str) -> int:
        state = self.jobs.get(job_id)
        return slot_ttl_ms(state.spec if state else None)

    # -- pauses and reruns -------------------------------------------------------------

    def follow_pause(
        self, state: JobState, paused: bool, now: datetime, at: datetime | None = None
    ) -> None:
        """Apply a pause override here; ``at``: a slot found paused, counted on resume."""
        if state.paused == paused:
            return
        state.paused = paused
        state.gen = next(self._gens)  # every heap entry of the job is stale now
        if at is not None and (state.next_run is None or at < state.next_run):
            state.next_run = at  # the slot was not run: resume's catch-up accounts for it
        self.arm(state, now)

    def rerun(self, state: JobState, slot: datetime, now: datetime, run_id: str) -> None:
        """Queue the rerun of an interrupted slot, now, under ``run_id``."""
        self._drop_plain_catchup(state.spec.id, slot)
        self._push_entry(state, slot, now, catchup=True, run_id=run_id)
        self.dirty = True

    def _drop_plain_catchup(self, job_id: str, slot: datetime) -> None:
        """Unqueue a catch-up of the slot being rerun (``slots.plain_catchup``)."""
        kept = [e for e in self._heap if not plain_catchup(e, job_id, slot)]
        if len(kept) != len(self._heap):
            self._heap = kept
            heapq.heapify(self._heap)
