"""Issue 8, "data overwritten": every bar interval has its own window keys and :latest pointer
(daily bars keep the original design's keys), and jobs whose :latest pointers would fight are
warned about by `stocksched validate` and by the daemon when it applies the file."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import redis

from stocksched.reload import JobsReloader
from stocksched.storage.butler import DataIOButler
from tests.helpers import Rig, run_cli
from tests.test_storage import PREFIX, daily_frame, intraday_frame

ERROR_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<path>\S+): (?P<msg>.+)$")

CLASHING = """\
version: 1
defaults:
  source: demo
  schedule: "@every 1h"
jobs:
  - id: rolling-30
    tickers: [AAA, BBB, CCC, DDD, EEE]
    window: 30d
  - id: other-prefix
    tickers: [AAA]
    window: 5d
    prefix: elsewhere
  - id: rolling-10
    tickers: [ZZZ, EEE, DDD, CCC, BBB, AAA]
    window: 10d
"""


def clash_line(path: Path) -> str:
    return (
        f"{path}:13:5: jobs[2]: job 'rolling-10' writes EEE, DDD (+3 more) with interval 1d "
        "under prefix 'scheduled_stock_data' like jobs[0] (id 'rolling-30' on line 6) but with "
        "a different window (window 10d, not window 30d): their :latest pointers will "
        "alternate between the two windows"
    )


@pytest.fixture
def clashing(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(CLASHING)
    return path


# -- stocksched validate -------------------------------------------------------------------


def test_validate_warns_with_both_jobs_and_lines_and_exits_0(
    tmp_path: Path, clashing: Path
) -> None:
    result = run_cli("validate", str(clashing), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{clashing}: OK, 3 job(s)\n")
    assert result.stderr == f"warning: {clash_line(clashing)}\n"
    m = ERROR_LINE.match(result.stderr.removeprefix("warning: ").rstrip("\n"))
    assert m is not None
    assert (m["file"], m["line"], m["col"], m["path"]) == (str(clashing), "13", "5", "jobs[2]")


def test_validate_warns_once_per_pair_of_jobs_not_per_ticker(tmp_path: Path) -> None:
    tickers = ", ".join(f"T{i}" for i in range(500))
    path = tmp_path / "big.yaml"
    path.write_text(
        "version: 1\n"
        "defaults: {source: demo, schedule: '@daily'}\n"
        "jobs:\n"
        f"  - {{id: a, window: 30d, tickers: [{tickers}]}}\n"
        f"  - {{id: b, start: 2025-01-01, tickers: [{tickers}]}}\n"
    )
    result = run_cli("validate", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"warning: {path}:5:5: jobs[1]: job 'b' writes T0, T1 (+498 more) ")
    assert "like jobs[0] (id 'a' on line 4)" in line
    assert "(start 2025-01-01, not window 30d)" in line


def test_validate_json_lists_the_warnings_per_file(tmp_path: Path, clashing: Path) -> None:
    quiet = tmp_path / "quiet.yaml"
    quiet.write_text(CLASHING.replace("window: 10d", "window: 30d"))
    result = run_cli("validate", "--format", "json", str(clashing), str(quiet), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    warned, clean = json.loads(result.stdout)
    assert warned["valid"] is True and warned["warnings"] == [clash_line(clashing)]
    assert clean["valid"] is True and clean["warnings"] == []


def test_validate_exit_status_still_follows_the_errors(tmp_path: Path, clashing: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\njobs:\n  - id: x\n")
    result = run_cli("validate", str(clashing), str(bad), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"warning: {clash_line(clashing)}"
    assert all(line.startswith(f"{bad}:") for line in lines[1:]) and len(lines) > 1


# -- the daemon logs them when it applies the file ------------------------------------------


def test_reload_logs_each_warning_once(
    rig: Rig, clashing: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader = JobsReloader(clashing, rig.registry, rig.scheduler, rig.clock)
    caplog.set_level(logging.INFO, logger="stocksched.reload")

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "stocksched.reload" and r.levelno == logging.WARNING
        ]

    assert reloader.reload().ok
    assert warnings() == [f"config warning: {clash_line(clashing)}"]
    assert reloader.reload(force=False).ok  # the watcher seeing the same content again
    assert len(warnings()) == 1
    clashing.write_text(CLASHING.replace("window: 10d", "window: 30d"))
    assert reloader.reload(force=False).ok
    assert len(warnings()) == 1


# -- one transaction per interval, on a real server -----------------------------------------


@pytest.mark.redis
@pytest.mark.single_redis("the WATCH/MULTI write of a single Redis (a cluster's: test_cluster)")
def test_an_intraday_window_and_its_own_pointer_are_written_in_one_transaction(
    redis_server: Any, real_redis: redis.Redis
) -> None:
    from stocksched.storage.adapter import RedisAdapter

    butler = DataIOButler(RedisAdapter(real_redis))
    butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-10-14", "2025-10-21")
    watcher = redis_server.client()
    watcher.connection_pool.connection_kwargs["socket_timeout"] = 5
    commands: list[str] = []
    with watcher.monitor() as monitor:
        key = butler.save_data(
            intraday_frame(), PREFIX, "AAPL", "2025-10-14", "2025-10-21", interval="1h"
        )
        while not commands or commands[-1] != "EXEC":
            command = monitor.next_command()["command"]
            commands.append(" ".join(command.split()[:2]))
    watcher.close()
    pointer = f"{PREFIX}:AAPL:1h:latest"
    assert key == f"{PREFIX}:AAPL:1h:2025-10-14:2025-10-21"
    multi = commands.index("MULTI")
    assert commands[:multi] == [f"WATCH {pointer}", f"GET {pointer}"]
    assert commands[multi:] == ["MULTI", f"SET {key}", f"SET {pointer}", "EXEC"]
    assert real_redis.get(f"{PREFIX}:AAPL:latest") == f"{PREFIX}:AAPL:2025-10-14:2025-10-21"
