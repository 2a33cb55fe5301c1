"""Shared fixtures: a private real redis-server and a private 3-master Redis Cluster on free
loopback ports, and fakeredis. ``redis_server``/``real_redis`` run each test on both.

The real server is started by the tests themselves so they never touch another
process's data (a machine may have its own Redis on 6379).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from tests.cluster_servers import RedisClusterServers
from tests.servers import RedisServer, free_port

#: The real Redis deployments a test of ``redis_server``/``real_redis`` runs against;
#: ``STOCKSCHED_TEST_REDIS=single`` (or ``cluster``) runs one of them only.
REDIS_KINDS = os.environ.get("STOCKSCHED_TEST_REDIS", "single,cluster").split(",")
#: ``STOCKSCHED_TEST_CLUSTER_E2E=all`` runs every slow end-to-end test (daemon
#: subprocesses) on the cluster too; by default only those marked ``cluster_e2e`` do, the
#: rest on the single server: their Redis calls are the ones the fast tests already run on
#: both, and doubling every daemon test would take the suite past its 8 minutes.
CLUSTER_E2E_ALL = os.environ.get("STOCKSCHED_TEST_CLUSTER_E2E", "") == "all"
RealRedis = RedisServer | RedisClusterServers


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "single_redis(reason): runs on a single real redis-server only, not on the cluster too",
    )
    config.addinivalue_line(
        "markers",
        "cluster_e2e: a slow end-to-end test that runs on the cluster too by default",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the cluster variants of slow tests not marked ``cluster_e2e`` (see
    ``CLUSTER_E2E_ALL``)."""
    if CLUSTER_E2E_ALL:
        return
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        params = getattr(item, "callspec", None)
        on_cluster = params is not None and "cluster" in (
            params.params.get("redis_kind"),
            params.params.get("any_redis"),
        )
        slow = item.get_closest_marker("slow") is not None
        wanted = item.get_closest_marker("cluster_e2e") is not None
        (dropped if on_cluster and slow and not wanted else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def single_redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="stocksched-redis-") as d:
        server = RedisServer(port=free_port(), dir=Path(d))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A real 3-master Redis Cluster, started once for the session (tests/cluster_servers)."""
    with tempfile.TemporaryDirectory(prefix="stocksched-cluster-") as d:
        cluster = RedisClusterServers(dir=Path(d))
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(params=REDIS_KINDS)
def redis_kind(request: pytest.FixtureRequest) -> str:
    """Which real Redis a test runs against: every such test runs on both, unless it is
    marked ``single_redis(reason)`` (it needs one server: DEBUG SLEEP, CONFIG, a restart)."""
    kind = str(request.param)
    marker = request.node.get_closest_marker("single_redis")
    if kind == "cluster" and marker is not None:
        pytest.skip(f"single Redis only: {marker.args[0]}")
    return kind


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, redis_kind: str) -> RealRedis:
    """The real Redis of this test's kind: a single redis-server, or the 3-master cluster
    (its ``url`` is ``redis+cluster://...``)."""
    server: RealRedis = request.getfixturevalue(
        "redis_cluster" if redis_kind == "cluster" else "single_redis_server"
    )
    return server


@pytest.fixture
def real_redis(redis_server: RealRedis) -> Iterator[redis.Redis]:
    """A clean database on the private server or cluster (restarted if a test stopped it)."""
    yield from _clean_client(redis_server)


def _clean_client(server: RealRedis) -> Iterator[redis.Redis]:
    if not server.running:
        server.start()
    if isinstance(server, RedisClusterServers):
        server.flush()
    client = server.client()
    if not isinstance(server, RedisClusterServers):
        client.flushall()
    yield client
    client.close()


@pytest.fixture
def fake_redis() -> redis.Redis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture(params=["fake", *REDIS_KINDS])
def any_redis(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """Run a contract test against fakeredis, a real redis-server and a real cluster."""
    if request.param == "fake":
        yield fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
        return
    marker = request.node.get_closest_marker("single_redis")
    if request.param == "cluster" and marker is not None:
        pytest.skip(f"single Redis only: {marker.args[0]}")
    fixture = "redis_cluster" if request.param == "cluster" else "single_redis_server"
    yield from _clean_client(request.getfixturevalue(fixture))


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
