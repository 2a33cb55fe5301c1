"""End to end: `stocksched run` as a subprocess against a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from stocksched.storage import keys
from tests.conftest import RedisServer, free_port

pytestmark = pytest.mark.slow

JOBS = """\
version: 1
jobs:
  - id: demo-fast
    tickers: [AAA, BBB]
    schedule: "@every 1s"
    source: demo
    window: 10d
    ttl: 1h
"""


def wait_for(pred, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def start_daemon(
    tmp_path: Path,
    redis_url: str,
    *extra: str,
    env_extra: dict[str, str] | None = None,
    port: int | None = None,
) -> subprocess.Popen[str]:
    """`stocksched run` on the tmp jobs.yaml; its HTTP API on a free port (``proc.port``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSCHED_")}
    env["HOME"] = str(tmp_path / "home")  # nothing may be written to the user's home
    env.update(env_extra or {})
    port = port or free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stocksched",
            "run",
            "--jobs",
            str(tmp_path / "jobs.yaml"),
            "--redis-url",
            redis_url,
            "--shutdown-grace",
            "10",
            "--listen",
            f"127.0.0.1:{port}",
            *extra,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.port = port  # type: ignore[attr-defined]
    return proc


def test_run_stores_bars_and_history_then_exits_cleanly_on_sigterm(
    tmp_path: Path, redis_server: RedisServer, real_redis: redis.Redis
) -> None:
    (tmp_path / "jobs.yaml").write_text(JOBS)
    (tmp_path / "home").mkdir()
    proc = start_daemon(tmp_path, redis_server.url)
    try:
        wait_for(lambda: real_redis.xlen(keys.runs_key("demo-fast")) >= 2)
        latest = real_redis.get(keys.latest_key("scheduled_stock_data", "AAA"))
        assert latest and latest.startswith("scheduled_stock_data:AAA:")
        bars = json.loads(real_redis.get(latest) or "[]")
        assert bars and set(bars[0]) >= {"Date", "Open", "High", "Low", "Close", "Volume"}
        assert 0 < real_redis.ttl(latest) <= 3600
        record = json.loads(real_redis.get(keys.job_key("demo-fast")) or "{}")
        assert record["stock_ids"] == ["AAA", "BBB"] and record["spec"]["id"] == "demo-fast"
        state = real_redis.hgetall(keys.job_state_key("demo-fast"))  # the runtime fields
        assert state["last_run"] and state["next_run"]
        assert state["status"] in {"running", "completed"}
        entry = real_redis.xrevrange(keys.runs_key("demo-fast"), count=1)[0][1]
        assert entry["status"] == "success" and entry["trigger"] == "schedule"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert not any((tmp_path / "home").iterdir()), "wrote into $HOME"


def test_run_refuses_invalid_jobs_file(tmp_path: Path, redis_server: RedisServer) -> None:
    (tmp_path / "jobs.yaml").write_text("version: 1\njobs:\n  - id: x\n    schedule: nope\n")
    proc = start_daemon(tmp_path, "memory://")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "jobs.yaml:4:" in out and "Traceback" not in out


def test_live_reload_and_api_on_a_running_daemon(
    tmp_path: Path, redis_server: RedisServer, real_redis: redis.Redis
) -> None:
    import httpx

    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOBS)
    (tmp_path / "home").mkdir()
    proc = start_daemon(tmp_path, redis_server.url)
    base = f"http://127.0.0.1:{proc.port}"  # type: ignore[attr-defined]
    try:
        wait_for(lambda: _get(base + "/readyz") == 200)
        # An editor-style save adds a job: it goes live without a restart.
        tmp = tmp_path / ".jobs.yaml.swp"
        tmp.write_text(
            JOBS + "  - id: added-later\n    tickers: [CCC]\n"
            "    schedule: '@hourly'\n    source: demo\n"
        )
        tmp.replace(jobs)
        wait_for(
            lambda: (
                "added-later" in {j["job_id"] for j in httpx.get(base + "/scheduler/jobs").json()}
            )
        )
        # An invalid save is refused as a whole; the errors show in the status.
        jobs.write_text(jobs.read_text().replace("'@hourly'", "'@every never'"))
        wait_for(lambda: not httpx.get(base + "/scheduler/status").json()["last_reload"]["ok"])
        status = httpx.get(base + "/scheduler/status").json()
        assert any("jobs.yaml:" in e and "schedule" in e for e in status["last_reload"]["errors"])
        assert "added-later" in {j["job_id"] for j in httpx.get(base + "/scheduler/jobs").json()}
        # Pause over the API, restart the daemon: still paused.
        assert httpx.post(base + "/scheduler/jobs/demo-fast/stop").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    jobs.write_text(JOBS)
    proc = start_daemon(tmp_path, redis_server.url)
    base = f"http://127.0.0.1:{proc.port}"  # type: ignore[attr-defined]
    try:
        wait_for(lambda: _get(base + "/readyz") == 200)
        job = httpx.get(base + "/scheduler/jobs/demo-fast").json()
        assert job["paused"] is True and job["next_run"] is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out


def _get(url: str) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


SLOW_JOB = """\
version: 1
jobs:
  - id: slow
    tickers: [{tickers}]
    schedule: "@every 1s"
    source: demo
    window: 3650d
"""


@pytest.mark.parametrize(("grace", "finished"), [("30", True), ("0.2", False)])
def test_sigterm_drains_running_jobs_within_the_grace_period(
    tmp_path: Path,
    redis_server: RedisServer,
    real_redis: redis.Redis,
    grace: str,
    finished: bool,
) -> None:
    tickers = ", ".join(f"S{i:03d}" for i in range(30))  # one at a time: a run of seconds
    (tmp_path / "jobs.yaml").write_text(SLOW_JOB.format(tickers=tickers))
    (tmp_path / "home").mkdir()
    proc = start_daemon(
        tmp_path,
        redis_server.url,
        "--shutdown-grace",
        grace,
        env_extra={"STOCKSCHED_TICKER_CONCURRENCY": "1"},
    )
    try:
        wait_for(lambda: real_redis.hlen(keys.inflight_key("slow")) > 0)
        run_id = next(iter(real_redis.hkeys(keys.inflight_key("slow"))))
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    history = {f["run_id"]: f for _, f in real_redis.xrange(keys.runs_key("slow"))}
    assert len(history) == 1, history  # nothing new started after SIGTERM
    assert real_redis.hlen(keys.inflight_key("slow")) == 0  # recorded, lease released
    run = history[run_id]
    if finished:  # the run in progress finished within the grace period
        assert run["status"] == "success" and len(json.loads(run["fetched"])) == 30
    else:  # grace over: the run is ended, and what it did is kept and recorded
        assert run["status"] in {"partial_success", "failed"}
        assert "shutdown grace period over" in run["reason"]
        assert len(json.loads(run["failed"])) > 0
        assert "cancelled" in run["errors"]
