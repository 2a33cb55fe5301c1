"""``stocksched run`` (the daemon) and ``stocksched run-job`` (one run, in the foreground).

The heavy modules (the daemon's components) are imported where used, so that the other
commands start fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

from stocksched.cli.parser import settings_from_args
from stocksched.exitcodes import EXIT_BUSY, EXIT_FAIL, EXIT_INTERRUPTED, EXIT_USAGE, RUN_EXIT
from stocksched.jobs import JobsFileError, JobSpec, load_jobs_file

if TYPE_CHECKING:
    from stocksched.daemon import Components
    from stocksched.model import RunResult
    from stocksched.storage.leases import Lease

log = logging.getLogger("stocksched")


def cmd_run(args: argparse.Namespace) -> int:
    import faulthandler

    from stocksched.daemon import Components, Daemon
    from stocksched.logs import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)
    faulthandler.enable()  # a watchdog SIGABRT then logs every thread's stack
    return Daemon(Components(settings)).run()


EMBEDDED_WARNING = (
    "using the embedded in-process store (no redis_url, or memory://): "
    "job records and market data are NOT persisted"
)
NOT_PERSISTED = "nothing was persisted: no redis_url (embedded store)"


def cmd_run_job(args: argparse.Namespace) -> int:
    """One run now, claimed like a manual trigger: never while the job runs anywhere."""
    from stocksched.daemon import Components
    from stocksched.logs import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.log_format)
    try:
        loaded = load_jobs_file(settings.jobs)
    except JobsFileError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_FAIL
    spec = next((j for j in loaded.jobs if j.id == args.job_id), None)
    if spec is None:
        known = ", ".join(j.id for j in loaded.jobs) or "none"
        print(
            f"stocksched: no job {args.job_id!r} in {settings.jobs} (jobs: {known})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    # Leases under a daemon's own stable replica_id are taken for its crashed runs when
    # it restarts: run-job claims under an id of its own, which also names it to others.
    owner = f"run-job-{socket.gethostname()}-{os.getpid()}"
    c = Components(settings.model_copy(update={"replica_id": owner}))
    if c.embedded:
        log.warning(EMBEDDED_WARNING)
    return _run_claimed(c, spec, args.json)


def _run_claimed(c: Components, spec: JobSpec, as_json: bool) -> int:
    from stocksched.storage.adapter import StorageError
    from stocksched.storage.leases import Lease

    cancel = threading.Event()
    why: list[str] = []  # why the run was cancelled early: lease lost, a signal
    # Signals are taken over before the claim: one that comes once the lease is held
    # (even before the body starts) cancels the run, which is still recorded.
    with signals_cancel(cancel, why):
        try:
            claim = _claim(c, spec.id)
        except StorageError as exc:
            print(f"stocksched: cannot claim job {spec.id!r}: {exc}", file=sys.stderr)
            return EXIT_FAIL
        if not isinstance(claim, Lease):
            replica, run_id = claim
            print(
                f"stocksched: job {spec.id!r} is already running: run {run_id} on replica "
                f"{replica}; nothing was run",
                file=sys.stderr,
            )
            return EXIT_BUSY
        result, recorded = _run_leased(c, spec, claim, cancel, why)
    status = _report(result, persisted=not c.embedded, as_json=as_json)
    if any(w.startswith("cancelled by") for w in why):
        return EXIT_INTERRUPTED  # by the operator: recorded, but not a result to act on
    return RUN_EXIT.get(status, EXIT_FAIL) if recorded else EXIT_FAIL


def _run_leased(
    c: Components, spec: JobSpec, lease: Lease, cancel: threading.Event, why: list[str]
) -> tuple[RunResult, bool]:
    """Run under ``lease`` (kept alive meanwhile), record; whether the record landed."""
    from stocksched.coordination import LeaseKeeper

    def lost(_lease: Lease, reason: str) -> None:
        why.append(f"lease lost: {reason}")
        cancel.set()  # never twice at once: another replica may take the job over

    keeper = LeaseKeeper(c.leases, lost)
    keeper.add(lease)
    keeper.start()
    try:
        _mark_running(c, spec.id)
        result = c.executor.execute_job(
            spec, run_id=lease.run_id, cancel=cancel, timeout=spec.timeout
        )
        # "cancelled" (tickers left when the run ended) is what ``why`` says, with its cause.
        plain = "" if why and result.reason == "cancelled" else result.reason
        result.reason = "; ".join(x for x in (plain, *why) if x)
        recorded = _record(c, result)
        keeper.discard(lease)
        if recorded:
            _finish(c, lease)
    finally:
        keeper.stop()
    return result, recorded


def _report(result: RunResult, *, persisted: bool, as_json: bool) -> str:
    """Print the run as the API shows it (``RunView``); returns its status."""
    from stocksched.cli.output import format_run
    from stocksched.views import RunView

    view = RunView.of(result).model_dump(mode="json")  # the API's run shape
    view["persisted"] = persisted
    if as_json:
        print(json.dumps(view, indent=2))
    else:
        print(format_run(view) + ("" if persisted else f"\n{NOT_PERSISTED}"))
    return str(view["status"])


def _claim(c: Components, job_id: str) -> Lease | tuple[str, str]:
    """The job's running lease for a new manual run, else (replica id, run id) holding it."""
    from stocksched.model import Trigger
    from stocksched.runids import manual_run_id

    holder: tuple[str, str] | None = None
    for _ in range(3):  # the holder may finish between the claim and the read
        now = c.clock.now()
        lease = c.leases.claim(
            job_id, manual_run_id(job_id, now), trigger=Trigger.MANUAL, started_at=now
        )
        if lease is not None:
            return lease
        holder = c.leases.holder(job_id)  # for the message only: the claim decides
        if holder is not None:
            return holder
    return holder or ("unknown", "unknown")


def _mark_running(c: Components, job_id: str) -> None:
    from stocksched.registry import UnknownJobError
    from stocksched.storage.adapter import StorageError

    try:
        c.registry.mark_running(job_id)
    except UnknownJobError:
        pass  # no daemon has reconciled this job: there is no record to mark
    except StorageError as exc:
        log.warning("could not mark job %s running: %s", job_id, exc)


def _record(c: Components, result: RunResult) -> bool:
    """Store the outcome on the job record and in its history; False if Redis failed."""
    from stocksched.registry import UnknownJobError
    from stocksched.storage.adapter import StorageError

    try:
        try:
            c.registry.record_run(result)
        except UnknownJobError:  # not reconciled by a daemon yet: keep the history anyway
            c.registry.add_history(result)
    except StorageError as exc:
        # The in-flight record stays, so a daemon records the run as interrupted later.
        print(f"stocksched: could not record run {result.run_id}: {exc}", file=sys.stderr)
        return False
    return True


def _finish(c: Components, lease: Lease) -> None:
    from stocksched.storage.adapter import StorageError

    try:
        if not c.leases.finish(lease):
            log.warning("run %s was recorded as interrupted elsewhere (lease lost)", lease.run_id)
    except StorageError as exc:  # the lease expires by itself within lease_ttl
        log.warning("could not release the lease of run %s: %s", lease.run_id, exc)


@contextlib.contextmanager
def signals_cancel(cancel: threading.Event, why: list[str]) -> Iterator[None]:
    """SIGINT/SIGTERM set ``cancel`` (the work ends early, what it did is kept and said);
    a second signal acts as usual. For ``run-job`` and ``backfill``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in sigs}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        why.append(f"cancelled by {signal.Signals(signum).name}")
        cancel.set()
        restore()

    for s in sigs:
        signal.signal(s, on_signal)
    try:
        yield
    finally:
        restore()
