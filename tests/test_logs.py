"""Log lines as log shippers and the journal read them.

`--log-format json`: one JSON object per line with time, level, message, and job, run_id and
ticker where they apply. Under systemd (stderr is the stream $JOURNAL_STREAM names) text
lines omit the timestamp, which the journal adds, and carry a <N> priority prefix so that
`journalctl -p warning` can filter them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from stocksched.logs import (
    JsonFormatter,
    build_handler,
    is_journal_stream,
    syslog_priority,
)
from stocksched.settings import Settings, load_settings, mask_url, startup_summary
from tests.helpers import DEMO_JOBS, run_cli
from tests.servers import free_port
from tests.test_e2e import start_daemon

# Text lines start with the time in UTC, with its offset: the API's rule (issue 8, item 10).
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 ")
WHEN = datetime(2026, 3, 2, 10, 5, 0, 123000, tzinfo=UTC)


def _record(
    level: int = logging.INFO, msg: str = "run finished job=%s", args: Any = ("a",), **extra: Any
) -> logging.LogRecord:
    record = logging.LogRecord("stocksched.executor", level, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def _journal_env(stream: Any) -> dict[str, str]:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


@pytest.fixture
def new_york_local_time() -> Iterator[None]:
    """The host's local zone is New York (what a naive local asctime would show)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


# -- in process -----------------------------------------------------------------------------


def test_json_formatter_fields() -> None:
    line = JsonFormatter().format(_record(job="prices", run_id="prices:m1-ab", ticker="AAPL"))
    obj = json.loads(line)
    assert obj["level"] == "info" and obj["logger"] == "stocksched.executor"
    assert obj["message"] == "run finished job=a"
    assert (obj["job"], obj["run_id"], obj["ticker"]) == ("prices", "prices:m1-ab", "AAPL")
    assert datetime.fromisoformat(obj["time"]).utcoffset() == timedelta(0)


@pytest.mark.usefixtures("new_york_local_time")
def test_text_and_json_lines_give_the_time_in_utc_with_its_offset(tmp_path: Path) -> None:
    record = _record()
    record.created = WHEN.timestamp()
    with (tmp_path / "stderr").open("w") as stream:
        text = build_handler("text", stream, {}).format(record)
        line = build_handler("json", stream, {}).format(record)
    assert text == "2026-03-02T10:05:00.123+00:00 INFO stocksched.executor: run finished job=a"
    assert json.loads(line)["time"] == "2026-03-02T10:05:00.123+00:00"


def test_json_formatter_leaves_out_context_that_does_not_apply() -> None:
    obj = json.loads(JsonFormatter().format(_record(job="prices")))
    assert "job" in obj and "run_id" not in obj and "ticker" not in obj


def test_json_exception_stays_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = _record(logging.ERROR, "ticker crashed", (), exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "error" and "ValueError: boom" in obj["exception"]


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.DEBUG, 7),
        (logging.INFO, 6),
        (logging.WARNING, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
    ],
)
def test_syslog_priority(level: int, priority: int) -> None:
    assert syslog_priority(level) == priority


