"""The connection layer: the store contract, its Redis implementation, the one error type.

The original design's ``AbstractDatabaseAdapter`` is the contract every store satisfies
-- the embedded in-process store (``memory://``, fakeredis) and a real Redis server
alike, checked by one contract test suite run on both (tests/test_adapter_contract.py):
string values under string keys with optional expiry, a readiness ping, and the
server's memory policy. Consumers that need no more (readiness, the state sync) are
typed against it. ``RedisAdapter`` implements it on a redis-py client; its ``client``
is for the classes of this package that own a Redis structure (job records, bar
records, leases, replicas, the rate limiter), which need scripts, streams and
transactions. Nothing outside ``stocksched.storage`` imports redis.

``storage_errors`` is the one place redis-py's exceptions are translated: every Redis
failure leaves this package as ``StorageError`` whose message names the operation and
the key, so callers can log one useful line and keep going (the original design's
"log, continue") without importing redis exceptions.
"""

from __future__ import annotations

import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from stocksched.logs import one_line
from stocksched.secretfile import read_secret_file
from stocksched.storage import sentinel
from stocksched.storage.cluster import CLUSTER_SCHEME, cluster_client

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Schemes redis-py's ``from_url`` understands, and Sentinel's (parsed in sentinel.py);
#: anything else is a config mistake.
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", sentinel.SCHEME})
#: Spellings that select the embedded, non-persistent store.
EMBEDDED_URLS = frozenset({"", "memory://"})
EMBEDDED_MISSING = (
    "the embedded store (redis_url memory://, or no redis_url) needs fakeredis, which is "
    "not installed: pip install 'stocksched[embedded]', or set redis_url to a Redis server "
    "(redis://HOST:PORT/DB)"
)

# Timeouts bound how long one call can hang on a dead peer; a query string in the
# URL (e.g. ``?socket_timeout=10``) overrides them, since redis-py lets URL
# options win over keyword arguments.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
HEALTH_CHECK_INTERVAL_S = 30
# Rides over a blip (a restart, a dropped idle connection) inside one call:
# 3 retries after 0.1 s, 0.2 s, 0.4 s. Longer outages are the caller's to back
# off from, so one call never blocks a worker for long.
RETRIES = 3
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0


#: What redis-py raises: a cluster client's own errors (no reachable node, keys of several
#: slots in one step) are not RedisErrors.
REDIS_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException)

# A refused login or a missing ACL permission: retrying cannot fix either.
_NOT_RETRYABLE: tuple[type[Exception], ...] = (
    redis.AuthenticationError,
    getattr(redis.exceptions, "AuthorizationError", redis.AuthenticationError),
)


