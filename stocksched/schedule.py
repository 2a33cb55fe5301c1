"""Schedule expressions and their fire times: pure functions of (expression, time zone, time).

Accepted expressions (``parse_schedule``):

- 5-field cron ``minute hour day-of-month month day-of-week``, as croniter reads it
  (names like ``mon-fri``/``jan``, ``L``, ``1#2``; day-of-week 0 and 7 are both Sunday;
  when both day fields are restricted a day matching either fires, as in Vixie cron).
- 6-field cron with a LEADING seconds field: ``second minute hour dom month dow``.
- Macros ``@hourly @daily @midnight @weekly @monthly @yearly @annually``.
- ``@every <duration>`` (``@every 90s``, ``@every 1h30m``; at least 1s). Slots are
  anchored to the Unix epoch in UTC: slot k is ``1970-01-01T00:00Z + k * interval``, so
  every replica and every restart agrees on the slot times, and DST never moves them.
- ``HH:MM`` (00:00-23:59), the original design's daily shorthand for ``MM HH * * *``.

Cron schedules are evaluated in the job's time zone (croniter). Daylight saving time:

- Spring forward (a wall-clock slot that does not exist): a job with a fixed hour
  (e.g. ``30 2 * * *`` in America/New_York on 2026-03-08) runs once, at the first valid
  instant after the gap (03:00 EDT). This is what croniter itself yields; we keep it.
- Fall back (a wall-clock time that happens twice): a job with a fixed hour
  (``30 1 * * *`` on 2026-11-01) runs exactly once, at the FIRST occurrence (01:30 EDT).
  croniter yields both 01:30 EDT and 01:30 EST; we drop the second (``fold=1``) one.
- Jobs whose hour field covers every hour (``*/30 * * * *``, ``0 * * * *``, ``@hourly``)
  keep every real instant croniter yields: they run in both copies of the repeated hour
  and simply have no slots inside the skipped hour, so they keep their real-time cadence.
  Vixie cron and cronie treat wildcard-hour jobs the same way.
- UTC and ``@every`` schedules have no transitions and are unaffected.

Cron parsing is cached per expression; ``croniter`` objects are reused under a lock, so
``Schedule`` values are safe to share between threads.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from stocksched.durations import parse_duration

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HHMM = re.compile(r"^(\d{1,2}):(\d{2})$")
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# A schedule must fire at least once in this many years from any start (Feb 29 needs 4+).
_MAX_YEARS_BETWEEN = 9
_REFERENCE = datetime(2001, 1, 1, tzinfo=UTC)
_FIELD_HELP = "5 fields (minute hour day month weekday) or 6 with a leading seconds field"
_ONE_S = timedelta(seconds=1)
_MAX_SKIPS = 8  # croniter never yields more than a couple of dropped fall-back repeats in a row


class ScheduleError(ValueError):
    """A schedule expression that cannot be used; the message says why."""


def _require_aware(t: datetime, name: str) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name} must be a time-zone-aware datetime, got naive {t.isoformat()}")


def _utc(t: datetime) -> datetime:
    """Compare instants in UTC: Python ignores ``fold`` when both sides share a tzinfo."""
    return t.astimezone(UTC)


def _is_repeated_wall_time(t: datetime) -> bool:
    """True for the second occurrence of a wall-clock time in a fall-back overlap."""
    return t.fold == 1 and t.replace(fold=0).utcoffset() != t.utcoffset()


class Schedule:
    """A parsed schedule. Immutable value; compare by ``expr``."""

    expr: str

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime:
        """First slot strictly after ``after`` (aware), as an aware datetime in ``tz``."""
        raise NotImplementedError

    def prev_at_or_before(self, t: datetime, tz: ZoneInfo) -> datetime | None:
        """Latest slot at or before ``t``, or None if there is none (catch-up after downtime)."""
        raise NotImplementedError

    def slots_between(
        self, a: datetime, b: datetime, tz: ZoneInfo, limit: int = 1000
    ) -> Iterator[datetime]:
        """Slots in the half-open interval (a, b], oldest first, at most ``limit`` of them."""
        _require_aware(a, "a")
        _require_aware(b, "b")
        count = 0
        cur = a
        end = _utc(b)
        while count < limit:
            nxt = self.next_after(cur, tz)
            if _utc(nxt) > end:
                return
            yield nxt
            count += 1
            cur = nxt

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and getattr(other, "expr", None) == self.expr

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.expr))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.expr!r})"


@dataclass(frozen=True, eq=False, repr=False)
class EverySchedule(Schedule):
    """``@every <duration>``: epoch-anchored fixed interval, independent of time zone."""

    expr: str
    interval: timedelta

    @property
    def _step_us(self) -> int:
        return _total_us(self.interval)

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime:
        _require_aware(after, "after")
        k = _total_us(after - _EPOCH) // self._step_us + 1
        return (_EPOCH + timedelta(microseconds=k * self._step_us)).astimezone(tz)

    def prev_at_or_before(self, t: datetime, tz: ZoneInfo) -> datetime | None:
        _require_aware(t, "t")
        k = _total_us(t - _EPOCH) // self._step_us
        return (_EPOCH + timedelta(microseconds=k * self._step_us)).astimezone(tz)


@dataclass(frozen=True, eq=False, repr=False)
class CronSchedule(Schedule):
    """A cron expression (5 fields, or 6 with leading seconds) evaluated by croniter.

    Holds one croniter object, reused under a lock: building one costs ~100 us (parsing),
    moving it costs a third of that. Remembers its last answer per time zone: the first
    slot after ``a`` is also the first slot after any time from ``a`` until that slot, so
    asking again for a later time before it (the scheduler arming a job the reconcile
    just gave its next_run) costs no croniter step.
    """

    expr: str
    _iter: croniter
    every_hour: bool
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # time zone -> (after, slot) of the last answer, both in UTC, and the slot in the zone
    _last: dict[ZoneInfo, tuple[datetime, datetime, datetime]] = field(default_factory=dict)

    def _croniter_step(self, start: datetime, forward: bool) -> datetime:
        with self._lock:
            self._iter.set_current(start, force=True)
            got = self._iter.get_next(datetime) if forward else self._iter.get_prev(datetime)
        assert isinstance(got, datetime)
        return got

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime:
        _require_aware(after, "after")
        floor = _utc(after)
        last = self._last.get(tz)
        if last is not None and last[0] <= floor < last[1]:
            return last[2]
        cur = after.astimezone(tz)
        for _ in range(_MAX_SKIPS):
            cand = self._croniter_step(cur, forward=True)
            # Guard against any croniter DST edge returning a time not strictly later.
            if _utc(cand) <= floor or (not self.every_hour and _is_repeated_wall_time(cand)):
                cur = cand if _utc(cand) > _utc(cur) else (_utc(cur) + _ONE_S).astimezone(tz)
                continue
            self._last[tz] = (floor, _utc(cand), cand)
            return cand
        raise ScheduleError(f"schedule {self.expr!r}: no next fire time after {after.isoformat()}")

    def prev_at_or_before(self, t: datetime, tz: ZoneInfo) -> datetime | None:
        _require_aware(t, "t")
        probe = t.astimezone(tz)
        try:
            # Two croniter slots back is safely before any DST oddity near t; then walk
            # forward with next_after so the answer follows exactly its semantics.
            for _ in range(2):
                probe = self._croniter_step(probe, forward=False)
        except CroniterBadDateError:
            return None
        best: datetime | None = None
        limit = _utc(t)
        cur = _utc(probe) - timedelta(microseconds=1)
        while True:
            nxt = self.next_after(cur, tz)
            if _utc(nxt) > limit:
                return best
            best, cur = nxt, nxt


def _total_us(td: timedelta) -> int:
    return (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds


def _parse_every(expr: str, arg: str) -> EverySchedule:
    try:
        interval = parse_duration(arg)
    except ValueError as exc:
        raise ScheduleError(f"invalid @every schedule {expr!r}: {exc}") from None
    if interval < timedelta(seconds=1):
        raise ScheduleError(f"invalid @every schedule {expr!r}: the interval must be at least 1s")
    return EverySchedule(expr=expr, interval=interval)


def _hhmm_to_cron(expr: str, match: re.Match[str]) -> str:
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 23 or minute > 59:
        raise ScheduleError(f"invalid time {expr!r}: HH:MM must be between 00:00 and 23:59")
    return f"{minute} {hour} * * *"


def _parse_cron(expr: str, cron: str) -> CronSchedule:
    fields = cron.split()
    if len(fields) not in (5, 6):
        raise ScheduleError(
            f"invalid schedule {expr!r}: expected {_FIELD_HELP}, got {len(fields)} field(s)"
        )
    try:
        it = croniter(
            cron,
            _REFERENCE,
            ret_type=datetime,
            second_at_beginning=len(fields) == 6,
            max_years_between_matches=_MAX_YEARS_BETWEEN,
        )
    except CroniterError as exc:
        raise ScheduleError(f"invalid cron expression {expr!r}: {exc}") from None
    except (ValueError, KeyError, IndexError, TypeError) as exc:  # croniter leaks these sometimes
        raise ScheduleError(f"invalid cron expression {expr!r}: {exc}") from None
    # croniter.expanded: [minute, hour, dom, month, dow(, second)]; a full range becomes "*".
    expanded = it.expanded
    schedule = CronSchedule(expr=expr, _iter=it, every_hour=expanded[1] == ["*"])
    if expanded[2] != ["*"] or it.nth_weekday_of_month:
        # Only a restricted day of month (30 2, 31 4, L, 5th Monday) can fail to ever match.
        _check_fires(schedule)
    return schedule


def _check_fires(schedule: CronSchedule) -> None:
    """Reject expressions that never match (e.g. ``0 0 30 2 *``) instead of never running."""
    try:
        schedule.next_after(_REFERENCE, ZoneInfo("UTC"))
    except (CroniterBadDateError, CroniterBadCronError, ScheduleError):
        raise ScheduleError(
            f"schedule {schedule.expr!r} never fires (no matching date within "
            f"{_MAX_YEARS_BETWEEN} years)"
        ) from None


@lru_cache(maxsize=65536)
def parse_schedule(expr: str) -> Schedule:
    """Parse a schedule expression (see the module docstring); raise ScheduleError if unusable.

    Cached: thousands of jobs sharing an expression parse it once.
    """
    if not isinstance(expr, str):
        raise ScheduleError(f"schedule must be a string, got {type(expr).__name__}")
    text = expr.strip()
    if not text:
        raise ScheduleError("schedule is empty")
    lowered = text.lower()
    if lowered.startswith("@every"):
        arg = text[len("@every") :].strip()
        if not arg:
            raise ScheduleError(
                f"invalid schedule {expr!r}: @every needs a duration, e.g. @every 90s"
            )
        return _parse_every(text, arg)
    if text.startswith("@"):
        cron = _MACROS.get(lowered)
        if cron is None:
            known = " ".join(sorted(_MACROS))
            raise ScheduleError(f"unknown macro {text!r}: use one of {known} or @every <duration>")
        return _parse_cron(text, cron)
    match = _HHMM.match(text)
    if match:
        return _parse_cron(text, _hhmm_to_cron(text, match))
    if ":" in text and len(text.split()) == 1:
        raise ScheduleError(f"invalid time {expr!r}: write HH:MM, e.g. 17:30")
    return _parse_cron(text, text)
