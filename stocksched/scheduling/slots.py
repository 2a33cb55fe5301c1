"""A job's slots as the timetable sees them: its state, heap entries, jitter, and the
marks and repeat ids that wall-clock steps back leave (see ``timetable``'s docstring).

Pure: no threads, no Redis.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from stocksched.clock import iso_utc
from stocksched.jobs.spec import JobSpec
from stocksched.model import JobStatus, ScheduledJob
from stocksched.runids import repeat_run_id, scheduled_run_id

log = logging.getLogger(__name__)

# A wall clock falling this far behind the monotonic clock between two looks is a step
# back; NTP slewing moves it by well under a millisecond per second.
CLOCK_STEP_TOLERANCE_S = 1.0


class Repeat(NamedTuple):
    """A backward clock step as one job sees it: slots up to ``mark`` already have ids."""

    mark: datetime
    step: timedelta


@dataclass
class JobState:
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
    repeats: list[Repeat] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.spec.enabled and not self.paused


class Entry(NamedTuple):
    fire_at: datetime
    seq: int
    job_id: str
    gen: int
    slot: datetime
    catchup: bool  # a missed slot run late on purpose, not the job's regular next slot
    run_id: str | None = None  # set for the rerun of an interrupted run


def plain_catchup(entry: Entry, job_id: str, slot: datetime) -> bool:
    """A plain catch-up of the slot being rerun: it would hold the job and skip the rerun.

    A crash between the claim and the record's ``next_run`` update leaves ``next_run``
    on the crashed slot, so the restart also arms a plain catch-up of it. That one can
    only find the slot taken (the crashed run claimed it), but dispatched first it
    holds the job, and the rerun behind it would be skipped and never run.
    """
    return entry.job_id == job_id and entry.slot == slot and entry.catchup and entry.run_id is None


def jitter_offset(job_id: str, slot: datetime, jitter: timedelta) -> timedelta:
    if jitter <= timedelta(0):
        return timedelta(0)
    digest = hashlib.sha256(f"{job_id}|{slot.timestamp()}".encode()).digest()
    frac = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(seconds=round(jitter.total_seconds() * frac, 3))


# -- wall-clock steps: marks and repeat ids ---------------------------------------------


def adopt_mark(state: JobState, rec: ScheduledJob, now: datetime) -> Repeat | None:
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
    found = Repeat(mark, step)
    state.repeats = [found]
    return found


def log_step_back(step: timedelta, now: datetime, mark: datetime | None, at_startup: bool) -> None:
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


def repeat_for(state: JobState, slot: datetime) -> Repeat | None:
    """The backward step whose already-used slots include ``slot``, if any."""
    return next((r for r in state.repeats if slot <= r.mark), None)


def slot_run_id(state: JobState | None, job_id: str, slot: datetime) -> str:
    """The run id of a slot; a repeat id for a slot time used before a backward step."""
    repeat = repeat_for(state, slot) if state is not None else None
    if repeat is None:
        return scheduled_run_id(job_id, slot)
    return repeat_run_id(job_id, slot, repeat.mark)


def note_slot(state: JobState | None, slot: datetime) -> None:
    """Raise the job's mark to ``slot``; steps the clock has passed are over."""
    if state is None:
        return
    if state.last_slot is None or slot > state.last_slot:
        state.last_slot = slot
    while state.repeats and state.repeats[0].mark < slot:
        state.repeats.pop(0)
