"""Redis Cluster: the ``redis+cluster://`` URL, its client, and how the other modules ask.

``redis_url: redis+cluster://[user:password@]host:port[,host:port...][?option=value...]``
names startup nodes; redis-py's ``RedisCluster`` discovers the rest of the cluster from
any one of them, so a list only matters when some may be down at start. The client gets
the same bounded timeouts and quick retries as ``adapter.connect`` gives a single Redis
(not its periodic health checks: redis-py's cluster client does not pass that option on);
a password file works as there.

A cluster runs a script or a MULTI only on keys of one hash slot. Every key a job's run
touches together carries the job id as hash tag (``scheduler:job:{ID}``, see
``stocksched.storage.keys``) and every key of one ticker's series the ticker; the few
global keys (indexes, projections) are written by separate commands, which the modules
choose when ``is_cluster`` says so. A single Redis keeps its one-script, one-round-trip
path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import Encoder, parse_url
from redis.retry import Retry

from stocksched.secretfile import read_secret_file

CLUSTER_SCHEME = "redis+cluster"


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """(startup nodes, client options: username, password, ``?query`` options) of ``url``.

    Raises ValueError for another scheme, no node, a node without a numeric port, or a
    database number other than 0 (a cluster has one database).
    """
    head, sep, rest = url.partition("://")
    if not sep or head.lower() != CLUSTER_SCHEME:
        raise ValueError(f"not a {CLUSTER_SCHEME}:// URL: {url!r}")
    rest, _, query = rest.partition("?")
    rest, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {path!r}")
    userinfo, at, hosts = rest.rpartition("@")
    nodes = [_node(h) for h in hosts.split(",") if h.strip()]
    if not nodes:
        raise ValueError(f"{CLUSTER_SCHEME}:// needs at least one host:port")
    options: dict[str, Any] = {}
    if query:
        options = parse_url(f"redis://{hosts.split(',')[0]}?{query}")
        options.pop("host", None)
        options.pop("port", None)
    if at:
        user, _, password = userinfo.partition(":")
        options["username"] = unquote(user) or None
        options["password"] = unquote(password) or None
    return nodes, options


def _node(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"a cluster node is host:port, got {text!r}")
    return host.strip("[]"), int(port)


def cluster_client(url: str, password_file: Path | None = None) -> redis.Redis[str]:
    """A ``RedisCluster`` for ``url`` (see ``parse_cluster_url``), made on its first command
    (``LazyCluster``): like ``adapter.connect``, this does not contact the cluster.

    Typed as ``redis.Redis`` because the storage classes call the commands both share;
    what differs (multi-key scripts and transactions) they check with ``is_cluster``.
    """
    from stocksched.storage import adapter  # imports this module, so not at the top

    nodes, options = parse_cluster_url(url)
    if password_file is not None:
        if options.get("password"):
            raise ValueError("give the Redis password in the URL or in a password file, not both")
        options["password"] = read_secret_file(password_file, "Redis password")
    kwargs: dict[str, Any] = {
        # no health_check_interval: the cluster client drops it from its nodes' options
        "socket_timeout": adapter.SOCKET_TIMEOUT_S,
        "socket_connect_timeout": adapter.CONNECT_TIMEOUT_S,
        **options,  # URL options win, as with a single Redis
    }

    def make() -> RedisCluster[str]:
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes],
            decode_responses=True,
            retry=Retry(
                ExponentialBackoff(cap=adapter.BACKOFF_CAP_S, base=adapter.BACKOFF_BASE_S),
                adapter.RETRIES,
            ),
            **kwargs,
        )

    return cast("redis.Redis[str]", LazyCluster(make))


class LazyCluster:
    """A ``RedisCluster`` made on its first command.

    RedisCluster's constructor asks the cluster for its topology, so a daemon started while
    its cluster is down would fail at once instead of waiting for it, as it waits for a
    single Redis. Scripts are registered without contacting it (their SHA is local); every
    other attribute is the real client's, made (and, after a failure, tried again) when
    first needed, inside the caller's ``storage_errors``.
    """

    def __init__(self, make: Callable[[], RedisCluster[str]]) -> None:
        self._make = make
        self._client: RedisCluster[str] | None = None
        self._lock = threading.Lock()

    def get_encoder(self) -> Encoder:
        return Encoder("utf-8", "strict", True)  # decode_responses, as the client's

    def register_script(self, script: str) -> Script:
        return Script(cast(Any, self), script)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __getattr__(self, name: str) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make()
        return getattr(self._client, name)


def is_cluster(client: object) -> bool:
    """Whether ``client`` talks to a Redis Cluster (multi-key steps must stay in one slot)."""
    return isinstance(client, RedisCluster | LazyCluster)


def mget(client: redis.Redis[str], names: Sequence[str]) -> list[Any]:
    """MGET on a single Redis; on a cluster, where the keys may be in several slots, a GET
    per key, grouped by node (redis-py's ``mget_nonatomic``): no atomic snapshot there."""
    if is_cluster(client):
        return list(cast(Any, client).mget_nonatomic(list(names)))
    return list(client.mget(list(names)))


def read_apart(
    pipe: Any, strings: Sequence[str], hashes: Sequence[str], fields: list[str]
) -> tuple[list[Any], list[Any]]:
    """A cluster's read of many strings and hashes, keys of many slots, in one pipeline (a
    round trip per node, no snapshot): a GET per string, then an HMGET of ``fields`` per hash."""
    for name in strings:
        pipe.get(name)
    for name in hashes:
        pipe.hmget(name, fields)
    replies = pipe.execute()
    return replies[: len(strings)], replies[len(strings) :]
