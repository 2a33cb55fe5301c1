"""``redis+cluster://``: the URL, and the client it gives against a real 3-master cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from redis.exceptions import RedisClusterException

from stocksched.storage.adapter import connect
from stocksched.storage.cluster import is_cluster, parse_cluster_url
from tests.cluster_servers import RedisClusterServers


def test_cluster_url_lists_every_startup_node_with_credentials_and_options() -> None:
    nodes, options = parse_cluster_url(
        "redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0?socket_timeout=9"
    )
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert options == {"username": "app", "password": "s@cret", "socket_timeout": 9.0}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://", "at least one host:port"),
        ("redis+cluster://10.0.0.1", "host:port"),
        ("redis+cluster://10.0.0.1:x", "host:port"),
        ("redis+cluster://10.0.0.1:7000/2", "only database 0"),
    ],
)
def test_a_malformed_cluster_url_is_refused_saying_why(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        connect(url)


def test_a_password_both_in_the_url_and_in_a_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("other\n")
    with pytest.raises(ValueError, match="not both"):
        connect("redis+cluster://:pw@127.0.0.1:7000", password_file=secret)


def test_connect_reaches_every_master_of_a_real_cluster(
    redis_cluster: RedisClusterServers,
) -> None:
    client = connect(redis_cluster.url)
    redis_cluster.flush()
    assert is_cluster(client) and not is_cluster(redis.Redis())
    for i in range(30):  # 30 keys land on all three masters
        client.set(f"k{i}", str(i))
    per_node = [redis.Redis(port=p).dbsize() for p in redis_cluster.ports]
    assert sum(per_node) == 30 and all(n > 0 for n in per_node)
    # keys of one hash tag run in one script; keys of several are refused by the client
    script = client.register_script("return redis.call('MGET', KEYS[1], KEYS[2])")
    client.set("a{job}", "1")
    client.set("b{job}", "2")
    assert script(keys=["a{job}", "b{job}"]) == ["1", "2"]
    with pytest.raises(RedisClusterException, match="same key slot"):
        script(keys=["k1", "k2"])
