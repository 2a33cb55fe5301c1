"""Backfill: a job's series filled with long history, in chunks Yahoo can serve (issue 12).

Per ticker, the range ``start .. end`` less what the series already covers is cut into
chunks (``CHUNK_DAYS``: a year of daily bars, 60 days of hourly, 7 of 1-minute bars), and
walked newest first. Each chunk is fetched like a run fetches (the shared rate limiter
through ``request_scope``, the job's ``RetryPolicy``, ``check_bars``), merged into the
series with ``SeriesStore.write`` and recorded in the series' meta before the next one:

- ``backfilled``: JSON list of ``[first, last]`` date ranges a backfill has filled;
- ``covered_from``: lowered to a filled range's first date when that range reaches the
  coverage scheduled runs keep (so they never fetch the window again), or set by the
  first chunk of a series nothing covered yet.

So a backfill stopped anywhere (an error, Ctrl-C) fetches only what is still missing
when run again. A chunk Yahoo has no bars for lies before the ticker's first trade: the
ticker is done, and everything older is recorded as filled.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING

from stocksched.jobs.spec import INTRADAY_LIMIT_DAYS, JobSpec
from stocksched.ratelimit import request_scope
from stocksched.retry import RetryPolicy
from stocksched.sources.base import Fetcher, PermanentFetchError
from stocksched.storage import seriescodec
from stocksched.storage.series import SeriesId, SeriesStore, SeriesWrite

if TYPE_CHECKING:
    import pandas as pd

#: Calendar days per request, by interval (daily and longer: ``DAILY_CHUNK_DAYS``).
CHUNK_DAYS: dict[str, int] = {
    "1m": 7,  # Yahoo: "only 8 days worth of 1m granularity data ... per request"
    "2m": 30,
    "5m": 30,
    "15m": 30,
    "30m": 30,
    "90m": 30,
    "60m": 60,
    "1h": 60,
}
DAILY_CHUNK_DAYS = 365  # a year per request is safe and keeps each answer small

Range = tuple[date, date]  # both ends inclusive


class BackfillUsageError(ValueError):
    """The backfill cannot be asked for as given (e.g. beyond Yahoo's intraday reach)."""


@dataclass(frozen=True)
class Chunk:
    start: date
    end: date


@dataclass
class TickerReport:
    """What the backfill did for one ticker."""

    ticker: str
    planned: int = 0  # chunks still missing when it began
    chunks: int = 0  # chunks fetched and stored
    bars: int = 0  # bars stored
    first_bar: str | None = None  # the series' first bar (ISO, exchange-local) afterwards
    first_trade: bool = False  # reached a chunk before the ticker's first trade
    error: str = ""
    warnings: list[str] = field(default_factory=list)

    def view(self) -> dict[str, object]:
        return {
            "ticker": self.ticker,
            "status": "failed" if self.error else "done",
            "chunks_planned": self.planned,
            "chunks_fetched": self.chunks,
            "bars_stored": self.bars,
            "first_bar": self.first_bar,
            "reached_first_trade": self.first_trade,
            "error": self.error or None,
            "warnings": self.warnings,
        }


def chunk_days(interval: str) -> int:
    return CHUNK_DAYS.get(interval, DAILY_CHUNK_DAYS)


def check_reach(interval: str, start: date, today: date) -> None:
    """BackfillUsageError when Yahoo no longer serves ``interval`` bars from ``start``."""
    limit = INTRADAY_LIMIT_DAYS.get(interval)
    if limit is None:
        return
    oldest = today - timedelta(days=limit - 1)
    if start < oldest:
        raise BackfillUsageError(
            f"--start {start} is beyond Yahoo's reach: it serves {interval} bars for the "
            f"last {limit} days only (use --start {oldest} or later)"
        )


def missing_ranges(start: date, end: date, meta: Mapping[str, str]) -> list[Range]:
    """``start .. end`` less what the series covers (``covered_from`` onwards, when it has
    bars) and what backfills filled, oldest first."""
    done = _ranges(meta)
    covered = meta.get("covered_from")
    if covered and int(meta.get("bars", "0") or 0) > 0:
        done.append((date.fromisoformat(covered), date.max))
    gaps: list[Range] = []
    cursor = start
    for lo, hi in _merged(done):
        if hi < cursor:
            continue
        if lo > end:
            break
        if lo > cursor:
            gaps.append((cursor, min(end, lo - timedelta(days=1))))
        if hi >= end:
            return gaps
        cursor = max(cursor, hi + timedelta(days=1))
    if cursor <= end:
        gaps.append((cursor, end))
    return gaps


def chunks_of(gaps: list[Range], interval: str) -> list[Chunk]:
    """The chunks that fill ``gaps``, newest first."""
    size = timedelta(days=chunk_days(interval))
    out: list[Chunk] = []
    for lo, hi in reversed(gaps):
        top = hi
        while top >= lo:
            bottom = max(lo, top - size + timedelta(days=1))
            out.append(Chunk(bottom, top))
            top = bottom - timedelta(days=1)
    return out


def recorded(meta: Mapping[str, str], filled: Range) -> dict[str, str]:
    """The meta fields to write once ``filled`` is stored: ``backfilled`` with it added,
    ``covered_from`` lowered when the filled range reaches the coverage (or set, if none)."""
    ranges = _merged([*_ranges(meta), filled])
    around = next(r for r in ranges if r[0] <= filled[0] and filled[1] <= r[1])
    out = {"backfilled": json.dumps([[lo.isoformat(), hi.isoformat()] for lo, hi in ranges])}
    covered_text = meta.get("covered_from")
    covered = date.fromisoformat(covered_text) if covered_text else None
    if covered is None or (around[0] < covered <= around[1] + timedelta(days=1)):
        out["covered_from"] = around[0].isoformat()
    return out


class Backfill:
    """One job's backfill from ``start`` to ``end``, one ticker at a time.

    ``cancel`` stops it between requests (a set event cuts a retry's wait short);
    ``on_chunk(ticker)`` is called after each chunk, for progress.
    """

    def __init__(
        self,
        store: SeriesStore,
        fetcher: Fetcher,
        job: JobSpec,
        start: date,
        end: date,
        *,
        cancel: threading.Event | None = None,
        on_retry: Callable[[str, int, Exception, float], None] | None = None,
    ) -> None:
        self._store = store
        self._fetcher = fetcher
        self.job = job
        self.start = start
        self.end = end
        self.cancel = cancel or threading.Event()
        self._on_retry = on_retry
        self._policy = RetryPolicy(job.retries, job.retry_backoff)

    def series(self, ticker: str) -> SeriesId:
        return SeriesId(self.job.prefix, ticker.upper(), self.job.interval)

    def plan(self, ticker: str) -> list[Chunk]:
        """The chunks still missing for ``ticker``, newest first."""
        meta = self._store.meta_many([self.series(ticker)])[0]
        return chunks_of(missing_ranges(self.start, self.end, meta), self.job.interval)

    def run(
        self,
        ticker: str,
        chunks: list[Chunk],
        on_chunk: Callable[[str], None] | None = None,
    ) -> TickerReport:
        """Fetch and store ``chunks`` (``plan``'s) in order; a failure ends this ticker
        (its report says why), KeyboardInterrupt passes through after what was stored."""
        report = TickerReport(ticker, planned=len(chunks))
        try:
            for chunk in chunks:
                if self.cancel.is_set():
                    report.error = "interrupted"
                    break
                if not self._chunk(ticker, chunk, report):
                    break
                if on_chunk is not None:
                    on_chunk(ticker)
        except KeyboardInterrupt:  # what was stored stays; the caller sees ``cancel``
            self.cancel.set()
            report.error = "interrupted"
        except Exception as exc:  # one ticker's failure never stops the others
            report.error = str(exc) or type(exc).__name__
        finally:
            report.first_bar = self._first_bar(ticker)
        return report

    def _chunk(self, ticker: str, chunk: Chunk, report: TickerReport) -> bool:
        """One chunk fetched, checked, stored and recorded; False: the ticker is done."""
        series = self.series(ticker)
        try:
            frame, warning = self._fetch(ticker, chunk)
        except PermanentFetchError as exc:
            if not str(exc).startswith("no data"):
                raise
            # Before the ticker's first trade: nothing older exists either.
            meta = self._store.meta_many([series])[0]
            if int(meta.get("bars", "0") or 0) > 0:  # else: nothing to record it on
                fields = recorded(meta, (self.start, chunk.end))
                nothing = seriescodec.Bars(seriescodec.empty_rows(), {})
                self._store.write(SeriesWrite(series, nothing, meta["tz"], fields))
            report.first_trade = True
            return False
        if warning:
            report.warnings.append(f"{chunk.start}..{chunk.end}: {warning}")
        bars = seriescodec.bars_from_frame(frame)
        meta = self._store.meta_many([series])[0]
        fields = recorded(meta, (chunk.start, chunk.end))
        if not meta.get("exchange") and frame.attrs.get("exchange"):
            fields["exchange"] = self._exchange(frame)
        self._store.write(SeriesWrite(series, bars, str(frame.index.tz), fields))
        report.chunks += 1
        report.bars += len(bars)
        return True

    def _fetch(self, ticker: str, chunk: Chunk) -> tuple[pd.DataFrame, str]:
        """The executor's fetch path: rate-limited requests, the job's retries, the
        data-quality checks (a chunk with no good bar fails the ticker); the bars fit to
        store and the quality warning ("" if none)."""
        from stocksched.sources.quality import check_bars

        interval = self.job.interval

        def retried(n: int, exc: Exception, wait: float) -> None:
            if self._on_retry is not None:
                self._on_retry(ticker, n, exc, wait)

        with request_scope(cancel=self.cancel):
            frame = self._policy.call(
                lambda: self._fetcher.fetch_from_source(ticker, chunk.start, chunk.end, interval),
                cancel=self.cancel,
                on_retry=retried,
            )
        clean, quality = check_bars(frame, chunk.start, chunk.end, interval)
        if quality.failure:
            raise PermanentFetchError(ticker, f"{chunk.start}..{chunk.end}: {quality.failure}")
        return clean, quality.warning

    def _exchange(self, frame: pd.DataFrame) -> str:
        from stocksched.sessions import calendar_code

        return calendar_code(self.job.calendar, frame.attrs.get("exchange")) or ""

    def _first_bar(self, ticker: str) -> str | None:
        meta = self._store.meta_many([self.series(ticker)])[0]
        first, tz = meta.get("first"), meta.get("tz")
        if not first or not tz:
            return None
        import pandas as pd

        stamp = pd.Timestamp(int(first), unit="s", tz="UTC").tz_convert(tz)
        return str(stamp.isoformat())


def _ranges(meta: Mapping[str, str]) -> list[Range]:
    raw = meta.get("backfilled")
    if not raw:
        return []
    return [(date.fromisoformat(lo), date.fromisoformat(hi)) for lo, hi in json.loads(raw)]


def _merged(ranges: list[Range]) -> list[Range]:
    """Sorted, with overlapping or adjacent ranges joined."""
    out: list[Range] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + timedelta(days=1):
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
