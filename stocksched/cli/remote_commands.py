"""The commands that talk to a running daemon: status, jobs, runs, trigger, pause, resume.

The daemon's address comes from ``--url``, ``$STOCKSCHED_URL`` or the settings'
``http.listen``; the token (needed for POSTs, and for reads of a daemon listening beyond
loopback) from ``--token-file``, ``$STOCKSCHED_TOKEN_FILE`` or ``http.token_file``.

Exit codes (``stocksched.exitcodes``): 0 ok; 1 daemon unreachable, server error, 409,
failed run; 2 usage (unknown job, bad argument, a --url that is not
http(s)://HOST[:PORT] or HOST:PORT, refused token, unreadable token file); 3 the awaited
run partially succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from stocksched.cli.output import format_jobs, format_run, format_runs, format_status
from stocksched.cli.parser import settings_from_args
from stocksched.cli.remote import (
    ApiClient,
    ApiError,
    DaemonUnreachableError,
    daemon_url,
    url_from_listen,
)
from stocksched.exitcodes import EXIT_FAIL, EXIT_OK, EXIT_USAGE, RUN_EXIT
from stocksched.secretfile import SecretFileError, read_secret_file
from stocksched.settings import Settings

_USAGE_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 422})

SettingsLoader = Callable[[], Settings]


class _Ctx:
    """Resolves the URL and the token, reading settings once.

    A POST needs the token, so an unreadable token file is a usage error. A read sends the
    token when it can (a daemon listening beyond loopback requires it) and goes without
    when the file cannot be read, so an operator without access to the secret can still
    read a loopback daemon; a 401 then says which setting to fix.
    """

    def __init__(
        self, args: argparse.Namespace, load_settings: SettingsLoader, env: Mapping[str, str]
    ) -> None:
        self.args = args
        self._load_settings = load_settings
        self._env = env
        self._settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = self._load_settings()
        return self._settings

    def url(self) -> str:
        """Raises DaemonUrlError (a usage error) for an address that is not a daemon URL."""
        if flag := getattr(self.args, "url", None):
            return daemon_url(flag, "--url")
        if env := self._env.get("STOCKSCHED_URL"):
            return daemon_url(env, "STOCKSCHED_URL")
        return url_from_listen(self.settings().http.listen)

    def token(self) -> str | None:
        path = getattr(self.args, "token_file", None) or self.settings().http.token_file
        return read_secret_file(Path(path), "API token") if path else None

    def client(self, needs_token: bool) -> ApiClient:
        if needs_token:
            return ApiClient(self.url(), self.token())
        try:
            token = self.token()
        except SecretFileError:
            token = None
        return ApiClient(self.url(), token)


def _emit(args: argparse.Namespace, data: Any, text: str, out: TextIO) -> None:
    out.write((json.dumps(data, indent=2) if args.json else text) + "\n")


def _status(c: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    st = c.status()
    _emit(args, st, format_status(st), out)
    return EXIT_OK


def _jobs(c: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    jobs = c.jobs()
    _emit(args, jobs, format_jobs(jobs), out)
    return EXIT_OK


def _runs(c: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    runs = c.runs(args.job_id, args.limit)
    _emit(args, runs, format_runs(runs), out)
    return EXIT_OK


def _trigger(c: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    try:
        accepted = c.trigger(args.job_id)
        run_id = accepted["run_id"]
    except ApiError as exc:
        # --wait on a job already running waits for the run in progress instead.
        running = exc.body.get("run_id") if exc.status == 409 else None
        if not (args.wait and isinstance(running, str)):
            raise
        sys.stderr.write(f"stocksched: {args.job_id} is already running: waiting for {running}\n")
        run_id = running
    else:
        if not args.wait:
            _emit(args, accepted, f"{args.job_id}: run {run_id} started", out)
            return EXIT_OK
    run = c.wait_for_run(args.job_id, run_id, args.timeout)
    if run is None:
        sys.stderr.write(
            f"stocksched: run {run_id} did not finish within "
            f"{args.timeout:g}s (it may still be running)\n"
        )
        return EXIT_FAIL
    _emit(args, run, format_run(run), out)
    return RUN_EXIT.get(run["status"], EXIT_FAIL)


def _pause_resume(c: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    res = c.pause(args.job_id) if args.command == "pause" else c.resume(args.job_id)
    _emit(args, res, f"{res['job_id']}: {res['message']}", out)
    return EXIT_OK


COMMANDS: dict[str, tuple[Callable[[ApiClient, argparse.Namespace, TextIO], int], bool]] = {
    # command: (handler, needs the token: POSTs do; reads send it when it can be read)
    "status": (_status, False),
    "jobs": (_jobs, False),
    "runs": (_runs, False),
    "trigger": (_trigger, True),
    "pause": (_pause_resume, True),
    "resume": (_pause_resume, True),
}


def cmd_client(args: argparse.Namespace) -> int:
    """The command line's entry: settings from the file, environment and flags."""
    return run_command(args, lambda: settings_from_args(args))


def run_command(
    args: argparse.Namespace,
    load_settings: SettingsLoader,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
) -> int:
    """Run one client subcommand; every failure becomes one line on stderr and an exit code."""
    handler, needs_token = COMMANDS[args.command]
    ctx = _Ctx(args, load_settings, os.environ if env is None else env)
    try:
        client = ctx.client(needs_token)
    except ValueError as exc:  # SecretFileError and DaemonUrlError included
        return _fail(str(exc), EXIT_USAGE)
    try:
        return handler(client, args, out or sys.stdout)
    except DaemonUnreachableError as exc:
        return _fail(f"{exc} (is `stocksched run` running? set --url or STOCKSCHED_URL)", EXIT_FAIL)
    except ApiError as exc:
        hint = " (set --token-file or STOCKSCHED_TOKEN_FILE)" if exc.status == 401 else ""
        code = EXIT_USAGE if exc.status in _USAGE_STATUSES else EXIT_FAIL
        return _fail(f"{exc}{hint}", code)
    finally:
        client.close()


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"stocksched: {message}\n")
    return code
