"""Shared fixtures: a private real redis-server on a free loopback port, and fakeredis.

The real server is started by the tests themselves so they never touch another
process's data (a machine may have its own Redis on 6379).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from tests.servers import RedisServer, free_port


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


# The `launch` fixture (daemon subprocesses) is shared by every end-to-end test module.
from tests.daemons import launch  # noqa: E402

__all__ = ["RedisServer", "free_port", "launch"]
