"""JobScheduler: one thread that sleeps until the earliest next fire time, then dispatches.

Due runs go to a bounded thread pool; a job never runs twice at once. The scheduler
thread itself does no network I/O: Redis bookkeeping happens in worker threads.
``tick(now)`` is the whole decision step, so tests drive it with a fake clock and
never sleep.

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

import hashlib
import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from stocksched.calendars import MarketCalendars
from stocksched.clock import Clock, iso_utc
from stocksched.config import JobSpec
from stocksched.coordination import (
    ClaimOutcome,
    InflightRun,
    Lease,
    LeaseKeeper,
    LeaseManager,
    rerun_run_id,
)
from stocksched.executor import JobExecutor, manual_run_id, repeat_run_id, scheduled_run_id
from stocksched.metrics import Metrics
from stocksched.model import JobStatus, RunResult, RunStatus, ScheduledJob, Trigger
from stocksched.outbox import Outbox, StorageHealth
from stocksched.registry import JobRegistry, UnknownJobError
from stocksched.storage.adapter import StorageError
from stocksched.storage.fence import FenceLostError

log = logging.getLogger(__name__)

# History entries written for one stretch of missed slots; the metric counts them all.
MAX_MISSED_RECORDS = 100
# After the shutdown grace, how long cancelled runs get to record what they did.
CANCEL_WAIT_S = 3.0
# Slots examined when catching up; beyond this the oldest are counted, not enumerated.
MAX_MISSED_SCAN = 100_000
# A wall clock falling this far behind the monotonic clock between two looks is a step
# back; NTP slewing moves it by well under a millisecond per second.
CLOCK_STEP_TOLERANCE_S = 1.0
# The loop wakes at least this often (the daemon lowers it to its watchdog interval).
MAX_SLEEP_S = 30.0


class JobBusyError(RuntimeError):
    """The job already has a run in progress."""


class _Repeat(NamedTuple):
    """A backward clock step as one job sees it: slots up to ``mark`` already have ids."""

    mark: datetime
    step: timedelta


@dataclass
class _JobState:
    spec: JobSpec
    spec_hash: str
    paused: bool
    next_run: datetime | None
    gen: int = 0
    queued: datetime | None = None  # overlap: queue — the slot waiting for the current run
    outcome: JobStatus = JobStatus.PENDING  # COMPLETED/FAILED after a run, as in the record
    # The latest slot given a run id since the last backward clock step.
    last_slot: datetime | None = None
    # One per backward step still ahead of the clock, smallest mark (the latest step) first.
    repeats: list[_Repeat] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.spec.enabled and not self.paused


class _Entry(NamedTuple):
    fire_at: datetime
    seq: int
    job_id: str
    gen: int
    slot: datetime
    catchup: bool  # a missed slot run late on purpose, not the job's regular next slot
    run_id: str | None = None  # set for the rerun of an interrupted run


@dataclass
class RunHandle:
    run_id: str
    trigger: Trigger
    scheduled_for: datetime | None
    started_at: datetime
    future: Future[RunResult | None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    outcome: JobStatus | None = None  # None: nothing ran here (slot lost to another replica)
    lease: Lease | None = None  # the cross-replica running lease, when coordinating
    cancel_reason: str = ""  # why ``cancel`` was set: lease lost, shutdown grace over
    lease_done: bool = False  # the lease needs no release: recorded with it, or lost


def jitter_offset(job_id: str, slot: datetime, jitter: timedelta) -> timedelta:
    if jitter <= timedelta(0):
        return timedelta(0)
    digest = hashlib.sha256(f"{job_id}|{slot.timestamp()}".encode()).digest()
    frac = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(seconds=round(jitter.total_seconds() * frac, 3))


class JobScheduler:
    def __init__(
        self,
        registry: JobRegistry,
        executor: JobExecutor,
        clock: Clock,
        *,
        metrics: Metrics,
        health: StorageHealth,
        leases: LeaseManager,
        pool_size: int = 4,
        max_sleep: float = MAX_SLEEP_S,
        pool: Executor | None = None,
        bookkeeping: Executor | None = None,
        calendars: MarketCalendars | None = None,
        on_loop: Callable[[], None] | None = None,
    ) -> None:
        self._registry = registry
        self._executor = executor
        self._clock = clock
        self._metrics = metrics
        self._max_sleep = max_sleep
        self._pool = pool or ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="job")
        # One thread for Redis bookkeeping (history of slots not run, next_run), in order.
        self._side = bookkeeping or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bookkeeping"
        )
        self._calendars = calendars or MarketCalendars()
        self._on_loop = on_loop
        self.health = health
        self.outbox = Outbox(self.health, clock)
        self._leases = leases
        self._keeper = LeaseKeeper(leases, self._on_lease_lost)
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._jobs: dict[str, _JobState] = {}
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        # Generations are never reused, also for a job removed and added back: a heap
        # entry left from before is then stale, not the job's next slot.
        self._gens = itertools.count(1)
        self._pause_epoch = 0
        self._running: dict[str, RunHandle] = {}
        self._dirty = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_loop = clock.monotonic()
        self._wall_offset = self._read_wall_offset()

    # -- job set -----------------------------------------------------------------

    def set_jobs(self, records: Iterable[ScheduledJob]) -> None:
        """Adopt the registry's records; unchanged jobs keep their place in the heap."""
        now = self._clock.now()
        with self._lock:
            seen = set()
            behind: list[_Repeat] = []  # jobs whose record says the clock went back
            for rec in records:
                seen.add(rec.job_id)
                old = self._jobs.get(rec.job_id)
                if old is not None and (old.spec_hash, old.paused) == (rec.spec_hash, rec.paused):
                    continue
                state = _JobState(
                    rec.spec,
                    rec.spec_hash,
                    rec.paused,
                    rec.next_run,
                    gen=next(self._gens),
                )
                state.outcome = (
                    old.outcome
                    if old is not None
                    else (
                        rec.status
                        if rec.status in (JobStatus.COMPLETED, JobStatus.FAILED)
                        else JobStatus.PENDING
                    )
                )
                if old is not None:  # a slot queued behind a running run survives a reload
                    state.queued = old.queued
                    state.last_slot, state.repeats = old.last_slot, old.repeats
                else:
                    found = self._adopt_mark(state, rec, now)
                    if found is not None:
                        behind.append(found)
                self._jobs[rec.job_id] = state
                if (
                    old is not None
                    and old.active
                    and state.active
                    and (old.spec.schedule, old.spec.timezone)
                    == (rec.spec.schedule, rec.spec.timezone)
                ):
                    state.next_run = old.next_run  # a change that does not touch timing
                    self._push(state, state.next_run)
                else:
                    self._arm(state, now)
            if behind:
                self._log_step_back(
                    max(r.step for r in behind), now, max(r.mark for r in behind), True
                )
            for job_id in set(self._jobs) - seen:
                del self._jobs[job_id]  # a run in progress finishes and is recorded
                self._metrics.remove_job(job_id)
            self._dirty = True
            self._wake.notify_all()

    def _adopt_mark(self, state: _JobState, rec: ScheduledJob, now: datetime) -> _Repeat | None:
        """The job's latest slot from its record; a repeat if the clock is now behind it.

        The record's ``next_run`` is always the slot after one already given an id, and
        ``last_run`` is a wall time that has been: a last run that finished after ``now``
        means this process starts with the clock behind the one that ran it. The mark is
        the latest slot before both (the cap keeps a schedule edited while down from
        inventing future slots); it is read from Redis, so replicas agree on it.
        """
        if rec.next_run is None or rec.last_run is None:
            return None
        spec = state.spec
        upto = min(rec.next_run - timedelta(microseconds=1), rec.last_run)
        mark = spec.parsed_schedule.prev_at_or_before(upto, spec.zone)
        if mark is None:
            return None
        step = rec.last_run - now
        if step.total_seconds() <= CLOCK_STEP_TOLERANCE_S or mark <= now:
            state.last_slot = mark
            return None
        found = _Repeat(mark, step)
        state.repeats = [found]
        return found

    def _read_wall_offset(self) -> float:
        """Wall minus monotonic seconds: constant while the wall clock only ticks or slews."""
        return self._clock.now().timestamp() - self._clock.monotonic()

    def _check_clock(self, now: datetime) -> None:
        """Notice a backward wall-clock step since the last look and re-arm every job."""
        offset = self._read_wall_offset()
        before, self._wall_offset = self._wall_offset, offset
        if before - offset <= CLOCK_STEP_TOLERANCE_S:
            return  # a forward step is caught up by ``_advance`` as falling behind
        step = timedelta(seconds=round(before - offset, 3))
        marks: list[datetime] = []
        for state in self._jobs.values():
            if state.last_slot is not None and state.last_slot > now:
                # Repeats of an earlier step below this mark are covered by the new one.
                state.repeats = [
                    _Repeat(state.last_slot, step),
                    *(r for r in state.repeats if r.mark > state.last_slot),
                ]
                marks.append(state.last_slot)
                state.last_slot = None
            if state.active and state.next_run is not None and state.next_run > now:
                state.gen = next(self._gens)  # the armed slot is an hour (a step) away
                state.next_run = state.spec.next_fire(now)
                self._push(state, state.next_run)
                self._persist_next_run(state)
        self._log_step_back(step, now, max(marks) if marks else None, False)

    @staticmethod
    def _log_step_back(
        step: timedelta, now: datetime, mark: datetime | None, at_startup: bool
    ) -> None:
        """One warning per step; at startup the size is known only as "behind the last run"."""
        step = timedelta(seconds=round(step.total_seconds()))  # "0:00:20", not 0:00:19.998
        log.warning(
            "%s %s (wall %s, last slot %s): jobs with a period under %s keep running with "
            "run ids marked as repeats (-b<ms>); fixed-time slots that already ran are not "
            "re-run",
            "wall clock at startup is behind the last recorded run by"
            if at_startup
            else "wall clock stepped back by",
            step,
            iso_utc(now),
            iso_utc(mark),
            step,
        )

    def _repeat_for(self, state: _JobState, slot: datetime) -> _Repeat | None:
        """The backward step whose already-used slots include ``slot``, if any."""
        return next((r for r in state.repeats if slot <= r.mark), None)

    def _slot_run_id(self, state: _JobState | None, job_id: str, slot: datetime) -> str:
        """The run id of a slot; a repeat id for a slot time used before a backward step."""
        repeat = self._repeat_for(state, slot) if state is not None else None
        if repeat is None:
            return scheduled_run_id(job_id, slot)
        return repeat_run_id(job_id, slot, repeat.mark)

    @staticmethod
    def _note_slot(state: _JobState | None, slot: datetime) -> None:
        """Raise the job's mark to ``slot``; steps the clock has passed are over."""
        if state is None:
            return
        if state.last_slot is None or slot > state.last_slot:
            state.last_slot = slot
        while state.repeats and state.repeats[0].mark < slot:
            state.repeats.pop(0)

    def _arm(self, state: _JobState, now: datetime) -> None:
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

    def _persist_next_run(self, state: _JobState) -> None:
        """Keep the record's next_run current, so a restart does not re-count missed slots."""
        job_id, next_run = state.spec.id, state.next_run
        self._side.submit(
            self._safe,
            "store next_run",
            job_id,
            lambda: self._registry.set_next_run(job_id, next_run),
        )

    def _catch_up(self, state: _JobState, first: datetime, now: datetime) -> None:
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
            self._record_not_run(
                spec, missed, now, RunStatus.MISSED, "daemon was not running or job was paused"
            )

    def _push(self, state: _JobState, slot: datetime | None) -> None:
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
        state: _JobState,
        slot: datetime,
        fire_at: datetime,
        catchup: bool,
        run_id: str | None = None,
    ) -> None:
        heapq.heappush(
            self._heap,
            _Entry(fire_at, next(self._seq), state.spec.id, state.gen, slot, catchup, run_id),
        )

    # -- the decision step -----------------------------------------------------------

    def tick(self, now: datetime | None = None) -> datetime | None:
        """Dispatch every slot due at ``now``; return the earliest remaining fire time."""
        now = now or self._clock.now()
        with self._lock:
            self._check_clock(now)
            while self._heap and self._heap[0].fire_at <= now:
                entry = heapq.heappop(self._heap)
                state = self._jobs.get(entry.job_id)
                if state is None or state.gen != entry.gen or not state.active:
                    continue  # stale entry: the job changed, paused or left the config
                slot = entry.slot
                if not entry.catchup:
                    slot = self._advance(state, slot, now)
                self._dispatch_slot(state, slot, now, entry.run_id)
            self._dirty = False
            return self._heap[0].fire_at if self._heap else None

    def _advance(self, state: _JobState, slot: datetime, now: datetime) -> datetime:
        """Move the job to its next slot; if it fell behind, run only the newest due slot."""
        spec = state.spec
        nxt = spec.next_fire(slot)  # one croniter step in the usual case
        if nxt <= now:  # fell behind: slots passed unseen; run only the newest
            later = [
                nxt,
                *spec.parsed_schedule.slots_between(nxt, now, spec.zone, limit=MAX_MISSED_SCAN),
            ]
            self._record_not_run(
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

    def _dispatch_slot(
        self, state: _JobState, slot: datetime, now: datetime, run_id: str | None = None
    ) -> None:
        spec = state.spec
        repeat = self._repeat_for(state, slot) if run_id is None else None
        if repeat is not None and spec.next_fire(slot) - slot >= repeat.step:
            log.debug(
                "slot not re-run: it ran before the wall clock stepped back job=%s slot=%s",
                spec.id,
                iso_utc(slot),
                extra={"job": spec.id},
            )
            return
        if spec.calendar and not self._is_session(spec, slot):
            log.info(
                "slot skipped: %s closed job=%s slot=%s",
                spec.calendar,
                spec.id,
                iso_utc(slot),
                extra={"job": spec.id},
            )
            self._record_not_run(
                spec, [slot], now, RunStatus.SKIPPED, f"market closed ({spec.calendar})"
            )
            self._persist_next_run(state)
            return
        if spec.id in self._running:
            if spec.overlap == "queue":
                log.info(
                    "slot queued behind the running run job=%s slot=%s",
                    spec.id,
                    iso_utc(slot),
                    extra={"job": spec.id},
                )
                if state.queued is not None:  # one queued run at most: the older is dropped
                    self._record_not_run(
                        spec,
                        [state.queued],
                        now,
                        RunStatus.SKIPPED,
                        "superseded by a newer queued slot",
                    )
                state.queued = slot
                return
            log.warning(
                "slot skipped: previous run still going job=%s slot=%s",
                spec.id,
                iso_utc(slot),
                extra={"job": spec.id},
            )
            self._record_not_run(
                spec, [slot], now, RunStatus.SKIPPED, "previous run still in progress"
            )
            self._persist_next_run(state)
            return
        self._metrics.schedule_lateness.observe(max(0.0, (now - slot).total_seconds()))
        run_id = run_id or self._slot_run_id(state, spec.id, slot)
        self._note_slot(state, slot)
        handle = RunHandle(run_id, Trigger.SCHEDULE, slot, now)
        self._submit(spec, handle, state.next_run)

    def _is_session(self, spec: JobSpec, slot: datetime) -> bool:
        assert spec.calendar is not None
        day = slot.astimezone(self._calendars.tz(spec.calendar)).date()
        return self._calendars.is_session(spec.calendar, day)

    def _record_not_run(
        self, spec: JobSpec, slots: list[datetime], now: datetime, status: RunStatus, reason: str
    ) -> None:
        listed = slots[-MAX_MISSED_RECORDS:]
        state = self._jobs.get(spec.id)
        results = [
            RunResult(
                job_id=spec.id,
                run_id=self._slot_run_id(state, spec.id, s),
                trigger=Trigger.SCHEDULE,
                scheduled_for=s,
                started_at=now,
                finished_at=now,
                status=status,
                reason=reason,
            )
            for s in listed
        ]
        if len(slots) > len(listed):
            results[0].reason += f" ({len(slots) - len(listed)} earlier slots not listed)"
        self._note_slot(state, max(slots))
        self._side.submit(
            self.outbox.run,
            "record slots not run",
            lambda: self._write_not_run(spec.id, results, len(slots)),
        )

    def _write_not_run(self, job_id: str, results: list[RunResult], count: int) -> None:
        """With several replicas, each slot is claimed first so only one records it."""
        won = self._leases.claim_slots(
            [r.run_id for r in results], slot_ttl_ms=self._slot_ttl_ms(job_id)
        )
        results = [r for r, w in zip(results, won, strict=True) if w]
        unlisted = count - len(won)  # slots beyond the listed ones go with the first
        counted = len(results) + (unlisted if won[0] else 0)
        if results:
            self._registry.add_history_many(results)
            if results[0].status == RunStatus.MISSED:
                log.warning(
                    "job=%s missed %d slot(s) from %s to %s: %s",
                    job_id,
                    counted,
                    iso_utc(results[0].scheduled_for),
                    iso_utc(results[-1].scheduled_for),
                    results[-1].reason,
                    extra={"job": job_id},
                )
        # Counted only once written: the outbox retries this whole write after a failure.
        if counted:
            self._metrics.job_missed_runs.labels(job=job_id).inc(counted)

    def _slot_ttl_ms(self, job_id: str) -> int:
        """A slot claim must outlive the catch-up window, or a late replica could rerun it."""
        state = self._jobs.get(job_id)
        catchup_ms = int(state.spec.catchup.total_seconds() * 1000) if state else 0
        return max(86_400_000, 2 * catchup_ms)

    def _submit(self, spec: JobSpec, handle: RunHandle, next_run: datetime | None) -> None:
        self._running[spec.id] = handle
        self._metrics.job_running.labels(job=spec.id).set(1)
        handle.future = self._pool.submit(self._run, spec, handle, next_run)

    # -- worker side -----------------------------------------------------------------

    def _run(self, spec: JobSpec, handle: RunHandle, next_run: datetime | None) -> RunResult | None:
        try:
            if not self._claim(spec, handle):
                return None
            fence = handle.lease.fence() if handle.lease is not None else None
            if handle.trigger == Trigger.SCHEDULE:
                self._safe(
                    "mark running",
                    spec.id,
                    lambda: self._registry.start_run(spec.id, next_run, fence),
                )
            else:
                self._safe(
                    "mark running", spec.id, lambda: self._registry.mark_running(spec.id, fence)
                )
            result = self._executor.execute_job(
                spec,
                run_id=handle.run_id,
                trigger=handle.trigger,
                scheduled_for=handle.scheduled_for,
                cancel=handle.cancel,
                timeout=spec.timeout,
                fence=fence,
            )
            if handle.cancel_reason:
                result.reason = "; ".join(x for x in (result.reason, handle.cancel_reason) if x)
            handle.outcome = (
                JobStatus.FAILED if result.status == RunStatus.FAILED else JobStatus.COMPLETED
            )
            self.outbox.run("record run", lambda: self._record_own(result, handle))
            return result
        except FenceLostError:
            self._log_fence_lost(spec.id, handle.run_id, "before it started")
            handle.lease_done = True
            return None
        except Exception:
            log.exception(
                "run crashed job=%s run_id=%s",
                spec.id,
                handle.run_id,
                extra={"job": spec.id, "run_id": handle.run_id},
            )
            handle.outcome = JobStatus.FAILED
            return None
        finally:
            self._release(handle)
            self._finish(spec, handle)

    def _claim(self, spec: JobSpec, handle: RunHandle) -> bool:
        """Win the slot and the job's running lease across replicas; False: do not run."""
        if handle.lease is not None:
            return True
        try:
            res = self._leases.try_claim(
                spec.id,
                handle.run_id,
                trigger=handle.trigger,
                scheduled_for=handle.scheduled_for,
                started_at=handle.started_at,
                slot_ttl_ms=self._slot_ttl_ms(spec.id),
            )
        except StorageError as exc:
            self.health.failed(f"claim slot job={spec.id}", exc)
            now = self._clock.now()
            result = RunResult(
                job_id=spec.id,
                run_id=handle.run_id,
                trigger=handle.trigger,
                scheduled_for=handle.scheduled_for,
                started_at=now,
                finished_at=now,
                status=RunStatus.FAILED,
                reason="Redis unavailable: slot could not be claimed",
            )
            self.outbox.run("record unclaimed run", lambda: self._write_unclaimed(result))
            return False
        if res.outcome == ClaimOutcome.PAUSED:
            log.info(
                "slot not run: job=%s is paused (through another replica) slot=%s",
                spec.id,
                iso_utc(handle.scheduled_for),
                extra={"job": spec.id, "run_id": handle.run_id},
            )
            with self._lock:
                state = self._jobs.get(spec.id)
                if state is not None:
                    self._follow_pause(state, True, at=handle.scheduled_for)
            return False
        if res.outcome == ClaimOutcome.SLOT_TAKEN:
            log.debug("slot taken by another replica job=%s run_id=%s", spec.id, handle.run_id)
            return False
        lease = res.lease
        if res.outcome == ClaimOutcome.JOB_BUSY:
            if spec.overlap == "queue" and handle.scheduled_for is not None:
                lease = self._leases.wait_lease_job(
                    spec.id,
                    handle.run_id,
                    stop=handle.cancel,
                    timeout_s=(spec.timeout or timedelta(hours=1)).total_seconds()
                    + self._leases.lease_ms / 1000,
                    scheduled_for=handle.scheduled_for,
                )
            if lease is None:
                if handle.scheduled_for is not None:
                    with self._lock:
                        self._record_not_run(
                            spec,
                            [handle.scheduled_for],
                            self._clock.now(),
                            RunStatus.SKIPPED,
                            f"run {res.busy_with} still in progress on another replica",
                        )
                return False
        assert lease is not None
        handle.lease = lease
        self._keeper.add(lease)
        return True

    def _write_unclaimed(self, result: RunResult) -> None:
        if self._leases.claim_slots([result.run_id])[0]:
            self._record(result)

    def _release(self, handle: RunHandle) -> None:
        """Give the running lease back once the result is stored (in outbox order)."""
        lease = handle.lease
        if lease is None:
            return
        leases, keeper = self._leases, self._keeper

        def finish() -> None:
            keeper.discard(lease)
            if handle.lease_done:  # the fenced record ended it, or it was lost
                return
            if not leases.finish(lease):
                log.warning(
                    "run %s was recorded as interrupted elsewhere (lease lost)",
                    lease.run_id,
                    extra={"job": lease.job_id, "run_id": lease.run_id},
                )

        self.outbox.run("finish run", finish)

    def _on_lease_lost(self, lease: Lease, reason: str) -> None:
        with self._lock:
            handle = self._running.get(lease.job_id)
            if handle is not None and handle.run_id == lease.run_id:
                handle.cancel_reason = f"lease lost: {reason}"
                handle.cancel.set()  # never twice at once: another replica may take over

    def recover_interrupted(self, dead_replica: str | None = None) -> int:
        """Record runs whose lease heartbeat stopped as interrupted; rerun per catch-up."""
        try:
            found = self._leases.find_interrupted(dead_replica=dead_replica)
        except StorageError as exc:
            self.health.failed("scan for interrupted runs", exc)
            return 0
        now = self._clock.now()
        for run in found:
            self._interrupted(run, now)
        return len(found)

    def _interrupted(self, run: InflightRun, now: datetime) -> None:
        owner = run.owner.rsplit("/", 1)[0] or "unknown"
        log.warning(
            "run interrupted job=%s run_id=%s (replica %s stopped renewing its lease)",
            run.job_id,
            run.run_id,
            owner,
            extra={"job": run.job_id, "run_id": run.run_id},
        )
        result = RunResult(
            job_id=run.job_id,
            run_id=run.run_id,
            trigger=run.trigger,
            scheduled_for=run.scheduled_for,
            started_at=run.started_at,
            finished_at=now,
            status=RunStatus.INTERRUPTED,
            reason=f"replica {owner} stopped renewing its lease mid-run",
        )
        self.outbox.run("record interrupted run", lambda: self._record(result))
        with self._lock:
            state = self._jobs.get(run.job_id)
            slot = run.scheduled_for
            if state is None or not state.active or slot is None or run.trigger != Trigger.SCHEDULE:
                return
            if run.job_id in self._running:
                log.info(
                    "not rerunning interrupted slot job=%s slot=%s: the job is running",
                    run.job_id,
                    iso_utc(slot),
                    extra={"job": run.job_id},
                )
                return
            spec = state.spec
            if (
                spec.catchup > timedelta(0)
                and now - slot <= spec.catchup
                and spec.next_fire(slot) > now
            ):
                log.info(
                    "rerunning interrupted slot job=%s slot=%s",
                    spec.id,
                    iso_utc(slot),
                    extra={"job": spec.id},
                )
                self._drop_plain_catchup(spec.id, slot)
                self._push_entry(state, slot, now, catchup=True, run_id=rerun_run_id(run.run_id))
                self._dirty = True
                self._wake.notify_all()

    def _drop_plain_catchup(self, job_id: str, slot: datetime) -> None:
        """Unqueue a catch-up of the slot being rerun; it would hold the job and skip the rerun.

        A crash between the claim and the record's ``next_run`` update leaves ``next_run``
        on the crashed slot, so the restart also arms a plain catch-up of it. That one can
        only find the slot taken (the crashed run claimed it), but dispatched first it
        holds the job, and the rerun behind it would be skipped and never run.
        """
        kept = [
            e
            for e in self._heap
            if not (e.job_id == job_id and e.slot == slot and e.catchup and e.run_id is None)
        ]
        if len(kept) != len(self._heap):
            self._heap = kept
            heapq.heapify(self._heap)

    def _finish(self, spec: JobSpec, handle: RunHandle) -> None:
        with self._lock:
            if self._running.get(spec.id) is handle:
                del self._running[spec.id]
            if spec.id in self._jobs:
                self._metrics.job_running.labels(job=spec.id).set(0)
            else:  # removed while running: the run's own metrics re-created its series
                self._metrics.remove_job(spec.id)
            state = self._jobs.get(spec.id)
            if state is not None and handle.outcome is not None:
                state.outcome = handle.outcome
            if state is not None and state.queued is not None:
                slot, state.queued = state.queued, None
                if state.active and not self._stopping:
                    self._dispatch_slot(state, slot, self._clock.now())
                elif self._stopping:  # bookkeeping is closing down: say so in the log
                    log.warning(
                        "queued slot dropped at shutdown job=%s slot=%s",
                        spec.id,
                        iso_utc(slot),
                        extra={"job": spec.id},
                    )
                else:  # never silently: a dropped queued slot is in the history
                    self._record_not_run(
                        state.spec,
                        [slot],
                        self._clock.now(),
                        RunStatus.SKIPPED,
                        "job paused while the slot was queued",
                    )
            self._wake.notify_all()

    def _record(self, result: RunResult) -> None:
        try:
            self._registry.record_run(result)
        except UnknownJobError:  # removed from the config mid-run: history still gets it
            self._registry.add_history(result)

    def _record_own(self, result: RunResult, handle: RunHandle) -> None:
        """Record a run of ours, fenced by its lease; the same write ends the lease."""
        if handle.lease is None:
            self._record(result)
            return
        try:
            self._registry.record_run(result, handle.lease.fence())
        except UnknownJobError:
            self._registry.add_history(result)  # the lease is released after this
            return
        except FenceLostError:
            self._log_fence_lost(result.job_id, result.run_id, "before its result was recorded")
        handle.lease_done = True

    @staticmethod
    def _log_fence_lost(job_id: str, run_id: str, when: str) -> None:
        log.error(
            "lease lost job=%s run_id=%s %s: nothing more of this run is stored (another "
            "replica recorded it as interrupted; this process was stalled past its lease)",
            job_id,
            run_id,
            when,
            extra={"job": job_id, "run_id": run_id},
        )

    def _safe(self, what: str, job_id: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except UnknownJobError:
            log.info("%s: job %s left the config meanwhile", what, job_id, extra={"job": job_id})
        except StorageError as exc:
            self.health.failed(f"{what} job={job_id}", exc)
        else:
            self.health.ok()

    # -- operator actions --------------------------------------------------------------

    def trigger(self, job_id: str) -> str:
        """Run now, outside the schedule; next_run does not move. Claimed like a slot."""
        with self._lock:
            state = self._jobs.get(job_id)
            if state is None:
                raise UnknownJobError(job_id)
            if job_id in self._running or self._stopping:
                raise JobBusyError(job_id)
            now = self._clock.now()
            handle = RunHandle(manual_run_id(job_id, now), Trigger.MANUAL, None, now)
        # Redis I/O outside the lock; StorageError propagates
        lease = self._leases.claim(job_id, handle.run_id, trigger=Trigger.MANUAL, started_at=now)
        if lease is None:
            raise JobBusyError(job_id)  # running on another replica
        handle.lease = lease
        with self._lock:
            state = self._jobs.get(job_id)
            if state is None or job_id in self._running or self._stopping:
                self._leases.finish(lease)
                if state is None:
                    raise UnknownJobError(job_id)
                raise JobBusyError(job_id)
            self._keeper.add(lease)
            self._submit(state.spec, handle, state.next_run)
            return handle.run_id

    def set_paused(self, job_id: str, paused: bool) -> ScheduledJob:
        """Persist the pause override, then follow it here (resume catches up like a start)."""
        rec = self._registry.set_paused(job_id, paused)
        with self._lock:
            self._pause_epoch += 1  # a sync read that raced this write must not undo it
            state = self._jobs.get(job_id)
            if state is not None:
                self._follow_pause(state, paused)
        return rec

    def known_runtime(self, job_id: str) -> tuple[bool, datetime | None] | None:
        """(paused, next_run) of a job this scheduler runs, None for a job it does not know."""
        with self._lock:
            state = self._jobs.get(job_id)
            return None if state is None else (state.paused, state.next_run)

    def pause_epoch(self) -> int:
        """Take before reading the paused set from Redis; pass to ``sync_paused``."""
        with self._lock:
            return self._pause_epoch

    def sync_paused(self, paused_ids: set[str], epoch: int) -> list[str]:
        """Follow pauses and resumes made through other replicas; returns the jobs changed.

        ``paused_ids`` is the paused set read from Redis after ``pause_epoch()`` returned
        ``epoch``; if this replica paused or resumed a job since, the read may predate
        that write, and this round is skipped (the next one sees it).
        """
        changed: list[str] = []
        with self._lock:
            if epoch != self._pause_epoch:
                return changed
            for job_id, state in self._jobs.items():
                if state.paused != (job_id in paused_ids):
                    changed.append(job_id)
                    log.info(
                        "job %s %s on another replica",
                        job_id,
                        "paused" if not state.paused else "resumed",
                        extra={"job": job_id},
                    )
                    self._follow_pause(state, not state.paused)
        return changed

    def _follow_pause(self, state: _JobState, paused: bool, at: datetime | None = None) -> None:
        """Apply a pause override here; ``at``: a slot found paused, counted on resume."""
        if state.paused == paused:
            return
        state.paused = paused
        state.gen = next(self._gens)  # every heap entry of the job is stale now
        if at is not None and (state.next_run is None or at < state.next_run):
            state.next_run = at  # the slot was not run: resume's catch-up accounts for it
        self._arm(state, self._clock.now())
        self._wake.notify_all()

    # -- introspection ----------------------------------------------------------------

    def is_running(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._running

    def running(self) -> dict[str, RunHandle]:
        with self._lock:
            return dict(self._running)

    def next_runs(self, ids: Iterable[str] | None = None) -> dict[str, datetime | None]:
        """Live next fire times (None while inactive), of all jobs or of ``ids``."""
        with self._lock:
            states = (
                self._jobs.items()
                if ids is None
                else ((i, self._jobs[i]) for i in ids if i in self._jobs)
            )
            return {i: (s.next_run if s.active else None) for i, s in states}

    def next_due(self) -> tuple[str, datetime] | None:
        with self._lock:
            due = [
                (s.next_run, i)
                for i, s in self._jobs.items()
                if s.active and s.next_run is not None
            ]
        if not due:
            return None
        t, i = min(due)
        return i, t

    def job_states(self) -> dict[str, JobStatus]:
        with self._lock:
            out: dict[str, JobStatus] = {}
            for job_id, s in self._jobs.items():
                if job_id in self._running:
                    out[job_id] = JobStatus.RUNNING
                elif not s.active:
                    out[job_id] = JobStatus.PAUSED
                else:
                    out[job_id] = s.outcome
            return out

    # -- thread lifecycle -------------------------------------------------------------

    def loop_age(self) -> float:
        """Seconds since the scheduler loop last came round."""
        return self._clock.monotonic() - self._last_loop

    def longest_sleep(self) -> float:
        """Seconds the loop sleeps at most between two rounds, however idle."""
        return self._max_sleep

    @property
    def started(self) -> bool:
        """``start`` was called (the daemon got past its first config load)."""
        return self._thread is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._keeper.start()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self._last_loop = self._clock.monotonic()
            if self._on_loop is not None:
                self._on_loop()
            try:
                next_due = self.tick()
            except Exception:  # one bad job must not stop the scheduler
                log.exception("scheduler step failed; continuing")
                next_due = None
            retry_in = self.outbox.retry_in()
            if retry_in == 0:
                self._side.submit(self.outbox.flush)
                retry_in = self._max_sleep  # flush reschedules itself on failure
            with self._wake:
                if self._stopping:
                    return
                if self._dirty:
                    continue
                timeout = min(
                    self._max_sleep, retry_in if retry_in is not None else self._max_sleep
                )
                if next_due is not None:
                    timeout = min(timeout, (next_due - self._clock.now()).total_seconds())
                if timeout > 0:
                    self._wake.wait(timeout)

    def stop(self, grace: float) -> list[str]:
        """Drain: start nothing new, give running jobs ``grace`` seconds; return those left."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        futures = [h.future for h in self.running().values() if h.future is not None]
        wait_futures(futures, timeout=grace)
        for handle in self.running().values():  # grace over: end runs, keep what they did
            handle.cancel_reason = "daemon stopping: shutdown grace period over"
            handle.cancel.set()
        wait_futures(futures, timeout=CANCEL_WAIT_S)
        left = sorted(self.running())
        if isinstance(self._pool, ThreadPoolExecutor):
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._side.shutdown(wait=True)
        if not left:
            self.outbox.flush()
        if not left:
            self._keeper.stop()  # abandoned runs keep their leases until the process exits
        return left
