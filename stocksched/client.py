"""The CLI's HTTP client of a running daemon: status, jobs, runs, trigger, pause, resume.

Kept light (httpx, no FastAPI) so the commands start fast. The daemon's address comes
from ``--url``, ``$STOCKSCHED_URL`` or the settings' ``http.listen``; the token (needed
for POSTs, and for reads of a daemon listening beyond loopback) from ``--token-file``,
``$STOCKSCHED_TOKEN_FILE`` or ``http.token_file``.

Exit codes: 0 ok; 1 daemon unreachable, server error, 409, failed run; 2 usage (unknown
job, bad argument, a --url that is not http(s)://HOST[:PORT] or HOST:PORT, refused token,
unreadable token file); 3 the awaited run partially succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

import httpx

from stocksched.settings import Settings, split_listen

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
REQUEST_TIMEOUT_S = 10.0
# Runs that ended well enough: the same mapping as ``run-job``.
RUN_EXIT = {"success": EXIT_OK, "partial_success": EXIT_PARTIAL}
_USAGE_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 422})


class TokenFileError(ValueError):
    """The token file cannot be read or is empty."""


class DaemonUnreachableError(Exception):
    """No answer from the daemon's address (not running, wrong URL, firewall)."""


class ApiError(Exception):
    """The daemon answered with an error; ``message`` is its ``error`` field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def read_token(path: Path) -> str:
    """The token in ``path`` without surrounding whitespace (``echo`` adds a newline)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise TokenFileError(f"cannot read API token file {path}: {reason}") from None
    if not token:
        raise TokenFileError(f"API token file {path} is empty")
    return token


def url_from_listen(listen: str) -> str:
    """``http://HOST:PORT`` to reach a daemon listening on ``listen`` from this machine."""
    host, port = split_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class DaemonUrlError(ValueError):
    """A daemon address that cannot be used (a usage error, not an unreachable daemon)."""


def daemon_url(value: str, source: str = "--url") -> str:
    """The base URL for ``value``: ``http(s)://HOST[:PORT][/PATH]`` or a bare ``HOST:PORT``.

    A bare address is written the way ``http.listen`` is (``127.0.0.1:9731``,
    ``[::1]:9731``; ``0.0.0.0`` and ``::`` mean this machine) and must name its port.
    A URL with a scheme must be http or https and name a host; without a port it uses
    the scheme's (80, 443), as behind a reverse proxy.
    """
    text = value.strip()
    hint = "expected http(s)://HOST:PORT or HOST:PORT, e.g. http://127.0.0.1:9731"
    if "://" not in text:
        try:
            return url_from_listen(text)
        except ValueError:
            what = "invalid address" if ":" in text else "no port"
            raise DaemonUrlError(f"{source} {value!r}: {what}; {hint}") from None
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise DaemonUrlError(f"{source} {value!r}: not an http(s) URL; {hint}")
    try:
        _ = parts.port  # raises ValueError for a port that is not a number (or > 65535)
    except ValueError:
        raise DaemonUrlError(f"{source} {value!r}: invalid port; {hint}") from None
    if not parts.hostname:
        raise DaemonUrlError(f"{source} {value!r}: no host; {hint}")
    return text


class ApiClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise DaemonUnreachableError(
                f"cannot reach the stocksched daemon at {self.base_url}: "
                f"{exc or type(exc).__name__}"
            ) from None
        if resp.is_success:
            try:
                return resp.json()
            except ValueError:
                raise ApiError(
                    resp.status_code, "the answer is not JSON; is this URL a stocksched daemon?"
                ) from None
        raise ApiError(resp.status_code, _error_message(resp))

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", "/scheduler/status")
        return data

    def jobs(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._request("GET", "/scheduler/jobs")
        return data

    def job(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", f"/scheduler/jobs/{_seg(job_id)}")
        return data

    def runs(self, job_id: str, limit: int = 20) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._request(
            "GET", f"/scheduler/jobs/{_seg(job_id)}/runs", params={"limit": limit}
        )
        return data

    def trigger(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self._request("POST", f"/scheduler/jobs/{_seg(job_id)}/trigger")
        return data

    def pause(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self._request("POST", f"/scheduler/jobs/{_seg(job_id)}/stop")
        return data

    def resume(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self._request("POST", f"/scheduler/jobs/{_seg(job_id)}/start")
        return data

    def wait_for_run(
        self, job_id: str, run_id: str, timeout: float, max_poll_s: float = 1.0
    ) -> dict[str, Any] | None:
        """The run's history entry once it has finished; None if ``timeout`` passes first.

        Polls quickly at first (most runs are short), then backs off to ``max_poll_s``.
        """
        deadline = time.monotonic() + timeout
        poll = 0.05
        while True:
            for run in self.runs(job_id, limit=50):
                if run.get("run_id") == run_id:
                    return run
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
            poll = min(poll * 1.5, max_poll_s)


def _seg(job_id: str) -> str:
    return quote(job_id, safe="")


def _error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return resp.reason_phrase or "error"


# -- formatting ------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def fmt_time(value: str | None) -> str:
    """A time from the API for every table: always UTC, and each cell says so.

    ``2026-03-02 10:05:00 UTC``; a job's own zone is in its TIMEZONE column, not here.
    """
    if not value:
        return "-"
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return value
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{sec:02d}s"


def format_status(st: Mapping[str, Any]) -> str:
    state = "running" if st["running"] else "NOT RUNNING (scheduler thread stopped)"
    cfg = st["config"]
    sha = (cfg.get("sha256") or "")[:12] or "none"
    by = st["jobs_by_state"]
    lines = [
        f"stocksched {st['version']}: {state}, up {fmt_duration(st['uptime_s'])} "
        f"(since {fmt_time(st['started_at'])})",
        f"config:      {cfg['path']} (sha256 {sha}, {cfg['jobs']} jobs)",
        f"jobs:        {st['jobs_total']} total: " + ", ".join(f"{n} {s}" for s, n in by.items()),
        "last reload: " + _format_reload(st["last_reload"]),
    ]
    lines += [f"  {e}" for e in st["last_reload"]["errors"]]
    if isinstance(st.get("storage"), Mapping):
        lines.append("storage:     " + _format_storage(st["storage"]))
    replicas = st.get("replicas")
    if replicas is None and "replicas" in st:
        lines.append("replicas:    unknown (Redis unavailable)")
    elif replicas:
        keys = list(dict.fromkeys(k for r in replicas for k in r))
        lines += [
            "replicas:",
            table([k.upper() for k in keys], [[_cell(r.get(k)) for k in keys] for r in replicas]),
        ]
    return "\n".join(lines)


def _format_storage(storage: Mapping[str, Any]) -> str:
    if storage.get("up"):
        return "up"
    since = f" since {fmt_time(storage['since'])}" if storage.get("since") else ""
    reason = f" ({storage['reason']})" if storage.get("reason") else ""
    return f"DOWN{since}{reason}"


def _format_reload(rl: Mapping[str, Any]) -> str:
    when = fmt_time(rl.get("at"))
    if not rl["ok"]:
        return f"{when} FAILED, keeping the last good config:"
    return (
        f"{when} ok: added {rl['added']}, changed {rl['changed']}, "
        f"removed {rl['removed']}, unchanged {rl['unchanged']}"
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def format_jobs(jobs: Sequence[Mapping[str, Any]]) -> str:
    if not jobs:
        return "no jobs in the current config"
    rows = []
    for j in jobs:
        status = "disabled" if not j["enabled"] and not j["running"] else j["status"]
        result = (j.get("last_result") or {}).get("status", "-")
        rows.append(
            [
                j["job_id"],
                status,
                j["schedule"],
                j["timezone"],
                str(len(j["tickers"])),
                fmt_time(j.get("last_run")),
                result,
                fmt_time(j.get("next_run")),
            ]
        )
    return table(
        ["JOB", "STATUS", "SCHEDULE", "TIMEZONE", "TICKERS", "LAST RUN", "RESULT", "NEXT RUN"], rows
    )


RUNS_ERRORS_SHOWN = 3  # failing tickers listed under a run in `stocksched runs`
REASON_WIDTH = 60
ERROR_WIDTH = 100


def shorten(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with "..." when longer."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 3].rstrip() + "..."


def _failure_lines(run: Mapping[str, Any]) -> list[str]:
    """The first failing tickers with their error, indented under the run's row."""
    errors: Mapping[str, str] = run.get("errors") or {}
    failed = list(run.get("failed") or []) or sorted(errors)
    shown = failed[:RUNS_ERRORS_SHOWN]
    lines = ["  " + shorten(f"{t}: {errors.get(t) or 'failed'}", ERROR_WIDTH) for t in shown]
    if len(failed) > len(shown):
        lines.append(f"  +{len(failed) - len(shown)} more (--json lists every error)")
    return lines


def format_runs(runs: Sequence[Mapping[str, Any]]) -> str:
    """The runs table; under a run with failed tickers, the first few with their error."""
    if not runs:
        return "no runs recorded yet"
    rows = [
        [
            r["run_id"],
            r["trigger"],
            r["status"],
            fmt_time(r["started_at"]),
            fmt_duration(r["duration_s"]),
            str(len(r["fetched"])),
            str(len(r["failed"])),
            str(r["rows_stored"]),
            shorten(r.get("reason") or "", REASON_WIDTH),
        ]
        for r in runs
    ]
    header, *lines = _runs_table(rows).splitlines()
    out = [header]
    for run, line in zip(runs, lines, strict=True):
        out.append(line)
        out += _failure_lines(run)
    return "\n".join(out)


def _runs_table(rows: Sequence[Sequence[str]]) -> str:
    return table(
        [
            "RUN ID",
            "TRIGGER",
            "STATUS",
            "STARTED",
            "DURATION",
            "FETCHED",
            "FAILED",
            "ROWS",
            "REASON",
        ],
        rows,
    )


def format_run(run: Mapping[str, Any]) -> str:
    lines = [
        f"{run['job_id']} {run['run_id']}: {run['status']} in {run['duration_s']:.2f}s, "
        f"{len(run['fetched'])} fetched, {len(run['failed'])} failed, "
        f"{run['rows_stored']} rows stored"
    ]
    if run.get("reason"):
        lines.append(f"  reason: {run['reason']}")
    lines += [f"  {ticker}: {err}" for ticker, err in sorted(run["errors"].items())]
    return "\n".join(lines)


# -- commands --------------------------------------------------------------------------

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
        return read_token(Path(path)) if path else None

    def client(self, needs_token: bool) -> ApiClient:
        if needs_token:
            return ApiClient(self.url(), self.token())
        try:
            token = self.token()
        except TokenFileError:
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
    accepted = c.trigger(args.job_id)
    if not args.wait:
        _emit(args, accepted, f"{args.job_id}: run {accepted['run_id']} started", out)
        return EXIT_OK
    run = c.wait_for_run(args.job_id, accepted["run_id"], args.timeout)
    if run is None:
        sys.stderr.write(
            f"stocksched: run {accepted['run_id']} did not finish within "
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
    except ValueError as exc:  # TokenFileError included
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
