"""What becomes of a due slot: passed over after a clock step, skipped on a closed
market day, skipped or queued behind a running run, or run under its (repeat) id; and
the history entries of slots not run. Pure decisions: no threads, no Redis; what must
be stored goes to a ``SlotSink``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Protocol

from stocksched.calendars import MarketCalendars
from stocksched.clock import iso_utc
from stocksched.jobs.spec import JobSpec
from stocksched.model import RunResult, RunStatus, Trigger
from stocksched.scheduling.slots import JobState, note_slot, repeat_for, slot_run_id

log = logging.getLogger(__name__)

# History entries written for one stretch of missed slots; the metric counts them all.
MAX_MISSED_RECORDS = 100


class SlotSink(Protocol):
    """Where the timetable's decisions that must be stored go (worker-side bookkeeping)."""

    def next_run_changed(self, job_id: str, next_run: datetime | None) -> None: ...

    def not_run(self, job_id: str, results: list[RunResult], count: int, ttl_ms: int) -> None:
        """Store ``results`` (slots not run, ``count`` in all) once their slots are claimed."""


def slot_ttl_ms(spec: JobSpec | None) -> int:
    """A slot claim must outlive the catch-up window, or a late replica could rerun it."""
    catchup_ms = int(spec.catchup.total_seconds() * 1000) if spec else 0
    return max(86_400_000, 2 * catchup_ms)


class SlotPolicy:
    """Decides each due slot of a job; called by the timetable under the scheduler's lock."""

    def __init__(self, calendars: MarketCalendars, sink: SlotSink) -> None:
        self._calendars = calendars
        self._sink = sink

    def dispatch(
        self, state: JobState, slot: datetime, now: datetime, busy: bool, run_id: str | None
    ) -> str | None:
        """Decide a due slot; the run id to start, or None (passed over, recorded, queued).

        ``busy``: the job has a run in progress here.
        """
        spec = state.spec
        repeat = repeat_for(state, slot) if run_id is None else None
        if repeat is not None and spec.next_fire(slot) - slot >= repeat.step:
            log.debug(
                "slot not re-run: it ran before the wall clock stepped back job=%s slot=%s",
                spec.id,
                iso_utc(slot),
                extra={"job": spec.id},
            )
            return None
        if spec.calendar and not self._is_session(spec, slot):
            log.info(
                "slot skipped: %s closed job=%s slot=%s",
                spec.calendar,
                spec.id,
                iso_utc(slot),
                extra={"job": spec.id},
            )
            self.record_not_run(
                state, spec, [slot], now, RunStatus.SKIPPED, f"market closed ({spec.calendar})"
            )
            self._sink.next_run_changed(spec.id, state.next_run)
            return None
        if busy:
            self._overlap(state, slot, now)
            return None
        run_id = run_id or slot_run_id(state, spec.id, slot)
        note_slot(state, slot)
        return run_id

    def _overlap(self, state: JobState, slot: datetime, now: datetime) -> None:
        spec = state.spec
        if spec.overlap == "queue":
            log.info(
                "slot queued behind the running run job=%s slot=%s",
                spec.id,
                iso_utc(slot),
                extra={"job": spec.id},
            )
            if state.queued is not None:  # one queued run at most: the older is dropped
                self.record_not_run(
                    state,
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
        self.record_not_run(
            state, spec, [slot], now, RunStatus.SKIPPED, "previous run still in progress"
        )
        self._sink.next_run_changed(spec.id, state.next_run)

    def _is_session(self, spec: JobSpec, slot: datetime) -> bool:
        assert spec.calendar is not None
        day = slot.astimezone(self._calendars.tz(spec.calendar)).date()
        return self._calendars.is_session(spec.calendar, day)

    def record_not_run(
        self,
        state: JobState | None,
        spec: JobSpec,
        slots: list[datetime],
        now: datetime,
        status: RunStatus,
        reason: str,
    ) -> None:
        """History entries for ``slots`` (``state``: the job's, None if it left the config)."""
        listed = slots[-MAX_MISSED_RECORDS:]
        results = [
            RunResult(
                job_id=spec.id,
                run_id=slot_run_id(state, spec.id, s),
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
        note_slot(state, max(slots))
        self._sink.not_run(spec.id, results, len(slots), slot_ttl_ms(state.spec if state else None))
