"""``stocksched backfill JOB_ID --start D [--end D]``: a job's series filled with history.

Built from the settings and the jobs file like ``run-job`` (``Components``: the shared
Redis rate limiter, yfinance's configuration); the work is ``stocksched.backfill``.
A progress bar (``rich``) is drawn on stderr when it is a terminal; otherwise only the
summary is printed. Exit 0 all tickers done, 3 some failed, 1 all failed (or Redis
failed), 2 usage (unknown job, bad dates, beyond Yahoo's reach), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path

from stocksched.backfill import Backfill, BackfillUsageError, TickerReport, check_reach
from stocksched.cli.parser import settings_from_args
from stocksched.exitcodes import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from stocksched.jobs import JobsFileError, JobSpec, load_jobs_file

log = logging.getLogger("stocksched")


def cmd_backfill(args: argparse.Namespace) -> int:
    from stocksched.daemon import Components
    from stocksched.logs import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)
    spec = _job(settings.jobs, args.job_id)
    if isinstance(spec, int):
        return spec
    end: date = args.end or datetime.now(spec.zone).date()
    try:
        if args.start > end:
            raise BackfillUsageError(f"--start {args.start} is after --end {end}")
        check_reach(spec.interval, args.start, datetime.now(spec.zone).date())
    except BackfillUsageError as exc:
        print(f"stocksched: {exc}", file=sys.stderr)
        return EXIT_USAGE
    c = Components(settings)
    if c.embedded:
        print(
            "stocksched: backfill needs a redis_url (--redis-url): the embedded store "
            "keeps nothing",
            file=sys.stderr,
        )
        return EXIT_USAGE
    backfill = Backfill(
        c.butler.series, c.fetchers[spec.source], spec, args.start, end, on_retry=_log_retry
    )
    return _run(backfill, args.json)


def _job(path: Path, job_id: str) -> JobSpec | int:
    """The job, or the exit code (its reason printed): 1 invalid file, 2 no such job."""
    try:
        loaded = load_jobs_file(path)
    except JobsFileError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_FAIL
    spec = next((j for j in loaded.jobs if j.id == job_id), None)
    if spec is None:
        known = ", ".join(j.id for j in loaded.jobs) or "none"
        print(f"stocksched: no job {job_id!r} in {path} (jobs: {known})", file=sys.stderr)
        return EXIT_USAGE
    return spec


def _run(backfill: Backfill, as_json: bool) -> int:
    from stocksched.cli.runjob import signals_cancel
    from stocksched.storage.adapter import StorageError

    why: list[str] = []
    reports: list[TickerReport] = []
    # Ctrl-C or SIGTERM: the request under way ends and is stored, then the backfill
    # stops; a second one interrupts at once (what was stored stays).
    with signals_cancel(backfill.cancel, why):
        try:
            plans = {t: backfill.plan(t) for t in backfill.job.tickers}
        except StorageError as exc:
            print(f"stocksched: cannot read the series: {exc}", file=sys.stderr)
            return EXIT_FAIL
        with _progress(sum(len(p) for p in plans.values())) as advance:
            for ticker, chunks in plans.items():
                if backfill.cancel.is_set():
                    break
                reports.append(backfill.run(ticker, chunks, advance))
    interrupted = backfill.cancel.is_set()
    _report(backfill, reports, interrupted, as_json)
    if interrupted:
        return EXIT_INTERRUPTED
    failed = [r for r in reports if r.error]
    if not failed:
        return EXIT_OK
    return EXIT_FAIL if len(failed) == len(reports) else EXIT_PARTIAL


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[str], None]]:
    """``advance(ticker)`` after each chunk: a rich progress bar on a terminal's stderr,
    nothing otherwise."""
    if not sys.stderr.isatty() or total == 0:
        yield lambda _ticker: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chunks"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
    ) as bar:
        task = bar.add_task("backfill", total=total)
        yield lambda ticker: bar.update(task, advance=1, description=ticker)


def _report(
    backfill: Backfill, reports: list[TickerReport], interrupted: bool, as_json: bool
) -> None:
    job = backfill.job
    left = [t for t in job.tickers if t not in {r.ticker for r in reports}]
    if as_json:
        view = {
            "job": job.id,
            "interval": job.interval,
            "start": backfill.start.isoformat(),
            "end": backfill.end.isoformat(),
            "interrupted": interrupted,
            "tickers": [r.view() for r in reports],
            "not_started": left,
        }
        print(json.dumps(view, indent=2))
        return
    failed = [r for r in reports if r.error and r.error != "interrupted"]
    for r in failed:
        print(f"stocksched: {r.ticker}: {r.error}", file=sys.stderr)
    done = sum(1 for r in reports if not r.error)
    line = (
        f"backfill {job.id} ({job.interval}, {backfill.start}..{backfill.end}): "
        f"{done}/{len(job.tickers)} tickers done, "
        f"{sum(r.chunks for r in reports)} chunks fetched, {sum(r.bars for r in reports)} "
        f"bars stored"
    )
    if failed:
        line += f", {len(failed)} failed ({', '.join(r.ticker for r in failed)})"
    if interrupted:
        line += "; interrupted: run it again to fetch what is still missing"
    print(line)


def _log_retry(ticker: str, n: int, exc: Exception, wait: float) -> None:
    log.info("backfill retry %d ticker=%s in %.2fs: %s", n, ticker, wait, exc)
