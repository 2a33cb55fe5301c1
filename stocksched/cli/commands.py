"""The ``stocksched`` command: parse, dispatch, and turn what escapes into an exit code.

Exit codes: ``stocksched.exitcodes`` (141, stdout closed early, prints nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from stocksched.cli.parser import build_parser
from stocksched.exitcodes import EXIT_INTERRUPTED, EXIT_PIPE, EXIT_USAGE

Command = Callable[[argparse.Namespace], int]

# Each command's module and function, and the heavy modules it imports where used (the
# daemon's), all imported only when that command runs (see _command): `validate` loads
# no settings, HTTP client, store or server library, `status` no daemon.
DAEMON = "stocksched.daemon"
COMMANDS: dict[str, tuple[str, ...]] = {
    "validate": ("stocksched.cli.validate", "cmd_validate"),
    "schema": ("stocksched.cli.validate", "cmd_schema"),
    "deploy-files": ("stocksched.cli.deploy_files", "cmd_deploy_files"),
    "run": ("stocksched.cli.runjob", "cmd_run", DAEMON),
    "run-job": ("stocksched.cli.runjob", "cmd_run_job", DAEMON),
    "backfill": ("stocksched.cli.backfill_command", "cmd_backfill", DAEMON),
    "bars": ("stocksched.cli.data_commands", "cmd_data"),
    "tickers": ("stocksched.cli.data_commands", "cmd_data"),
    **{
        name: ("stocksched.cli.remote_commands", "cmd_client")
        for name in ("status", "jobs", "runs", "trigger", "pause", "resume")
    },
}


def _import(name: str) -> Command:
    module, attr, *also = COMMANDS[name]
    for extra in also:
        importlib.import_module(extra)
    command: Command = getattr(importlib.import_module(module), attr)
    return command


def _command(name: str, settle_gc: bool) -> Command:
    """The command's function, its module imported (with the libraries it needs).

    With ``settle_gc`` (the console script, not an in-process ``main``) the import runs
    with the cyclic collector paused, and what it loaded is then frozen (``gc.freeze``):
    importing creates ~50,000 (validate) to ~120,000 (run) long-lived objects, and the
    collector walked them again and again while they were made (measured: ~25 ms of
    ``validate``, ~40 ms of ``run``'s start), and once more at exit; frozen, no collection
    walks them again. The cyclic garbage the imports leave stays (~700 objects, ~0.5 MiB
    for ``run``; the daemon's ``GcSettler`` makes the same trade once its jobs are
    loaded). Not for in-process callers (tests): what they hold would never be collected.
    """
    if not settle_gc:
        return _import(name)
    enabled = gc.isenabled()
    gc.disable()
    try:
        command = _import(name)
    finally:
        if enabled:
            gc.enable()
    gc.freeze()
    return command


def _settings_error(exc: Exception) -> bool:
    """Whether ``exc`` is a ``SettingsError``, looked up in ``sys.modules``: a command
    that never imported the settings (validate, schema) cannot have raised one, and
    importing them to find out would cost those commands their pydantic models."""
    settings = sys.modules.get("stocksched.settings")
    return settings is not None and isinstance(exc, settings.SettingsError)


def main(argv: Sequence[str] | None = None, *, settle_gc: bool = False) -> int:
    """Run the command in ``argv``; ``settle_gc``: see ``_command`` (console script only)."""
    try:
        args = build_parser().parse_args(argv)
        try:
            return _command(args.command, settle_gc)(args)
        finally:
            sys.stdout.flush()  # a reader gone early shows here, not at interpreter exit
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `stocksched validate jobs.yaml | head`
        _stdout_to_devnull()
        return EXIT_PIPE
    except Exception as exc:
        if not _settings_error(exc):
            raise
        print(f"stocksched: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _stdout_to_devnull() -> None:
    """The Python docs' recipe: what is still buffered for the closed pipe goes nowhere."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: no file descriptor (in-process)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def entrypoint() -> None:
    sys.exit(main(settle_gc=True))
