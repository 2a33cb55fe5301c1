"""Shared fixtures: a private real redis-server on a free loopback port, and fakeredis.

The real server is started by the tests themselves so they never touch another
process's data (a machine may have its own Redis on 6379).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server subprocess the tests own; can be stopped and restarted on its port."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="stocksched-redis-") as d:
        server = RedisServer(port=free_port(), dir=Path(d))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def real_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A clean database on the private server (restarted if a test stopped it)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def fake_redis() -> redis.Redis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture(params=["fake", "real"])
def any_redis(request: pytest.FixtureRequest) -> redis.Redis:
    """Run a contract test against both fakeredis and a real redis-server."""
    if request.param == "fake":
        return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    client: redis.Redis = request.getfixturevalue("real_redis")
    return client


@pytest.fixture
def rig(fake_redis: redis.Redis) -> Iterator[Any]:
    """A registry + executor + scheduler on fakeredis with a fake clock (tests.helpers.Rig)."""
    from datetime import UTC, datetime

    from tests.fakes import FakeClock
    from tests.helpers import Rig

    r = Rig(fake_redis, FakeClock(datetime(2026, 3, 2, 10, 2, tzinfo=UTC)))
    yield r
    r.scheduler.stop(1)


@pytest.fixture
def demo_jobs(tmp_path: Path) -> Path:
    """A jobs.yaml with a demo job and a demo job whose window has no bars (weekend)."""
    from tests.helpers import DEMO_JOBS

    path = tmp_path / "jobs.yaml"
    path.write_text(DEMO_JOBS)
    return path