def test_journal_stream_must_name_our_stderr(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        assert is_journal_stream(a, _journal_env(a))
        assert not is_journal_stream(b, _journal_env(a))  # inherited from a parent
        assert not is_journal_stream(a, {})
        assert not is_journal_stream(a, {"JOURNAL_STREAM": "garbage"})
        assert not is_journal_stream(io.StringIO(), _journal_env(a))  # no descriptor


def _emit(handler: logging.Handler, record: logging.LogRecord, path: Path) -> str:
    handler.handle(record)
    handler.flush()
    return path.read_text()


def test_text_on_the_journal_has_priority_and_no_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        handler = build_handler("text", stream, _journal_env(stream))
        out = _emit(handler, _record(logging.WARNING, "ticker failed: %s", ("x\ny",)), path)
    # journald reads each line as an entry: every line carries the record's priority.
    assert out == "<4>WARNING stocksched.executor: ticker failed: x\n<4>y\n"


def test_text_elsewhere_keeps_the_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream, (tmp_path / "other").open("w") as other:
        handler = build_handler("text", stream, _journal_env(other))
        out = _emit(handler, _record(), path)
    assert TIMESTAMP.match(out), out
    assert out.endswith(" INFO stocksched.executor: run finished job=a\n")


def test_json_on_the_journal_is_prefixed_json(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        handler = build_handler("json", stream, _journal_env(stream))
        out = _emit(handler, _record(logging.ERROR, "x", ()), path)
    assert out.startswith("<3>{")
    assert json.loads(out[3:])["level"] == "error"


# -- the real commands ----------------------------------------------------------------------


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert lines, "no log lines"
    out = []
    for line in lines:
        obj = json.loads(line)  # every line is one object
        assert isinstance(obj, dict), line
        assert {"time", "level", "message"} <= set(obj), line
        assert obj["level"] in {"debug", "info", "warning", "error", "critical"}, line
        when = datetime.fromisoformat(obj["time"])
        assert abs(datetime.now(UTC) - when) < timedelta(minutes=5), line
        out.append(obj)
    return out


def test_run_job_json_logs_carry_job_run_id_and_ticker(tmp_path: Path, demo_jobs: Path) -> None:
    result = run_cli(
        "run-job",
        "demo-weekend",
        "--jobs",
        str(demo_jobs),
        "--redis-url",
        "memory://",
        "--log-format",
        "json",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    logs = _json_lines(result.stderr)
    tickers = [o for o in logs if o["message"].startswith("ticker failed")]
    assert {o["ticker"] for o in tickers} == {"AAA", "BBB"}
    run_ids = {o["run_id"] for o in logs if "run_id" in o}
    assert len(run_ids) == 1 and next(iter(run_ids)).startswith("demo-weekend:")
    assert all(o["job"] == "demo-weekend" and o["level"] == "warning" for o in tickers)
    (finished,) = [o for o in logs if o["message"].startswith("run finished")]
    assert finished["job"] == "demo-weekend" and "ticker" not in finished
    # The run's figures are keys of their own, not only words in the message.
    assert finished["status"] == "failed" and finished["trigger"] == "manual"
    assert (finished["fetched"], finished["failed"], finished["rows"]) == (0, 2, 0)
    assert finished["fresh"] == 0 and isinstance(finished["duration_s"], float)
    assert "slot" not in finished  # a manual run has none
    # The human summary stays on stdout, apart from the logs.
    assert result.stdout.startswith("demo-weekend demo-weekend:")


@pytest.mark.slow
def test_daemon_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text(DEMO_JOBS.replace('"@every 1h"', '"@every 1s"', 1))
    (tmp_path / "home").mkdir()
    proc = start_daemon(
        tmp_path,
        "memory://",
        "--log-format",
        "json",
        env_extra={"STOCKSCHED_STATE_DIR": str(tmp_path / "state")},
    )
    assert proc.stdout is not None
    head: list[str] = []
    try:
        for line in proc.stdout:  # stderr is merged into stdout
            head.append(line)
            if '"run finished' in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    logs = _json_lines("".join(head) + rest)
    runs = [o for o in logs if o["message"].startswith("run finished")]
    assert runs and all(o["job"] == "demo" and o["run_id"].startswith("demo:") for o in runs)
    scheduled = [o for o in runs if o["trigger"] == "schedule"]
    assert scheduled and all(o["slot"].endswith("+00:00") for o in scheduled)
    assert all(o["status"] == "success" and o["fetched"] >= 1 for o in scheduled)
    assert any(o["message"] == "stopped" for o in logs), rest
    # Third-party loggers (uvicorn's "Started server process") go through the same formatter.
    assert any(o["logger"].startswith("uvicorn") for o in logs), logs


def test_text_logs_omit_timestamp_on_the_journal(tmp_path: Path, demo_jobs: Path) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stderr:
        result = run_cli(
            "run-job",
            "demo",
            "--jobs",
            str(demo_jobs),
            "--redis-url",
            "memory://",
            cwd=tmp_path,
            env_extra=_journal_env(stderr),
            stderr=stderr,
        )
    assert result.returncode == 0
    lines = path.read_text().splitlines()
    assert lines, "no log lines"
    assert all(
        re.match(r"^<[2-7]>(INFO|WARNING|ERROR|DEBUG|CRITICAL) \S+: ", ln) for ln in lines
    ), lines
    assert any(
        ln.startswith("<6>INFO stocksched.executor: run finished job=demo ") for ln in lines
    ), lines


def test_text_logs_keep_timestamp_when_journal_stream_is_inherited(
    tmp_path: Path, demo_jobs: Path
) -> None:
    """A command run from a service's shell inherits JOURNAL_STREAM but writes elsewhere."""
    path = tmp_path / "stderr"
    with path.open("w") as stderr, (tmp_path / "journal").open("w") as journal:
        result = run_cli(
            "run-job",
            "demo",
            "--jobs",
            str(demo_jobs),
            "--redis-url",
            "memory://",
            cwd=tmp_path,
            env_extra={**_journal_env(journal), "TZ": "America/New_York"},
            stderr=stderr,
        )
    assert result.returncode == 0
    lines = path.read_text().splitlines()
    assert lines and all(TIMESTAMP.match(ln) for ln in lines), lines
    # UTC, not the host's New York time: the stamp is within minutes of now in UTC.
    when = datetime.fromisoformat(lines[0].split(" ", 1)[0])
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=5), lines[0]


# -- what the daemon says it runs with (issue 8, item 12) ------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:s3cret@host:6380/1", "rediss://user:***@host:6380/1"),
        ("redis://s3cret@host", "redis://***@host"),  # some clients read this as the password
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://:s3c@r/t?#x@host:1/0", "redis://:***@host:1/0"),  # unescaped @ / ? #
        ("unix://:s3cret@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        ("unix:///run/redis.sock?db=2&password=s3cret", "unix:///run/redis.sock?db=2&password=***"),
        ("redis://[::1]:6379?Password=s3cret&db=1", "redis://[::1]:6379?Password=***&db=1"),
        ("not a url s3cret", "***"),
    ],
)
def test_mask_url_hides_the_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert "s3c" not in mask_url(url)


def test_startup_summary_with_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert startup_summary(Settings(), "host-1-ab12") == (
        f"settings file none, defaults; jobs file {tmp_path / 'jobs.yaml'}; "
        "redis embedded (memory://), not persisted; replica id host-1-ab12; listen 127.0.0.1:9731"
    )


def test_startup_summary_names_the_settings_file_and_masks_the_url(tmp_path: Path) -> None:
    cfg = tmp_path / "stocksched.yaml"
    cfg.write_text(
        "redis_url: rediss://app:s3cret@redis.internal:6380/2\n"
        f"jobs: {tmp_path / 'etc' / 'jobs.yaml'}\n"
        "http: {listen: '[::1]:9800'}\n"
    )
    settings = load_settings(cfg, {})
    assert settings.config_file == cfg
    line = startup_summary(settings, "r1")
    assert line == (
        f"settings file {cfg}; jobs file {tmp_path / 'etc' / 'jobs.yaml'}; "
        "redis rediss://app:***@redis.internal:6380/2; replica id r1; listen [::1]:9800"
    )
    secret = tmp_path / "redis-password"
    env = {
        "STOCKSCHED_REDIS_URL": "redis://h:6379/0",
        "STOCKSCHED_REDIS_PASSWORD_FILE": str(secret),
    }
    line = startup_summary(load_settings(None, env, {"http.listen": "127.0.0.1:1"}), "r1")
    assert f"redis redis://h:6379/0 (password from {secret}); " in line
    assert line.startswith("settings file none, defaults; ")


PASSWORD = "pw-" + secrets.token_hex(8)


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[str]:
    """A private redis-server that requires a password; yields its URL with the password."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    (tmp_path / "redis").mkdir()
    proc = subprocess.Popen(
        [
            exe,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(tmp_path / "redis"), "--requirepass", PASSWORD),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port, password=PASSWORD, socket_timeout=0.5).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_daemon_startup_line_says_what_it_runs_with(tmp_path: Path, password_redis: str) -> None:
    (tmp_path / "jobs.yaml").write_text(DEMO_JOBS)
    (tmp_path / "home").mkdir()
    cfg = tmp_path / "stocksched.yaml"
    cfg.write_text("replica_id: trial-replica-1\n")
    proc = start_daemon(tmp_path, password_redis, "--config", str(cfg))
    assert proc.stdout is not None
    head: list[str] = []
    try:
        for line in proc.stdout:  # stderr is merged into stdout
            head.append(line)
            if " running: " in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    out = "".join(head) + rest
    assert proc.returncode == 0, out
    port = proc.port  # type: ignore[attr-defined]
    (line,) = [ln for ln in out.splitlines() if " starting stocksched " in ln]
    assert " INFO stocksched.daemon: " in line, line
    assert line.endswith(
        f"settings file {cfg}; jobs file {tmp_path / 'jobs.yaml'}; "
        f"redis {password_redis.replace(PASSWORD, '***')}; replica id trial-replica-1; "
        f"listen 127.0.0.1:{port}"
    ), line
    assert ":***@127.0.0.1:" in line
    assert PASSWORD not in out
