"""Warnings for a valid jobs file: jobs whose ``:latest`` pointers fight."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from stocksched.durations import format_duration
from stocksched.jobs.spec import JobSpec

#: Shared tickers a warning names before it says "(+N more)".
CLASH_TICKERS_SHOWN = 2


@dataclass(frozen=True)
class LatestClash:
    """Two jobs (indexes into the job list, ``first < second``) whose runs move the same
    ``:latest`` pointers, those of ``tickers`` (in the second job's order), to different
    windows."""

    first: int
    second: int
    tickers: tuple[str, ...]


_Window = tuple[timedelta | None, date | None, date | None]  # (window, start, end)


def latest_pointer_clashes(jobs: Sequence[JobSpec], today: date | None = None) -> list[LatestClash]:
    """Pairs of jobs whose ``:latest`` pointers fight, ordered by (second, first).

    A ticker's pointer is per prefix and interval (``keys.latest_key``) and moves to each
    window stored whose end is not before that of the window it names. Two jobs writing
    the same ticker, prefix and interval with different windows (``window``/``start``/
    ``end``) therefore flip it between their windows whenever their ends coincide: both
    end today (a ``window``, or ``start`` without ``end``), both end on the same date, or
    one ends today and the other on a date not yet past (``today``; None: assume so).
    A fixed window that ended before ``today`` (a backfill) never takes the pointer back
    from a rolling one, so it is not a clash.
    """
    # Only windows matter to whether two jobs fight, so compare distinct windows first:
    # thousands of jobs sharing one window (or many backfills) cost next to nothing.
    groups: dict[tuple[str, str], dict[_Window, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, job in enumerate(jobs):
        groups[(job.prefix, job.interval)][(job.window, job.start, job.end)].append(i)
    ticker_sets: dict[int, frozenset[str]] = {}
    clashes: list[LatestClash] = []
    for by_window in groups.values():
        windows = list(by_window)
        for n, a in enumerate(windows):
            for b in windows[n + 1 :]:
                if not _windows_fight(a, b, today):
                    continue
                for i in by_window[a]:
                    for j in by_window[b]:
                        first, second = min(i, j), max(i, j)
                        theirs = ticker_sets.setdefault(first, frozenset(jobs[first].tickers))
                        shared = tuple(t for t in jobs[second].tickers if t in theirs)
                        if shared:
                            clashes.append(LatestClash(first, second, shared))
    return sorted(clashes, key=lambda c: (c.second, c.first))


def _windows_fight(a: _Window, b: _Window, today: date | None) -> bool:
    """Whether two different windows can end on the same day (then the last write wins)."""
    end_a, end_b = a[2], b[2]  # None: the window ends today
    if end_a is None and end_b is None:
        return True
    if end_a is not None and end_b is not None:
        return end_a == end_b
    fixed = end_a if end_a is not None else end_b
    assert fixed is not None
    return today is None or fixed >= today


def describe_window(job: JobSpec) -> str:
    if job.window is not None:
        return f"window {format_duration(job.window)}"
    if job.end is None:
        return f"start {job.start}"
    return f"{job.start}..{job.end}"
