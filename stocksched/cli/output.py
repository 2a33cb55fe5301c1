"""Text for people: the tables and lines the CLI prints for the API's answers.

Every time is shown in UTC and says so; ``--json`` prints the API's answer instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from stocksched.logs import one_line


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
    flat = one_line(text)
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