class _TransientRetry(Retry):
    """redis-py's Retry, minus retrying a refused login.

    redis-py files authentication failures under ConnectionError, and nests
    the connect retry inside the command retry, so a wrong password would
    otherwise cost seconds per call before failing the same way.
    """

    def call_with_retry(
        self,
        do: Callable[[], _T],
        fail: Callable[..., object],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> _T:
        def retryable(error: Exception) -> bool:
            if isinstance(error, _NOT_RETRYABLE):
                return False
            return is_retryable is None or is_retryable(error)

        parent: Any = super()
        result: _T = parent.call_with_retry(do, fail, retryable, with_failure_count)
        return result


class StorageError(Exception):
    """A storage operation failed (Redis unreachable, timed out, or refused the command)."""

    def __init__(self, operation: str, key: str, reason: str) -> None:
        self.operation = operation
        self.key = key
        self.reason = one_line(reason)  # whatever redis-py said
        super().__init__(f"redis {operation} {key!r} failed: {self.reason}")


@contextmanager
def storage_errors(operation: str, key: str) -> Iterator[None]:
    """Turn any redis-py failure inside the block into a StorageError naming op and key."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise StorageError(operation, key, str(exc) or type(exc).__name__) from exc


def ttl_to_ms(ttl: timedelta | None) -> int | None:
    """Milliseconds for ``SET ... PX``; rejects a ttl that would expire the key at once."""
    if ttl is None:
        return None
    ms = int(ttl.total_seconds() * 1000)
    if ms < 1:
        raise ValueError(f"ttl must be at least 1 ms, got {ttl}")
    return ms


class AbstractDatabaseAdapter(ABC):
    """The original design's storage contract: string values under string keys.

    Implementations raise ``StorageError`` for backend failures and never
    return partial results (``ping`` alone answers False instead).
    """

    @abstractmethod
    def save_data(self, key: str, value: str, ttl: timedelta | None = None) -> None:
        """Store ``value`` under ``key``, replacing any value and any previous expiry.

        With ``ttl`` the key disappears after that long; without it the key
        persists (and a ttl it had before is removed).
        """

    @abstractmethod
    def get_data(self, key: str) -> str | None:
        """The value under ``key``, or None when the key does not exist (or has expired)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` currently exists."""

    @abstractmethod
    def delete_data(self, key: str) -> bool:
        """Delete ``key``; True when it existed."""

    @abstractmethod
    def ping(self) -> bool:
        """Whether the store answers now; False instead of raising, for readiness probes."""

    @abstractmethod
    def memory(self) -> RedisMemory | None:
        """The store's eviction policy and memory use; None for a store that cannot evict
        (the embedded one). Raises StorageError."""


class RedisAdapter(AbstractDatabaseAdapter):
    """``AbstractDatabaseAdapter`` on a redis-py client (real server or embedded fakeredis)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    @property
    def client(self) -> redis.Redis:
        """The underlying client, for this package's structure classes (scripts, streams,
        transactions); code outside ``stocksched.storage`` goes through those classes."""
        return self._client

    @property
    def embedded(self) -> bool:
        """Whether this is the in-process store (data lost at exit; no server to reach)."""
        return is_embedded(self._client)

    def save_data(self, key: str, value: str, ttl: timedelta | None = None) -> None:
        px = ttl_to_ms(ttl)
        with storage_errors("SET", key):
            self._client.set(key, value, px=px)

    def get_data(self, key: str) -> str | None:
        with storage_errors("GET", key):
            value = self._client.get(key)
        return None if value is None else str(value)

    def exists(self, key: str) -> bool:
        with storage_errors("EXISTS", key):
            return bool(self._client.exists(key))

    def delete_data(self, key: str) -> bool:
        with storage_errors("DEL", key):
            return bool(self._client.delete(key))

    def memory(self) -> RedisMemory | None:
        """The server's eviction policy and memory use; None for the embedded store.

        Read from ``INFO memory``, which managed services that rename CONFIG still serve.
        Raises StorageError.
        """
        if is_embedded(self._client):
            return None
        with storage_errors("INFO memory", "-"):
            info = self._client.info("memory")
        return RedisMemory(
            policy=str(info.get("maxmemory_policy", "noeviction")),
            used=int(info.get("used_memory", 0)),
            limit=int(info.get("maxmemory", 0)),
        )

    def ping(self) -> bool:
        """Whether the store answers now; False instead of raising, for readiness probes."""
        try:
            return bool(self._client.ping())
        except (*REDIS_ERRORS, OSError) as exc:
            logger.debug("redis ping failed: %s", exc)
            return False


@dataclass(frozen=True)
class RedisMemory:
    policy: str  # maxmemory-policy
    used: int  # bytes
    limit: int  # maxmemory in bytes; 0 = no limit

    @property
    def evicts(self) -> bool:
        """Any policy but noeviction may drop stocksched's keys (volatile-*: its leases and
        slot claims, which carry expiries; allkeys-*: everything)."""
        return self.policy != "noeviction"

    @property
    def full(self) -> bool:
        """Out of memory under noeviction: Redis refuses every write."""
        return self.limit > 0 and self.used >= self.limit

    def refusal(self) -> str:
        return (
            f"Redis maxmemory-policy is {self.policy}: under memory pressure Redis may evict "
            "stocksched's job records, run leases, slot claims and history, and slots would "
            "then run twice or be lost. Fix: set `maxmemory-policy noeviction` on the server "
            "(CONFIG SET maxmemory-policy noeviction, and in redis.conf), or set "
            "allow_evicting_redis: true (STOCKSCHED_ALLOW_EVICTING_REDIS=1) to run anyway"
        )


def connect(url: str | None, password_file: Path | None = None) -> redis.Redis:
    """A client for ``url``; None, "" or ``memory://`` give the embedded in-process store.

    The embedded store (fakeredis) lives and dies with the process: nothing is
    persisted, and every call makes a new, empty one, so create it once and
    share it. Real URLs get bounded timeouts, periodic health checks and a few
    quick retries with exponential backoff on connection errors and timeouts.

    ``password_file`` (e.g. a systemd credential in ``$CREDENTIALS_DIRECTORY``)
    supplies the password so it never appears in the URL, the environment or
    ``ps``. It is ignored for the embedded store, which has no authentication.

    ``redis+sentinel://`` URLs connect to the master their sentinels name and follow
    failovers (stocksched.storage.sentinel), with the same timeouts and retry.

    Raises ValueError for an unsupported scheme, a malformed ``redis+sentinel`` URL,
    an unreadable or empty password file, or a password both in the URL and in a
    file. Does not contact the server: the first command does.
    """
    spec = (url or "").strip()
    if spec in EMBEDDED_URLS:
        if password_file is not None:
            logger.debug("password file ignored for the embedded store")
        return _embedded()
    scheme = urlsplit(spec).scheme.lower()
    if scheme == "memory":
        raise ValueError("the embedded store URL is exactly 'memory://' (no host or path)")
    if scheme == CLUSTER_SCHEME:
        return cluster_client(spec, password_file)
    if scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"unsupported Redis URL scheme {scheme or '(none)'!r}: use redis://, rediss://, "
            "unix://, redis+sentinel://, redis+cluster:// or memory:// (embedded, not persisted)"
        )
    url_password = (
        sentinel.has_url_password(spec) if scheme == sentinel.SCHEME else urlsplit(spec).password
    )
    password = None
    if password_file is not None:
        if url_password:
            raise ValueError("give the Redis password in the URL or in a password file, not both")
        password = read_secret_file(password_file, "Redis password")
    if scheme == sentinel.SCHEME:
        return sentinel.sentinel_client(spec, password, _client_options(via_sentinel=True))
    return redis.Redis.from_url(spec, password=password, **_client_options())


def _client_options(*, via_sentinel: bool = False) -> dict[str, Any]:
    """The timeouts, health checks and retry every real client gets, direct or through
    Sentinel. A Sentinel client also retries a READONLY reply: it comes from a master
    demoted by a failover, and the retry's reconnect asks the sentinels for the new one."""
    retry_on: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
    if via_sentinel:
        retry_on += (redis.ReadOnlyError,)
    return {
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "retry": _TransientRetry(
            ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S),
            RETRIES,
            supported_errors=retry_on,
        ),
    }


def _embedded() -> redis.Redis:
    """A new, empty in-process store; ValueError saying how to install it when missing."""
    try:
        import fakeredis  # 16 MiB with lupa: imported only for the embedded store
    except ImportError:
        raise ValueError(EMBEDDED_MISSING) from None
    client: redis.Redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    return client


def is_embedded(client: redis.Redis) -> bool:
    """Whether ``client`` is the in-process store (data lost at exit; no server to reach)."""
    fakeredis = sys.modules.get("fakeredis")  # not imported: no client can be one of its
    if fakeredis is None:
        return False
    return isinstance(client, fakeredis.FakeRedis | fakeredis.FakeStrictRedis)
