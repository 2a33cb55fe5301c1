"""``stocksched validate`` and ``stocksched schema``: the jobs file, without a daemon."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import TYPE_CHECKING, Any

from stocksched.exitcodes import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from stocksched.jobs import MAX_FILE_BYTES, JobsFileError, JobSpec, LoadedJobs, load_jobs_file

if TYPE_CHECKING:
    from stocksched.calendars import MarketCalendars

#: How a jobs file read from standard input (``validate -``) is named in messages.
STDIN_NAME = "<stdin>"

PREVIEW_DAYS = 366  # validate looks this far ahead for fire times (a calendar may skip many)


def next_fires(
    job: JobSpec, after: datetime, count: int, calendars: MarketCalendars | None = None
) -> list[datetime]:
    """The job's next ``count`` slots after ``after`` that would run, within PREVIEW_DAYS.

    With a ``calendar:``, slots on days the exchange is closed are left out, as the
    scheduler skips them (the day is taken in the exchange's zone).
    """
    out: list[datetime] = []
    horizon = after + timedelta(days=PREVIEW_DAYS)
    t = after
    while len(out) < count:
        t = job.next_fire(t)
        if t > horizon:
            break
        if job.calendar and calendars is not None:
            tz = calendars.tz(job.calendar)
            day = t.astimezone(tz).date()
            if not calendars.is_session(job.calendar, day):
                # Every slot of a closed day is skipped: go on from the end of that day.
                midnight = datetime.combine(day + timedelta(days=1), dtime.min, tzinfo=tz)
                t = max(t, midnight - timedelta(seconds=1))
                continue
        out.append(t)
    return out


def _calendars(loaded: LoadedJobs) -> MarketCalendars | None:
    """The exchange calendars, when a job names one: a file without (most) needs neither
    them nor the logging package they import (a few ms of ``validate``)."""
    if not any(job.calendar for job in loaded.jobs):
        return None
    from stocksched.calendars import MarketCalendars

    return MarketCalendars()


def _fire_times(loaded: LoadedJobs, count: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    calendars = _calendars(loaded)
    out = []
    for job in loaded.jobs:
        fires = next_fires(job, now, count, calendars) if job.enabled else []
        out.append(
            {
                "id": job.id,
                "schedule": job.schedule,
                "timezone": job.timezone,
                "calendar": job.calendar,
                "enabled": job.enabled,
                "tickers": list(job.tickers),
                "next": [t.astimezone(job.zone).isoformat() for t in fires],
            }
        )
    return out


def _print_job(job: Mapping[str, Any]) -> None:
    state = "" if job["enabled"] else " (disabled)"
    print(
        f"  {job['id']}{state}: {job['schedule']!r} in {job['timezone']}, "
        f"{len(job['tickers'])} ticker(s)"
    )
    if job["calendar"]:
        print(f"    calendar {job['calendar']}: closed days skipped")
    for t in job["next"]:
        print(f"    next ({job['timezone']}): {t}")
    if job["enabled"] and not job["next"]:
        print(f"    next ({job['timezone']}): none within {PREVIEW_DAYS} days")


def _load(name: str) -> LoadedJobs:
    """The jobs file ``name``, or standard input for ``-`` (for pipelines:
    ``git show HEAD:jobs.yaml | stocksched validate -``), named ``<stdin>`` in messages."""
    if name != "-":
        return load_jobs_file(name)
    data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
    return load_jobs_file(STDIN_NAME, data=data)


def _shown(name: str) -> str:
    return STDIN_NAME if name == "-" else name


def cmd_validate(args: argparse.Namespace) -> int:
    report: list[dict[str, Any]] = []
    failed = False
    if args.files.count("-") > 1:
        print("stocksched validate: '-' (standard input) can be given once", file=sys.stderr)
        return EXIT_USAGE
    for name in args.files:
        try:
            loaded = _load(name)
        except JobsFileError as exc:
            failed = True
            report.append({"file": _shown(name), "valid": False, "errors": exc.errors})
            continue
        report.append(
            {
                "file": _shown(name),
                "valid": True,
                "sha256": loaded.sha256,
                "jobs": _fire_times(loaded, args.count),
                "warnings": list(loaded.warnings),
            }
        )
    if args.format == "json":
        print(json.dumps(report, indent=2))
        return EXIT_FAIL if failed else EXIT_OK
    for entry in report:
        if not entry["valid"]:
            for line in entry["errors"]:
                print(line, file=sys.stderr)
            continue
        print(f"{entry['file']}: OK, {len(entry['jobs'])} job(s)")
        for line in entry["warnings"]:  # not an error: the exit status stays as it is
            print(f"warning: {line}", file=sys.stderr)
        for job in entry["jobs"]:
            _print_job(job)
    return EXIT_FAIL if failed else EXIT_OK


def cmd_schema(_args: argparse.Namespace) -> int:
    from stocksched.jobs.schema import jobs_file_json_schema

    print(json.dumps(jobs_file_json_schema(), indent=2))
    return EXIT_OK
