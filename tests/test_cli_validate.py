"""`stocksched validate` and `stocksched run-job` as a user, a pre-commit hook or CI calls them.

Their exit codes are the contract scripts rely on: validate 0 valid / 1 errors / 2 usage;
run-job 0 success / 1 failed / 2 unknown job / 3 partial success.
"""

from __future__ import annotations

import json
import os
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from stocksched import cli
from stocksched.cli.validate import next_fires
from stocksched.exitcodes import EXIT_PIPE
from stocksched.jobs import load_jobs_file
from stocksched.sources import DemoFetcher, PermanentFetchError
from tests.helpers import DEMO_JOBS, run_cli

ROOT = Path(__file__).resolve().parents[1]
REPO_JOBS = ROOT / "jobs.yaml"
ERROR_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<path>\S+): (?P<msg>.+)$")


BAD_JOBS = """\
version: 1
jobs:
  - id: prices
    tickers: [AAPL]
    schedule: "61 * * * *"
  - id: other
    tickrs: [MSFT]
    schedule: "@daily"
    timezone: Mars/Olympus
"""


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_JOBS)
    return path


# -- validate: a good file ------------------------------------------------------------------


def _fire_times(stdout: str) -> dict[str, list[datetime]]:
    """Job id -> the `next:` times printed under it."""
    out: dict[str, list[datetime]] = {}
    current = ""
    for line in stdout.splitlines():
        if m := re.match(r"^  (\S+?)(?: \(disabled\))?: ", line):
            current = m.group(1)
            out[current] = []
        elif m := re.match(r"^    next \([^)]+\): (\S+)$", line):
            out[current].append(datetime.fromisoformat(m.group(1)))
    return out


