"""The ``stocksched`` command line: every subcommand, its flags, and settings from flags."""

from __future__ import annotations

import argparse
import os
from datetime import date
from typing import TYPE_CHECKING, Any

from stocksched import __version__

if TYPE_CHECKING:
    from stocksched.settings import Settings

DEFAULT_PREFIX = "scheduled_stock_data"  # the jobs' default prefix (stocksched.data too)
MAX_COUNT = 100  # validate --count: fire times per job


def _add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        help="settings file (default: $STOCKSCHED_CONFIG or config/stocksched.yaml)",
    )


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    _add_config_flag(p)
    p.add_argument("--jobs", metavar="PATH", help="jobs file (env STOCKSCHED_JOBS)")
    p.add_argument(
        "--redis-url", metavar="URL", help="redis://... or memory:// (env STOCKSCHED_REDIS_URL)"
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", choices=["text", "json"])


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= n <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_COUNT}, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stocksched",
        description="Declarative market-data scheduler: jobs.yaml -> Redis.",
        epilog="Exit codes: 0 ok, 1 invalid config / failed run, 2 usage error, "
        "3 partial success (run-job), 4 job already running (run-job), "
        "141 output pipe closed early (e.g. | head).",
    )
    parser.add_argument("--version", action="version", version=f"stocksched {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_local_commands(sub)
    _add_backfill_command(sub)
    _add_data_commands(sub)
    sub.add_parser("schema", help="print the JSON Schema of jobs.yaml")
    kit = sub.add_parser(
        "deploy-files",
        help="write the deployment kit (unit, settings, example jobs, Prometheus, Grafana)",
        description="Write the files a deployment needs, as the package carries them: "
        "deploy/ (systemd unit, environment example, Prometheus scrape config and rules, "
        "Grafana dashboard), config/stocksched.yaml, jobs.yaml and jobs.schema.json. "
        "Exit 0 written, 1 DIR already holds one of them (nothing written) or cannot be "
        "written.",
    )
    kit.add_argument("dir", metavar="DIR")
    kit.add_argument("--force", action="store_true", help="overwrite files already there")
    _add_client_commands(sub)
    return parser


def _add_local_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands that work without a daemon: run (is one), validate, run-job."""
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
    val.add_argument(
        "files", nargs="+", metavar="FILE", help="a jobs file, or - for standard input"
    )
    val.add_argument("--format", choices=["text", "json"], default="text")
    val.add_argument(
        "--count",
        type=_count,
        default=3,
        metavar="N",
        help=f"fire times to show per job, 1 to {MAX_COUNT} (default 3)",
    )

    rj = sub.add_parser(
        "run-job",
        help="run one job once, now, in the foreground",
        description="Run one job now, claimed like a manual trigger: it holds the job's run "
        "lease (a daemon's scheduled or triggered run then waits or skips) and ends at the "
        "job's timeout. Exit 0 success, 3 partial success, 1 failed, 2 unknown job, "
        "4 the job is already running (on a daemon or another run-job; nothing is run), "
        "130 interrupted (Ctrl-C or SIGTERM: the run is cancelled and recorded).",
    )
    _add_settings_flags(rj)
    rj.add_argument("job_id", metavar="JOB_ID")
    rj.add_argument("--json", action="store_true", help="print the result as JSON")


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _add_backfill_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``backfill``: a job's series filled with long history (stocksched.backfill)."""
    bf = sub.add_parser(
        "backfill",
        help="fill a job's series with history, in chunks Yahoo can serve",
        description="Fetch each of the job's tickers from --start to --end (default today) "
        "at the job's interval and prefix, in chunks (a year of daily bars, 60 days of "
        "1h, 7 days of 1m per request), through the shared rate limiter and the job's "
        "retries, and merge them into its series. Resumable: running it again fetches "
        "only what is still missing. Exit 0 all tickers done, 3 some failed, 1 all "
        "failed, 2 usage (unknown job, --start beyond Yahoo's reach), 130 interrupted "
        "(Ctrl-C: what was stored stays).",
    )
    _add_settings_flags(bf)
    bf.add_argument("job_id", metavar="JOB_ID")
    bf.add_argument("--start", type=_iso_date, required=True, metavar="YYYY-MM-DD")
    bf.add_argument("--end", type=_iso_date, metavar="YYYY-MM-DD", help="last day (default: today)")
    bf.add_argument("--json", action="store_true", help="print a summary per ticker as JSON")


def _add_redis_flags(p: argparse.ArgumentParser) -> None:
    _add_config_flag(p)
    p.add_argument("--redis-url", metavar="URL", help="redis://... (env STOCKSCHED_REDIS_URL)")


def _add_data_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The stored series, read from Redis directly (stocksched.cli.data_commands)."""
    bars = sub.add_parser(
        "bars",
        help="print a ticker's stored bars (reads Redis; no daemon needed)",
        description="Print the stored bars of TICKER. Exit 0; 1 when nothing is stored for "
        "the ticker at this interval and prefix, a date is invalid or Redis is unreachable.",
    )
    bars.add_argument("ticker", metavar="TICKER")
    bars.add_argument("--interval", default="1d", help="bar interval (default 1d)")
    bars.add_argument("--start", metavar="DATE", help="first date, exchange-local (inclusive)")
    bars.add_argument("--end", metavar="DATE", help="last date, exchange-local (inclusive)")
    bars.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        help="output (default: table on a terminal, csv when piped)",
    )
    bars.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"storage prefix (default {DEFAULT_PREFIX})"
    )
    _add_redis_flags(bars)
    tickers = sub.add_parser(
        "tickers",
        help="list every stored series: range, bars, missing sessions, last fetch and action",
    )
    tickers.add_argument("--json", action="store_true", help="print JSON (with missing dates)")
    tickers.add_argument("--prefix", help="only the series of this storage prefix")
    _add_redis_flags(tickers)


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
    _add_config_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """HTTP clients of a running daemon (see stocksched.cli.remote_commands)."""
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


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings file, the environment and the flags this command was given."""
    # Imported here: the settings model (pydantic) is not needed to parse the command
    # line, nor by the commands that take no settings (validate, schema).
    from stocksched.settings import load_settings, resolve_config_path

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
