"""JobExecutor: one run of one job, each ticker's failure isolated (the original design's rule).

A ticker that fails to fetch or store is recorded with its error and the run goes on;
the run's status follows from the counts (success, partial_success, failed). Every
ticker's bars pass the data-quality checks (``sources.quality``) before they are stored:
bad bars are dropped and named in the run's ``warnings``; a junk answer fails the ticker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from stocksched.calendars import MarketCalendars
from stocksched.clock import Clock, iso_utc
from stocksched.fanout import Fanned, FanoutRuns, TickerRun, Work
from stocksched.jobs.spec import JobSpec
from stocksched.metrics import Metrics
from stocksched.model import RunResult, RunStatus, Trigger, run_status_for
from stocksched.ratelimit import RateLimiterUnavailable, RateLimitTimeout, request_scope
from stocksched.retry import RetryPolicy
from stocksched.runids import manual_run_id
from stocksched.seriesupdate import SeriesUpdater, Target
from stocksched.sources.base import Fetcher, FetchError, PermanentFetchError
from stocksched.storage.adapter import StorageError
from stocksched.storage.butler import DataIOButler
from stocksched.storage.fence import Fence, FenceLostError
from stocksched.tickers import TickerOutcome, TickerWindow

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.2  # how soon a cancelled run (shutdown, lost lease) lets its job go


class _Ended(Exception):
    """The run ended (timeout, shutdown, lost lease) while this ticker was being fetched."""

    def __init__(self, ticker: str) -> None:
        super().__init__(ticker)


@dataclass(frozen=True)
class _Run(TickerRun):
    """What every ticker of one run shares: the job, its window, its limits, its fence."""

    fetcher: Fetcher
    policy: RetryPolicy

    def ctx(self, ticker: str) -> dict[str, str]:
        """The log context of one ticker of this run."""
        return {"job": self.job.id, "run_id": self.run_id, "ticker": ticker}


class JobExecutor:
    def __init__(
        self,
        fetchers: Mapping[str, Fetcher],
        butler: DataIOButler,
        clock: Clock,
        ticker_concurrency: int,
        metrics: Metrics,
        *,
        parallel_runs: int = 4,
        calendars: MarketCalendars | None = None,
        fanout: FanoutRuns | None = None,
    ) -> None:
        """``ticker_concurrency`` tickers of one run at a time; ``parallel_runs``: how many
        runs the scheduler's pool may run at once, which sizes the one ticker pool all runs
        share (a pool per run cost a sixth of a short run's time, issue 11). ``fanout``
        spreads the runs of ``fanout: true`` jobs over the replicas (None: run here)."""
        self._fanout = fanout
        self._fetchers = fetchers
        self._updater = SeriesUpdater(butler.series, butler, calendars or MarketCalendars())
        self._clock = clock
        self._concurrency = ticker_concurrency
        self._metrics = metrics
        self._windows: dict[str, TickerWindow] = {}  # run id -> its tickers, while it runs
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, ticker_concurrency * parallel_runs), thread_name_prefix="ticker"
        )

    def progress(self, run_id: str) -> tuple[int, int] | None:
        """(tickers done, tickers in all) of a run in progress here; None for any other."""
        window = self._windows.get(run_id)
        if window is None:
            return None if self._fanout is None else self._fanout.progress(run_id)
        return window.done, window.total

    def execute_job(
        self,
        job: JobSpec,
        *,
        run_id: str | None = None,
        trigger: Trigger = Trigger.MANUAL,
        scheduled_for: datetime | None = None,
        cancel: threading.Event | None = None,
        timeout: timedelta | None = None,
        fence: Fence | None = None,
    ) -> RunResult:
        started = self._clock.now()
        start, end = job.window_dates(started.astimezone(job.zone).date())
        run = self._run_of(
            TickerRun(
                job=job,
                run_id=run_id or manual_run_id(job.id, started),
                start=start,
                end=end,
                deadline=time.monotonic() + timeout.total_seconds() if timeout else None,
                cancel=cancel or threading.Event(),
                fence=fence,
            )
        )
        outcomes, timed_out, reason, fetched_by = self._run_tickers(run, timeout)
        fetched = [o.ticker for o in outcomes if not o.error]
        failed = [o.ticker for o in outcomes if o.error]
        result = RunResult(
            job_id=job.id,
            run_id=run.run_id,
            trigger=trigger,
            scheduled_for=scheduled_for,
            started_at=started,
            finished_at=self._clock.now(),
            status=RunStatus.FAILED if timed_out else run_status_for(fetched, failed),
            fetched_stocks=fetched,
            failed_stocks=failed,
            errors={o.ticker: o.error for o in outcomes if o.error},
            rows_stored=sum(o.rows for o in outcomes),
            reason=reason,
            warnings={o.ticker: o.warning for o in outcomes if o.warning},
            fresh_stocks=[o.ticker for o in outcomes if o.fresh and not o.error],
            missing_sessions=sum(o.missing for o in outcomes),
            fetched_by=fetched_by,
        )
        self._observe(result)
        _log_finished(result)
        return result

    def _run_of(self, task: TickerRun) -> _Run:
        job = task.job
        policy = RetryPolicy(job.retries, job.retry_backoff)
        return _Run(**vars(task), fetcher=self._fetchers[job.source], policy=policy)

    def ticker_work(self, task: TickerRun) -> Work:
        """Fetch and store one ticker of another replica's fanned-out run, as it would."""
        return partial(self._fetch_and_store, self._run_of(task))

    def _run_tickers(
        self, run: _Run, timeout: timedelta | None
    ) -> tuple[list[TickerOutcome], bool, str, dict[str, int]]:
        """Every ticker's outcome in the job's order, whether the run timed out, why it
        ended early ("" when it did not), and how many tickers each replica fetched."""
        job = run.job
        work = partial(self._fetch_and_store, run)
        if job.fanout and self._fanout is not None:
            fanned = self._fanout.run(run, work, self._pool.submit)
        else:
            fanned = self._windowed(run, work)
        outcomes, cut_short = fanned.outcomes, fanned.cut_short
        # A timed-out or cancelled run frees its job now; stuck fetches finish (or not) on
        # their own threads and store nothing, because they see ``cancel``.
        timed_out = cut_short and not run.cancel.is_set()
        if cut_short:
            run.cancel.set()
        reason = ""
        if any(o.storage_failed for o in outcomes.values()):
            reason = "could not store data: Redis unavailable"
        if cut_short:
            reason = f"timeout after {timeout}" if timed_out else "cancelled"
            for ticker in job.tickers:
                if ticker not in outcomes:
                    outcomes[ticker] = TickerOutcome(ticker, error=f"run ended: {reason}")
        return [outcomes[t] for t in job.tickers], timed_out, reason, fanned.fetched_by

    def _windowed(self, run: _Run, work: Work) -> Fanned:
        """The run's tickers through this replica's ticker pool (not fanned out)."""
        window = TickerWindow(self._pool, work, run.job.tickers)
        self._windows[run.run_id] = window
        try:
            window.fill(max(1, min(self._concurrency, len(run.job.tickers))))
            done, cut_short = _wait(window, run.deadline, run.cancel)
        finally:
            del self._windows[run.run_id]
        return Fanned({window.futures[f]: f.result() for f in done}, cut_short=cut_short)

    def _fetch_and_store(self, run: _Run, ticker: str) -> TickerOutcome:
        """One ticker: bring its series up to date (fetching what is missing, with retries
        and quality checks); every failure becomes its outcome."""
        if run.cancel.is_set():
            return TickerOutcome(ticker, error="run cancelled before this ticker started")
        warnings: list[str] = []

        def fetch(start: date, end: date) -> pd.DataFrame:
            frame = self._fetch(run, ticker, start, end)
            if run.cancel.is_set():
                raise _Ended(ticker)
            frame, warning = self._checked(run, ticker, frame, start, end)
            if warning:
                warnings.append(warning)
            return frame

        target = Target(run.job, ticker, run.start, run.end, self._clock.now(), run.fence)
        try:
            update = self._updater.update(target, fetch)
        except _Ended:
            return TickerOutcome(
                ticker, error="run ended (timeout or shutdown) before this ticker was stored"
            )
        except Exception as exc:  # each failure is this ticker's outcome, never the run's
            outcome = _failure(run, ticker, exc, "; ".join(warnings))
        else:
            if update.rebased:
                self._rebased(run, ticker)
            outcome = TickerOutcome(
                ticker,
                rows=update.rows,
                fresh=update.fresh,
                missing=update.missing,
                warning="; ".join(warnings),
            )
        return self._count(run.job, outcome)

    def _fetch(self, run: _Run, ticker: str, start: date, end: date) -> pd.DataFrame:
        job, ctx = run.job, run.ctx(ticker)
        t0 = time.perf_counter()
        with request_scope(deadline=run.deadline, cancel=run.cancel):
            frame = run.policy.call(
                lambda: run.fetcher.fetch_from_source(ticker, start, end, job.interval),
                deadline=run.deadline,
                cancel=run.cancel,
                on_retry=lambda n, exc, wait: log.info(
                    "retry %d job=%s run_id=%s ticker=%s in %.2fs: %s",
                    n,
                    job.id,
                    run.run_id,
                    ticker,
                    wait,
                    exc,
                    extra=ctx,
                ),
            )
        self._metrics.fetch_duration.observe(time.perf_counter() - t0)
        return frame

    def _rebased(self, run: _Run, ticker: str) -> None:
        self._metrics.series_rebased.labels(job=run.job.id).inc()
        log.info(
            "series re-fetched whole job=%s run_id=%s ticker=%s: a split or dividend "
            "changed Yahoo's price basis",
            run.job.id,
            run.run_id,
            ticker,
            extra=run.ctx(ticker),
        )

    def _checked(
        self, run: _Run, ticker: str, frame: pd.DataFrame, start: date, end: date
    ) -> tuple[pd.DataFrame, str]:
        """The bars fit to store and the ticker's data-quality warning ("" if none).

        Dropped bars are counted per reason and logged in one WARNING; when nothing may
        be stored (over the cap, no good bar left) PermanentFetchError, logged by the
        caller as the ticker's failure.
        """
        job = run.job
        from stocksched.sources.quality import check_bars  # numpy/pandas: on the first run

        clean, report = check_bars(frame, start, end, job.interval)
        for reason, count in report.by_reason.items():
            self._metrics.bars_dropped.labels(job=job.id, reason=reason).inc(count)
        if report.failure:
            raise PermanentFetchError(ticker, report.failure)
        if report.warning:
            log.warning(
                "bars dropped job=%s run_id=%s ticker=%s: %s",
                job.id,
                run.run_id,
                ticker,
                report.warning,
                extra=run.ctx(ticker),
            )
        return clean, report.warning

    def _count(self, job: JobSpec, outcome: TickerOutcome) -> TickerOutcome:
        result = "failure" if outcome.error else "fresh" if outcome.fresh else "success"
        self._metrics.ticker_fetches.labels(job=job.id, result=result).inc()
        if outcome.rows:
            self._metrics.rows_stored.labels(job=job.id).inc(outcome.rows)
        return outcome

    def _observe(self, result: RunResult) -> None:
        self._metrics.observe_run(
            result.job_id, str(result.status), str(result.trigger), result.duration_s
        )
        self._metrics.missing_sessions.labels(job=result.job_id).set(result.missing_sessions)
        # Last-run and last-success gauges describe the job, whichever replica ran it: they
        # are set from the job records when /metrics is rendered (SchedulerServingApp).


def _wait(
    window: TickerWindow, deadline: float | None, cancel: threading.Event
) -> tuple[set[Future[TickerOutcome]], bool]:
    """Wait for the tickers until all are done, the deadline passes, or ``cancel``;
    each ticker that finishes lets the next one in. True: some were left undone."""
    done: set[Future[TickerOutcome]] = set()
    pending = set(window.futures)
    while pending:
        step = CANCEL_POLL_S
        if deadline is not None:
            step = min(step, max(0.0, deadline - time.monotonic()))
        finished, pending = wait(pending, timeout=step, return_when=FIRST_COMPLETED)
        done |= finished
        if cancel.is_set() or (deadline is not None and time.monotonic() >= deadline):
            break
        pending |= window.fill(len(finished))
    left = bool(pending) or window.remaining
    for f in pending:
        f.cancel()  # not started yet: never starts
    return done, left


def _failure(run: _Run, ticker: str, exc: Exception, warning: str) -> TickerOutcome:
    """The outcome of a ticker that raised, logged once at the level its cause deserves."""
    job_id, run_id, ctx = run.job.id, run.run_id, run.ctx(ticker)
    if isinstance(exc, FenceLostError):
        # Another replica took the job over (this process stalled past its lease): this
        # run must write nothing more, so the rest of its tickers stop too.
        run.cancel.set()
        return TickerOutcome(ticker, error="not stored: this run lost its lease")
    if isinstance(exc, StorageError | RateLimiterUnavailable):
        log.debug(
            "ticker not stored job=%s run_id=%s ticker=%s: %s",
            job_id,
            run_id,
            ticker,
            exc,
            extra=ctx,
        )
        return TickerOutcome(ticker, error=str(exc), storage_failed=True, warning=warning)
    if isinstance(exc, FetchError | RateLimitTimeout | ValueError):
        log.warning(
            "ticker failed job=%s run_id=%s ticker=%s: %s",
            job_id,
            run_id,
            ticker,
            exc,
            extra=ctx,
        )
        return TickerOutcome(ticker, error=str(exc))
    # an unexpected bug must not sink the other tickers
    log.exception("ticker crashed job=%s run_id=%s ticker=%s", job_id, run_id, ticker, extra=ctx)
    return TickerOutcome(ticker, error=f"{type(exc).__name__}: {exc}")


def _log_finished(result: RunResult) -> None:
    """The run's one summary line: INFO when it fully succeeded, WARNING otherwise."""
    log.log(
        logging.INFO if result.status == RunStatus.SUCCESS else logging.WARNING,
        "run finished job=%s run_id=%s status=%s fetched=%d failed=%d rows=%d duration=%.2fs%s",
        result.job_id,
        result.run_id,
        result.status,
        len(result.fetched_stocks),
        len(result.failed_stocks),
        result.rows_stored,
        result.duration_s,
        f" reason={result.reason}" if result.reason else "",
        extra={
            "job": result.job_id,
            "run_id": result.run_id,
            "status": str(result.status),
            "trigger": str(result.trigger),
            "slot": iso_utc(result.scheduled_for) if result.scheduled_for else None,
            "fetched": len(result.fetched_stocks),
            "failed": len(result.failed_stocks),
            "fresh": len(result.fresh_stocks),
            "rows": result.rows_stored,
            "duration_s": round(result.duration_s, 3),
            "reason": result.reason or None,
        },
    )
