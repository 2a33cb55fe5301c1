"""The ``stocksched`` command: parse, dispatch, and turn what escapes into an exit code.

Exit codes: ``stocksched.exitcodes`` (141, stdout closed early, prints nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from stocksched.cli.parser import build_parser, settings_from_args
from stocksched.cli.validate import cmd_schema, cmd_validate
from stocksched.exitcodes import EXIT_INTERRUPTED, EXIT_PIPE, EXIT_USAGE
from stocksched.settings import SettingsError


def cmd_client(args: argparse.Namespace) -> int:
    from stocksched.cli.remote_commands import run_command  # httpx: only for these commands

    return run_command(args, lambda: settings_from_args(args))


def cmd_data(args: argparse.Namespace) -> int:
    from stocksched.cli.data_commands import run_data_command  # pandas: only for these

    return run_data_command(args, lambda: settings_from_args(args))


def cmd_run(args: argparse.Namespace) -> int:
    from stocksched.cli.runjob import cmd_run as run  # the daemon's imports: only for run

    return run(args)


def cmd_run_job(args: argparse.Namespace) -> int:
    from stocksched.cli.runjob import cmd_run_job as run_job

    return run_job(args)


def cmd_backfill(args: argparse.Namespace) -> int:
    from stocksched.cli.backfill_command import cmd_backfill as backfill

    return backfill(args)


def cmd_deploy_files(args: argparse.Namespace) -> int:
    from stocksched.cli.deploy_files import cmd_deploy_files as deploy_files

    return deploy_files(args)


COMMANDS = {
    "validate": cmd_validate,
    "deploy-files": cmd_deploy_files,
    "run": cmd_run,
    "run-job": cmd_run_job,
    "backfill": cmd_backfill,
    "schema": cmd_schema,
    "bars": cmd_data,
    "tickers": cmd_data,
    **{name: cmd_client for name in ("status", "jobs", "runs", "trigger", "pause", "resume")},
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        try:
            return COMMANDS[args.command](args)
        finally:
            sys.stdout.flush()  # a reader gone early shows here, not at interpreter exit
    except SettingsError as exc:
        print(f"stocksched: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `stocksched validate jobs.yaml | head`
        _stdout_to_devnull()
        return EXIT_PIPE


def _stdout_to_devnull() -> None:
    """The Python docs' recipe: what is still buffered for the closed pipe goes nowhere."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: no file descriptor (in-process)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def entrypoint() -> None:
    sys.exit(main())