def test_validate_repo_jobs_yaml_shows_next_three_fire_times_in_the_jobs_zone(
    tmp_path: Path,
) -> None:
    result = run_cli("validate", str(REPO_JOBS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    specs = {job.id: job for job in load_jobs_file(REPO_JOBS).jobs}
    assert result.stdout.startswith(f"{REPO_JOBS}: OK, {len(specs)} job(s)\n")
    times = _fire_times(result.stdout)
    assert set(times) == set(specs)
    now = datetime.now(ZoneInfo("UTC"))
    for job_id, fires in times.items():
        spec = specs[job_id]
        assert f"  {job_id}: {spec.schedule!r} in {spec.timezone}" in result.stdout
        assert f"    next ({spec.timezone}): " in result.stdout  # the zone the times are in
        assert len(fires) == 3, (job_id, fires)
        assert now - timedelta(seconds=5) < fires[0] < fires[1] < fires[2]
        for t in fires:  # written in the job's zone, with the offset that zone has then
            assert t.utcoffset() == t.astimezone(spec.zone).utcoffset(), (job_id, t)
    # The repo's daily job: 17:00 New York time, weekdays only, whatever the season.
    for t in times["daily-tech"]:
        local = t.astimezone(ZoneInfo("America/New_York"))
        assert (local.hour, local.minute) == (17, 0) and local.weekday() < 5, t
        assert t.utcoffset() == local.utcoffset()


def test_validate_count_and_disabled_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(DEMO_JOBS.replace("    window: 10d\n", "    window: 10d\n    enabled: false\n"))
    result = run_cli("validate", "--count", "1", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "  demo (disabled): " in result.stdout
    times = _fire_times(result.stdout)
    assert times["demo"] == []  # a disabled job never fires
    assert len(times["demo-weekend"]) == 1


# -- validate: bad and missing files --------------------------------------------------------


def test_validate_bad_file_reports_every_error_with_position(
    tmp_path: Path, bad_file: Path
) -> None:
    result = run_cli("validate", str(bad_file), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    parsed = [ERROR_LINE.match(line) for line in lines]
    assert all(parsed), lines
    where = {(m["line"], m["path"]) for m in parsed if m}
    assert all(m["file"] == str(bad_file) for m in parsed if m)
    assert ("5", "jobs[0].schedule") in where
    assert ("7", "jobs[1].tickrs") in where
    assert ("9", "jobs[1].timezone") in where
    assert ("6", "jobs[1].tickers") in where  # required, reported where the job starts
    assert len(lines) == 4, lines


def test_validate_reads_standard_input_for_a_dash(tmp_path: Path) -> None:
    """``git show HEAD:jobs.yaml | stocksched validate -`` checks what the pipe carries."""
    import subprocess
    import sys

    def validate(text: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSCHED_")}
        return subprocess.run(
            [sys.executable, "-m", "stocksched", "validate", *args],
            input=text,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=60,
        )

    good = validate(REPO_JOBS.read_text(), "-")
    assert good.returncode == 0 and good.stdout.startswith("<stdin>: OK, ")
    bad = validate(BAD_JOBS, "-", "--format", "json")
    assert bad.returncode == 1
    (entry,) = json.loads(bad.stdout)
    assert entry["file"] == "<stdin>" and not entry["valid"]
    assert "<stdin>:5:15: jobs[0].schedule: invalid cron expression" in entry["errors"][0]
    twice = validate("", "-", "-")
    assert twice.returncode == 2 and "'-' (standard input) can be given once" in twice.stderr


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("version: 1\njobs:\n\t- id: a\n", "3:1"),  # a tab as the indentation
        ("version: 1\njobs:\n  - id: a\n\t  tickers: [A]\n", "4:1"),  # inside a mapping
    ],
)
def test_validate_names_a_tab_as_a_tab(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    result = run_cli("validate", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        f"{path}:{where}: invalid YAML: a tab character: YAML indents with spaces only, "
        "never tabs (replace it)\n"
    )


def test_validate_yaml_syntax_error_has_a_position(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text("version: 1\njobs:\n  - id: a\n    schedule: [\n")
    result = run_cli("validate", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+:\d+: invalid YAML: .+\n", result.stderr)


def test_validate_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    result = run_cli("validate", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "nope.yaml: file not found\n"
    assert result.stdout == ""


def test_validate_several_files_checks_them_all(tmp_path: Path, bad_file: Path) -> None:
    good = tmp_path / "jobs.yaml"
    good.write_text(DEMO_JOBS)
    result = run_cli("validate", str(good), str(bad_file), "missing.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{good}: OK, 2 job(s)\n")
    errors = result.stderr.splitlines()
    assert len(errors) == 5, errors
    assert sum(line.startswith(f"{bad_file}:") for line in errors) == 4
    assert errors[-1] == "missing.yaml: file not found"

    both_good = run_cli("validate", str(good), str(REPO_JOBS), cwd=tmp_path)
    assert both_good.returncode == 0, both_good.stderr
    assert f"{good}: OK" in both_good.stdout and f"{REPO_JOBS}: OK" in both_good.stdout


# -- validate --format json -----------------------------------------------------------------


def test_validate_json_output_shape(tmp_path: Path, bad_file: Path) -> None:
    good = tmp_path / "jobs.yaml"
    good.write_text(DEMO_JOBS)
    result = run_cli(
        "validate", "--format", "json", str(good), str(bad_file), "missing.yaml", cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert [entry["file"] for entry in report] == [str(good), str(bad_file), "missing.yaml"]
    ok, bad, missing = report
    assert ok["valid"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", ok["sha256"])
    assert [job["id"] for job in ok["jobs"]] == ["demo", "demo-weekend"]
    job = ok["jobs"][0]
    assert set(job) == {"id", "schedule", "timezone", "calendar", "enabled", "tickers", "next"}
    assert job["calendar"] is None
    assert job["schedule"] == "@every 1h" and job["timezone"] == "UTC"
    assert job["enabled"] is True and job["tickers"] == ["AAA", "BBB"]
    assert len(job["next"]) == 3
    assert all(datetime.fromisoformat(t).utcoffset() == timedelta(0) for t in job["next"])
    assert bad["valid"] is False and len(bad["errors"]) == 4
    assert all(ERROR_LINE.match(e) for e in bad["errors"]), bad["errors"]
    assert missing == {
        "file": "missing.yaml",
        "valid": False,
        "errors": ["missing.yaml: file not found"],
    }


def test_validate_json_exit_zero_when_all_valid(tmp_path: Path) -> None:
    result = run_cli("validate", "--format", "json", str(REPO_JOBS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert entry["valid"] is True and entry["file"] == str(REPO_JOBS)


# -- validate: usage ------------------------------------------------------------------------


def test_validate_help_documents_exit_codes(tmp_path: Path) -> None:
    result = run_cli("validate", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "Exit 0: all valid" in text
    assert "1: at least one file is invalid, missing or unreadable" in text
    assert "FILE:LINE:COL: path: message" in text
    assert "2: usage error" in text
    assert "--format {text,json}" in text


@pytest.mark.parametrize("args", [[], ["--format", "xml", "jobs.yaml"], ["--count", "x", "f"]])
def test_validate_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = run_cli("validate", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: stocksched validate" in result.stderr
    assert "Traceback" not in result.stderr


# -- run-job --------------------------------------------------------------------------------


def test_run_job_success_exits_0(tmp_path: Path, demo_jobs: Path) -> None:
    result = run_cli(
        "run-job",
        "demo",
        "--jobs",
        str(demo_jobs),
        "--redis-url",
        "memory://",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["job_id"] == "demo" and out["status"] == "success"
    assert out["trigger"] == "manual"
    assert out["fetched"] == ["AAA", "BBB"] and out["rows_stored"] > 0  # typed, not strings


def test_run_job_all_tickers_failed_exits_1(tmp_path: Path, demo_jobs: Path) -> None:
    result = run_cli(
        "run-job",
        "demo-weekend",
        "--jobs",
        str(demo_jobs),
        "--redis-url",
        "memory://",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert "demo-weekend" in result.stdout and ": failed in " in result.stdout
    assert "  AAA: no data for 2024-01-06..2024-01-07" in result.stdout
    assert "Traceback" not in result.stderr


def test_run_job_unknown_job_exits_2_with_the_known_ids(tmp_path: Path, demo_jobs: Path) -> None:
    result = run_cli(
        "run-job", "nope", "--jobs", str(demo_jobs), "--redis-url", "memory://", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"stocksched: no job 'nope' in {demo_jobs} (jobs: demo, demo-weekend)\n"
    )
    assert result.stdout == ""


def test_run_job_invalid_jobs_file_exits_1(tmp_path: Path, bad_file: Path) -> None:
    result = run_cli(
        "run-job", "prices", "--jobs", str(bad_file), "--redis-url", "memory://", cwd=tmp_path
    )
    assert result.returncode == 1
    assert all(ERROR_LINE.match(line) for line in result.stderr.splitlines()), result.stderr


class _FailsOne(DemoFetcher):
    """Demo bars, except for one ticker: what a delisted symbol looks like to a run."""

    def fetch_from_source(self, ticker: str, start: date, end: date, interval: str) -> pd.DataFrame:
        if ticker == "BBB":
            raise PermanentFetchError(ticker, "no such symbol")
        return super().fetch_from_source(ticker, start, end, interval)


def test_run_job_partial_success_exits_3(
    tmp_path: Path,
    demo_jobs: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In-process: the demo source cannot fail one ticker only, and Yahoo would need network."""
    from stocksched import daemon, logs

    real = daemon.Components

    def components(settings: Any) -> Any:
        return real(settings, fetchers={"demo": _FailsOne(), "yahoo": _FailsOne()})

    monkeypatch.setattr(daemon, "Components", components)
    monkeypatch.setattr(logs, "configure_logging", lambda *a, **k: None)  # keep pytest's
    for name in [k for k in os.environ if k.startswith("STOCKSCHED_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["run-job", "demo", "--jobs", str(demo_jobs), "--redis-url", "memory://"])
    out = capsys.readouterr().out
    assert code == 3, out
    assert ": partial_success in " in out and "1 fetched, 1 failed" in out
    assert "  BBB: no such symbol" in out


def test_top_level_help_documents_exit_codes(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    text = " ".join(result.stdout.split())
    assert result.returncode == 0
    assert (
        "Exit codes: 0 ok, 1 invalid config / failed run, 2 usage error, "
        "3 partial success (run-job)"
    ) in text


@pytest.mark.parametrize(
    "flags",
    [
        ["--redis-url", "bogus://x"],
        ["--redis-url", "memory://", "--listen", "0.0.0.0:9"],  # public bind without a token
        ["--redis-url", "memory://", "--listen", "nonsense"],
        ["--config", "/nonexistent/stocksched.yaml"],
    ],
)
def test_run_with_bad_settings_exits_2_with_one_clear_message(
    tmp_path: Path, flags: list[str]
) -> None:
    proc = run_cli("run", "--jobs", str(REPO_JOBS), *flags, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip()


# -- validate: issue 8, item 9 ------------------------------------------------------------------

CALENDAR_JOBS = """\
version: 1
jobs:
  - id: nyse-noon
    tickers: [AAPL]
    schedule: "0 12 * * *"
    timezone: America/New_York
    calendar: XNYS
  - id: every-noon
    tickers: [AAPL]
    schedule: "0 12 * * *"
    timezone: America/New_York
"""


def test_validate_preview_skips_days_the_exchange_is_closed(tmp_path: Path) -> None:
    import exchange_calendars

    path = tmp_path / "jobs.yaml"
    path.write_text(CALENDAR_JOBS)
    result = run_cli("validate", "--count", "10", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = lines.index("  nyse-noon: '0 12 * * *' in America/New_York, 1 ticker(s)")
    assert lines[at + 1] == "    calendar XNYS: closed days skipped"
    assert lines[at + 2].startswith("    next (America/New_York): ")
    assert "calendar" not in result.stdout.split("  every-noon:")[1]
    times = _fire_times(result.stdout)
    xnys = exchange_calendars.get_calendar("XNYS")
    assert len(times["nyse-noon"]) == 10
    for t in times["nyse-noon"]:
        assert t.weekday() < 5 and xnys.is_session(t.date().isoformat()), t
    # Without a calendar the same schedule fires every day, weekends included.
    assert {t.weekday() for t in times["every-noon"]} >= {5, 6}


def test_next_fires_jumps_over_weekends_and_holidays() -> None:
    from stocksched.calendars import MarketCalendars

    ny = ZoneInfo("America/New_York")
    calendars = MarketCalendars()
    noon = _spec("0 12 * * *")
    friday = datetime(2025, 12, 19, 18, 0, tzinfo=ny)
    fires = next_fires(noon, friday, 5, calendars)
    # Weekend 20-21, Christmas 25 and the weekend 27-28 are closed.
    assert [t.astimezone(ny).day for t in fires] == [22, 23, 24, 26, 29]
    # Every minute, from a Saturday: the first is Monday's first minute, found at once.
    saturday = datetime(2025, 12, 20, 10, 0, tzinfo=ny)
    every_minute = next_fires(_spec("* * * * *"), saturday, 2, calendars)
    assert [t.astimezone(ny) for t in every_minute] == [
        datetime(2025, 12, 22, 0, 0, tzinfo=ny),
        datetime(2025, 12, 22, 0, 1, tzinfo=ny),
    ]
    # A schedule that never meets an open day shows nothing, and ends.
    assert next_fires(_spec("0 12 * * 6"), saturday, 3, calendars) == []


def _spec(schedule: str) -> Any:
    from tests.helpers import make_spec

    return make_spec(schedule=schedule, timezone="America/New_York", calendar="XNYS")


@pytest.mark.parametrize("count", ["0", "-1", "101", "100000"])
def test_validate_count_is_bounded(tmp_path: Path, count: str) -> None:
    result = run_cli("validate", "--count", count, str(REPO_JOBS), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: stocksched validate" in result.stderr
    assert f"argument --count: must be between 1 and 100, got {int(count)}" in result.stderr


def test_validate_count_100_is_accepted(tmp_path: Path) -> None:
    result = run_cli("validate", "--count", "100", str(REPO_JOBS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert all(len(t) == 100 for t in _fire_times(result.stdout).values())


def test_validate_into_a_pipe_closed_early_exits_quietly(tmp_path: Path) -> None:
    """`stocksched validate ... | head -1`: no traceback, and not 1 ("invalid file")."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSCHED_")}
    # Far more output than a pipe buffers, so the command is still writing when we stop.
    files = [str(REPO_JOBS)] * 200
    proc = subprocess.Popen(
        [sys.executable, "-m", "stocksched", "validate", "--count", "100", *files],
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert first.decode().startswith(f"{REPO_JOBS}: OK")
    assert code == EXIT_PIPE == 141
    assert err == ""
