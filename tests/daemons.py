"""Daemons as subprocesses on a private redis-server, and reads of what they wrote.

Shared by the end-to-end tests: ``launch`` starts ``stocksched run`` on
``tmp_path/jobs.yaml``; ``wait_for`` polls with a deadline and fails at once, with the
daemon's log, if a watched daemon exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from stocksched.clock import SystemClock
from stocksched.model import RunResult, ScheduledJob, with_state
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.cluster import is_cluster
from stocksched.storage.inflight import InflightRecords
from tests.servers import RedisServer, free_port

T = TypeVar("T")


# A job that never comes due during a test: for tests about the daemon, not its runs.
HOURLY_DEMO_JOBS = """\
version: 1
jobs:
  - id: demo
    tickers: [AAA]
    schedule: "@every 1h"
    source: demo
    window: 5d
"""


# -- daemons ----------------------------------------------------------------------------


@dataclass
class Replica:
    """One `stocksched run` subprocess; its output goes to a file, so it never blocks."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=15) as resp:
            return json.loads(resp.read())

    def ready(self) -> bool:
        try:
            self.request("/readyz")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return True

    def has_config(self, sha: str) -> bool:
        """This daemon has applied (reconciled and scheduled) the jobs file with this sha256."""
        return bool(self.request("/scheduler/status")["config"]["sha256"] == sha)

    def replica_ids(self) -> set[str]:
        return {r["replica_id"] for r in self.request("/scheduler/status")["replicas"] or []}

    def stop(self) -> str:
        """SIGTERM and wait: a replica must always shut down cleanly."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        out = self.output()
        assert self.proc.returncode == 0, out
        assert "Traceback" not in out, out
        return out


Launch = Callable[..., Replica]


@pytest.fixture
def launch(tmp_path: Path, redis_server: RedisServer) -> Iterator[Launch]:
    """Start daemons on ``tmp_path/jobs.yaml``; any still running at the end are killed."""
    (tmp_path / "home").mkdir()
    started: list[Replica] = []

    def start(
        name: str,
        *,
        env: dict[str, str] | None = None,
        config: Path | None = None,
        redis_url: str | None = None,
        listen_host: str = "127.0.0.1",
        preexec_fn: Callable[[], None] | None = None,
    ) -> Replica:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSCHED_")}
        full_env["HOME"] = str(tmp_path / "home")
        full_env["STOCKSCHED_STATE_DIR"] = str(tmp_path / "state" / name)
        full_env.update(env or {})
        port = free_port()
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stocksched",
                    "run",
                    *(["--config", str(config)] if config else []),
                    "--jobs",
                    str(tmp_path / "jobs.yaml"),
                    "--redis-url",
                    redis_url or redis_server.url,
                    "--shutdown-grace",
                    "10",
                    "--listen",
                    f"{listen_host}:{port}",
                ],
                cwd=tmp_path,
                env=full_env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec_fn,  # e.g. resource limits, set in the child only
            )
        replica = Replica(name, proc, port, log_path)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        if replica.proc.poll() is None:
            replica.proc.kill()
            replica.proc.wait(timeout=10)


def wait_for(
    pred: Callable[[], T | None], timeout: float = 30.0, *, alive: Sequence[Replica] = ()
) -> T:
    """Poll ``pred`` until truthy; fail early (with the log) if a watched daemon exits."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        for replica in alive:
            if replica.proc.poll() is not None:
                raise AssertionError(
                    f"daemon {replica.name} exited with "
                    f"{replica.proc.returncode}:\n{replica.output()}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {r.name}\n{r.output()[-3000:]}" for r in alive)
            raise AssertionError(f"condition not met in {timeout}s\n{logs}")
        time.sleep(0.05)


def wait_ready(*replicas: Replica) -> None:
    for replica in replicas:
        wait_for(replica.ready, 45, alive=[replica])


# -- Redis reads --------------------------------------------------------------------------


def history(client: redis.Redis, job_id: str) -> list[RunResult]:
    return [RunResult.from_fields(job_id, f) for _, f in client.xrange(keys.runs_key(job_id))]


def record(client: redis.Redis, job_id: str) -> dict[str, Any]:
    """The job record as the README's layout describes it: the JSON with the runtime
    fields of its state hash laid over; it must always parse (never half-written)."""
    raw = client.get(keys.job_key(job_id))
    assert raw is not None, f"no record for {job_id}"
    state: dict[str, str] = client.hgetall(keys.job_state_key(job_id))
    data: dict[str, Any] = with_state(json.loads(str(raw)), state)
    ScheduledJob.from_dict(data)  # and it is a valid record, not just JSON
    return data


def find(client: redis.Redis, job_id: str, run_id: str) -> RunResult | None:
    return next((r for r in history(client, job_id) if r.run_id == run_id), None)


def assert_no_leftovers(client: redis.Redis, job_id: str) -> None:
    """Every run ended: no in-flight record, no running lease, nothing in the scan index."""
    assert client.hgetall(keys.inflight_key(job_id)) == {}
    assert client.exists(keys.running_key(job_id)) == 0
    if is_cluster(client):  # there the crash scan prunes the index: one scan finds nothing
        assert InflightRecords(RedisAdapter(client), SystemClock()).take_interrupted() == []
    assert job_id not in client.smembers(keys.inflight_index_key())
