"""The ``stocksched`` command.

Exit codes: 0 success; 1 invalid config or failed run; 2 usage error (bad flags,
unknown job, unreadable settings); 3 run partially succeeded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from stocksched import __version__
from stocksched.config import ConfigError, LoadedJobs, load_jobs_file
from stocksched.settings import Settings, SettingsError, load_settings, resolve_config_path

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3

log = logging.getLogger("stocksched")


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        help="settings file (default: $STOCKSCHED_CONFIG or config/stocksched.yaml)",
    )
    p.add_argument("--jobs", metavar="PATH", help="jobs file (env STOCKSCHED_JOBS)")
    p.add_argument(
        "--redis-url", metavar="URL", help="redis://... or memory:// (env STOCKSCHED_REDIS_URL)"
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", choices=["text", "json"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stocksched",
        description="Declarative market-data scheduler: jobs.yaml -> Redis.",
        epilog="Exit codes: 0 ok, 1 invalid config / failed run, 2 usage error, "
        "3 partial success (run-job).",
    )
    parser.add_argument("--version", action="version", version=f"stocksched {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    _add_settings_flags(run)
    run.add_argument("--pool-size", type=int, metavar="N")
    run.add_argument("--shutdown-grace", type=float, metavar="SECONDS")
    run.add_argument(
        "--listen", metavar="HOST:PORT", help="HTTP API address (env STOCKSCHED_LISTEN)"
    )

    val = sub.add_parser(
        "validate",
        help="check jobs files and show each job's next fire times",
        description="Validate jobs files. Exit 0: all valid; 1: at least one file is invalid, "
        "missing or unreadable (each error printed as FILE:LINE:COL: path: "
        "message); 2: usage error.",
    )
    val.add_argument("files", nargs="+", metavar="FILE")
    val.add_argument("--format", choices=["text", "json"], default="text")
    val.add_argument("--count", type=int, default=3, help="fire times to show per job")

    rj = sub.add_parser("run-job", help="run one job once, now, in the foreground")
    _add_settings_flags(rj)
    rj.add_argument("job_id", metavar="JOB_ID")
    rj.add_argument("--json", action="store_true", help="print the result as JSON")

    sub.add_parser("schema", help="print the JSON Schema of jobs.yaml")
    _add_client_commands(sub)
    return parser


def _add_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        metavar="URL",
        help="daemon address, e.g. http://127.0.0.1:9731 (env STOCKSCHED_URL; "
        "default: from the settings' http.listen)",
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help="API token for POSTs (env STOCKSCHED_TOKEN_FILE, or http.token_file)",
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help="settings file (default: $STOCKSCHED_CONFIG or config/stocksched.yaml)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """HTTP clients of a running daemon (see stocksched.client for exit codes)."""
    st = sub.add_parser("status", help="show the running daemon's status")
    _add_client_flags(st)
    jobs = sub.add_parser("jobs", help="list jobs with their state, last and next run")
    _add_client_flags(jobs)
    runs = sub.add_parser("runs", help="show a job's run history, newest first")
    _add_client_flags(runs)
    runs.add_argument("job_id", metavar="JOB_ID")
    runs.add_argument("--limit", type=int, default=20, metavar="N", help="entries (default 20)")
    trig = sub.add_parser(
        "trigger",
        help="run a job now, outside its schedule",
        description="Start a run now. With --wait, wait for it and exit like run-job: "
        "0 success, 3 partial success, 1 failed or timed out.",
    )
    _add_client_flags(trig)
    trig.add_argument("job_id", metavar="JOB_ID")
    trig.add_argument("--wait", action="store_true", help="wait until the run has finished")
    trig.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="with --wait: give up after this long (default 300)",
    )
    for name, text in (
        ("pause", "pause a job's schedule (kept across restarts)"),
        ("resume", "resume a paused job"),
    ):
        p = sub.add_parser(name, help=text)
        _add_client_flags(p)
        p.add_argument("job_id", metavar="JOB_ID")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "jobs": getattr(args, "jobs", None),
        "redis_url": getattr(args, "redis_url", None),
        "log_level": getattr(args, "log_level", None),
        "log_format": getattr(args, "log_format", None),
        "pool_size": getattr(args, "pool_size", None),
        "shutdown_grace": getattr(args, "shutdown_grace", None),
        "http.listen": getattr(args, "listen", None),
    }
    path = resolve_config_path(getattr(args, "config", None), os.environ)
    return load_settings(path, os.environ, overrides)


# -- validate ---------------------------------------------------------------------


def _fire_times(loaded: LoadedJobs, count: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    out = []
    for job in loaded.jobs:
        times: list[str] = []
        t = now
        for _ in range(count if job.enabled else 0):
            t = job.next_fire(t)
            times.append(t.astimezone(job.zone).isoformat())
        out.append(
            {
                "id": job.id,
                "schedule": job.schedule,
                "timezone": job.timezone,
                "enabled": job.enabled,
                "tickers": list(job.tickers),
                "next": times,
            }
        )
    return out


def cmd_validate(args: argparse.Namespace) -> int:
    report: list[dict[str, Any]] = []
    failed = False
    for name in args.files:
        try:
            loaded = load_jobs_file(name)
        except ConfigError as exc:
            failed = True
            report.append({"file": name, "valid": False, "errors": exc.errors})
            continue
        report.append(
            {
                "file": name,
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
            state = "" if job["enabled"] else " (disabled)"
            print(
                f"  {job['id']}{state}: {job['schedule']!r} in {job['timezone']}, "
                f"{len(job['tickers'])} ticker(s)"
            )
            for t in job["next"]:
                print(f"    next: {t}")
    return EXIT_FAIL if failed else EXIT_OK


# -- run / run-job -------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import faulthandler

    from stocksched.daemon import Components, Daemon
    from stocksched.logs import configure_logging

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    faulthandler.enable()  # a watchdog SIGABRT then logs every thread's stack
    return Daemon(Components(settings)).run()


def cmd_run_job(args: argparse.Namespace) -> int:
    from stocksched.client import RUN_EXIT, format_run
    from stocksched.daemon import Components
    from stocksched.facade import RunView
    from stocksched.logs import configure_logging
    from stocksched.registry import UnknownJobError

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    try:
        loaded = load_jobs_file(settings.jobs)
    except ConfigError as exc:
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
    c = Components(settings)
    result = c.executor.execute_job(spec)
    try:
        c.registry.record_run(result)
    except UnknownJobError:  # not reconciled by a daemon yet: keep the history anyway
        c.registry.add_history(result)
    view = RunView.of(result).model_dump(mode="json")  # the API's run shape
    print(json.dumps(view, indent=2) if args.json else format_run(view))
    return RUN_EXIT.get(view["status"], EXIT_FAIL)


def cmd_schema(_args: argparse.Namespace) -> int:
    from stocksched.config import jobs_file_json_schema

    print(json.dumps(jobs_file_json_schema(), indent=2))
    return EXIT_OK


def cmd_client(args: argparse.Namespace) -> int:
    from stocksched.client import run_command

    return run_command(args, lambda: _settings(args))


COMMANDS = {
    "validate": cmd_validate,
    "run": cmd_run,
    "run-job": cmd_run_job,
    "schema": cmd_schema,
    **{name: cmd_client for name in ("status", "jobs", "runs", "trigger", "pause", "resume")},
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SettingsError as exc:
        print(f"stocksched: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
