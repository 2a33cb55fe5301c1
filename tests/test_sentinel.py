"""Redis Sentinel: ``redis+sentinel://`` URLs, and a client that follows failovers.

Against real processes (tests/servers.py ``SentinelGroup``: a master, a replica, three
sentinels): writes go to the master; after ``SENTINEL FAILOVER``, or the master killed,
they land on the promoted replica; a demoted master answering ``READONLY`` makes the
client ask the sentinels again. The daemon itself rides a failover mid-run of an
``@every 1s`` job with every slot run at most once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import redis

from stocksched.model import RunResult, RunStatus
from stocksched.settings import mask_url
from stocksched.storage.adapter import StorageError, _client_options, connect, storage_errors
from stocksched.storage.sentinel import (
    MASTER_CHECK_S,
    SentinelURL,
    parse_sentinel_url,
    sentinel_client,
)
from tests.daemons import Launch, history, wait_for, wait_ready
from tests.servers import RedisServer, SentinelGroup


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A fresh group per test: after a failover the old master takes Sentinel some 8 s to
    reconfigure as a replica, longer than starting a new group (about 2 s)."""
    g = SentinelGroup(tmp_path / "sentinel")
    g.start()
    try:
        yield g
    finally:
        g.stop()


# -- URLs ------------------------------------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_db() -> None:
    url = "redis+sentinel://:pw@10.0.0.1:26380,10.0.0.2,[::1]:5000/cache/3?sentinel_password=s"
    assert parse_sentinel_url(url) == SentinelURL(
        sentinels=(("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 5000)),
        master="cache",
        db=3,
        password="pw",
        sentinel_password="s",
    )
    assert parse_sentinel_url("redis+sentinel://h:1/m").db == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel:///mymaster", "names no sentinel host"),
        ("redis+sentinel://h:26379", "names no master"),
        ("redis+sentinel://h:26379/", "names no master"),
        ("redis+sentinel://h:abc/mymaster", "bad port 'abc' for sentinel h"),
        ("redis+sentinel://h:1,h:70000/mymaster", "bad port '70000' for sentinel h"),
        ("redis+sentinel://h:1/mymaster/zero", "db must be a number >= 0, got 'zero'"),
        ("redis+sentinel://h:1/mymaster?socket_timeout=soon", "socket_timeout must be seconds"),
        ("redis+sentinel://h:1/mymaster?ssl=1", "unknown option 'ssl'"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_saying_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="redis\\+sentinel URL") as err:
        connect(url)
    assert message in str(err.value)


def test_the_daemon_reports_a_bad_sentinel_url_as_a_settings_error(tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text("version: 1\njobs: []\n")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "stocksched", "run", "--jobs", str(tmp_path / "jobs.yaml")),
            *("--redis-url", "redis+sentinel://127.0.0.1:1/mymaster/x"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "stocksched: redis_url: redis+sentinel URL: db must be a number >= 0, got 'x'"
    )
    assert "Traceback" not in done.stderr


def test_the_startup_log_masks_both_passwords_of_a_sentinel_url() -> None:
    url = "redis+sentinel://:pw@h:1,h:2/m/0?sentinel_password=sp&socket_timeout=1"
    assert mask_url(url) == (
        "redis+sentinel://:***@h:1,h:2/m/0?sentinel_password=***&socket_timeout=1"
    )


def test_a_password_in_the_url_and_in_a_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    with pytest.raises(ValueError, match="in the URL or in a password file, not both"):
        connect("redis+sentinel://:pw@h:1/m", secret)


# -- following the master --------------------------------------------------------------------


def test_writes_go_to_the_master_and_after_sentinel_failover_to_the_new_one(
    group: SentinelGroup,
) -> None:
    client = connect(group.url)
    old = group.master()
    client.set("sentinel:f", "before")
    assert old.client().get("sentinel:f") == "before"
    assert client.execute_command("ROLE")[0] == "master"
    new_port = group.failover()
    # The old master keeps its connections for seconds after the switch; the client
    # asks the sentinels at least this often, and then drops them.
    time.sleep(MASTER_CHECK_S)
    client.set("sentinel:f", "after")
    new = group.master()
    assert new.port == new_port != old.port
    assert new.client().get("sentinel:f") == "after"


def test_after_the_master_is_killed_writes_resume_on_the_promoted_replica(
    group: SentinelGroup,
) -> None:
    client = connect(group.url)
    client.set("sentinel:k", "before")
    old, survivor = group.master(), group.replica()
    wait_for(lambda: survivor.client().get("sentinel:k") == "before", 10)
    old.stop()
    assert wait_for(lambda: _try_set(client, "sentinel:k", "after"), 30)
    group.wait_master(survivor.port)
    assert survivor.client().get("sentinel:k") == "after"


def _try_set(client: redis.Redis, key: str, value: str) -> bool:
    try:
        with storage_errors("SET", key):
            return bool(client.set(key, value))
    except StorageError:
        return False  # no master yet: the sentinels are still failing over


def _set(client: redis.Redis, key: str, value: str) -> None:
    client.set(key, value)


def _script(client: redis.Redis, key: str, value: str) -> None:
    client.register_script("return redis.call('SET', KEYS[1], ARGV[1])")(keys=[key], args=[value])


def _transaction(client: redis.Redis, key: str, value: str) -> None:
    def body(pipe: redis.client.Pipeline) -> None:
        pipe.get(key)  # immediate mode, after WATCH, on the old master: it can still read
        pipe.multi()
        pipe.set(key, value)

    client.transaction(body, key)


def test_a_demoted_master_answering_readonly_makes_the_client_ask_the_sentinels_again(
    group: SentinelGroup,
) -> None:
    """A plain write, a Lua script and a WATCH/MULTI transaction (the three ways the
    storage classes write), each sent on a pooled connection to a master just demoted."""
    # Asked only when a connection opens (or READONLY closes one): what is tested here.
    client = sentinel_client(group.url, None, _client_options(via_sentinel=True), 3600)
    for write in (_set, _script, _transaction):
        old = group.master()
        write(client, "sentinel:ro", "before")  # a pooled connection to the master, now idle
        assert old.client().get("sentinel:ro") == "before"
        errors_before = _readonly_errors(old)
        new = group.switch_by_hand()
        write(client, "sentinel:ro", write.__name__)
        assert new.client().get("sentinel:ro") == write.__name__, write.__name__
        assert _readonly_errors(old) > errors_before, f"{write.__name__}: no READONLY seen"


def _readonly_errors(server: RedisServer) -> int:
    stats = server.client().info("errorstats")
    return int(stats.get("errorstat_READONLY", {}).get("count", 0))


# -- the daemon through a failover -------------------------------------------------------------

TICK_JOBS = """\
version: 1
jobs:
  - id: tick
    tickers: [T1, T2]
    schedule: "@every 1s"
    source: demo
    window: 30d
    ttl: 10m
"""
EXECUTED = {RunStatus.SUCCESS, RunStatus.PARTIAL_SUCCESS, RunStatus.FAILED}


def _executed_after(client: redis.Redis, t: float) -> list[RunResult]:
    try:
        runs = history(client, "tick")
    except redis.RedisError:
        return []  # mid-failover
    return sorted(
        (r for r in runs if r.status in EXECUTED and r.started_at.timestamp() > t),
        key=lambda r: r.started_at,
    )


@pytest.mark.slow
@pytest.mark.parametrize("redis_kind", ["single"], indirect=True)  # its own servers, once
def test_two_daemons_ride_a_sentinel_failover_running_each_slot_at_most_once(
    tmp_path: Path, group: SentinelGroup, launch: Launch
) -> None:
    (tmp_path / "jobs.yaml").write_text(TICK_JOBS)
    settings = tmp_path / "stocksched.yaml"
    settings.write_text("lease_ttl: 2\nreplica_ttl: 3\n")
    reps = [
        launch(n, env={"STOCKSCHED_REPLICA_ID": n}, config=settings, redis_url=group.url)
        for n in ("r1", "r2")
    ]
    wait_ready(*reps)
    client = connect(group.url)
    up = time.time()
    wait_for(lambda: len(_executed_after(client, up)) >= 3, 30, alive=reps)

    failover_started = time.time()
    group.failover()
    failover_done = time.time()
    resumed = wait_for(lambda: _executed_after(client, failover_done), 30, alive=reps)[0]
    # Scheduling resumed within the failover's own time plus 2 s.
    assert resumed.started_at.timestamp() - failover_done <= 2.0, (
        failover_started,
        failover_done,
        resumed,
    )
    wait_for(lambda: len(_executed_after(client, failover_done)) >= 3, 30, alive=reps)
    for r in reps:
        r.stop()

    runs = history(client, "tick")  # read from the new master
    assert len({r.run_id for r in runs}) == len(runs), "a run id was recorded twice"
    per_slot = Counter(r.scheduled_for for r in runs)
    assert [s for s, n in per_slot.items() if n > 1] == [], "a slot was recorded twice"
    executed = sorted((r for r in runs if r.status in EXECUTED), key=lambda r: r.started_at)
    for a, b in pairwise(executed):
        assert a.finished_at <= b.started_at, f"{a.run_id} and {b.run_id} overlapped"
