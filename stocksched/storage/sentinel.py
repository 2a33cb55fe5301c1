"""Redis Sentinel: a client for ``redis+sentinel://`` URLs that follows the master.

``redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER_NAME[/DB]`` names
the sentinels and the monitored master; ``?sentinel_password=`` authenticates to the
sentinels (when they have ``requirepass``), ``?socket_timeout=`` and
``?socket_connect_timeout=`` override the timeouts as for ``redis://`` URLs. redis-py's
``from_url`` does not read this scheme, so it is parsed here.

The client comes from redis-py's ``Sentinel.master_for``: every new connection asks the
sentinels for the current master, so after a failover (``SENTINEL FAILOVER``, or the
master killed) the next connection goes to the promoted replica. A connection opened
before the failover may still reach the old master, now a replica, which answers writes
with ``READONLY``; redis-py's ``SentinelManagedConnection`` turns that reply into a
ConnectionError and drops the connection, and the caller's retry (the same retry every
stocksched client has, plus ReadOnlyError itself as retryable) reconnects through the
sentinels (``_MasterConnection``: redis-py's own retry would reconnect to the old
address), so the write lands on the new master within the same call. The sentinels are
also asked once a second (``_MasterCheckingPool``), so a pool of open connections leaves
an old master that still accepts writes within about that.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

logger = logging.getLogger(__name__)

SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
#: How often a client asks the sentinels who the master is, however busy its pooled
#: connections are (see ``_MasterCheckingPool``).
MASTER_CHECK_S = 1.0
_FORMAT = "redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]"
_FLOAT_OPTIONS = ("socket_timeout", "socket_connect_timeout")
_STR_OPTIONS = ("sentinel_password", "sentinel_username")


@dataclass(frozen=True)
class SentinelURL:
    """What a ``redis+sentinel://`` URL says: where the sentinels are and which master."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    timeouts: dict[str, float] = field(default_factory=dict)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``url``; ValueError naming what is wrong (no hosts, no master, bad port or db)."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() != SCHEME:
        raise ValueError(f"not a {SCHEME}:// URL; expected {_FORMAT}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username, password = _userinfo(userinfo) if at else (None, None)
    sentinels = tuple(_host_port(part) for part in hosts.split(",") if part.strip())
    if not sentinels:
        raise ValueError(f"redis+sentinel URL names no sentinel host; expected {_FORMAT}")
    master, _, db_text = path.partition("/")
    master = unquote(master)
    if not master:
        raise ValueError(f"redis+sentinel URL names no master; expected {_FORMAT}")
    db_text = db_text.rstrip("/")
    if db_text and not db_text.isdigit():
        raise ValueError(f"redis+sentinel URL: db must be a number >= 0, got {db_text!r}")
    strings, timeouts = _query(query)
    return SentinelURL(
        sentinels=sentinels,
        master=master,
        db=int(db_text or 0),
        username=username,
        password=password,
        sentinel_username=strings.get("sentinel_username"),
        sentinel_password=strings.get("sentinel_password"),
        timeouts=timeouts,
    )


def sentinel_client(
    url: str,
    password: str | None,
    options: dict[str, Any],
    master_check_s: float = MASTER_CHECK_S,
) -> redis.Redis[str]:
    """A client for the master ``url`` names, rediscovered through its sentinels.

    ``password`` (from a password file) is the master's, used when the URL has none;
    ``options`` are the timeouts and retry every stocksched client has; the sentinels
    are asked for the master on every (re)connection and every ``master_check_s``.
    Does not contact the sentinels: the first command does. Raises ValueError for a
    malformed URL.
    """
    spec = parse_sentinel_url(url)
    opts = {**options, **spec.timeouts}
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": opts["socket_timeout"],
        "socket_connect_timeout": opts["socket_connect_timeout"],
        "decode_responses": True,
    }
    if spec.sentinel_password is not None:
        sentinel_kwargs["password"] = spec.sentinel_password
        sentinel_kwargs["username"] = spec.sentinel_username
    manager = Sentinel(list(spec.sentinels), sentinel_kwargs=sentinel_kwargs)
    client: redis.Redis[str] = manager.master_for(
        spec.master,
        connection_pool_class=_MasterCheckingPool,
        connection_class=_MasterConnection,
        master_check_s=master_check_s,
        db=spec.db,
        username=spec.username,
        password=spec.password if spec.password is not None else password,
        **opts,
    )
    return client


class _MasterConnection(SentinelManagedConnection):
    """redis-py's Sentinel connection, which also asks the sentinels when it reconnects.

    On a READONLY reply redis-py drops the connection and raises ConnectionError so the
    retry reconnects, but (redis-py 8) the retry reconnects through
    ``connect_check_health``, straight to the address it had: the demoted master
    again, READONLY again, until the retries run out. Only a connection taken from
    the pool asks the sentinels. Here every reconnect does.
    """

    _addressed = False  # connect_to has just asked the sentinels

    def connect_to(self, address: tuple[str, int]) -> None:
        self._addressed = True
        try:
            super().connect_to(address)
        finally:
            self._addressed = False

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        connected = getattr(self, "_sock", None) is not None
        if not connected and not self._addressed and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        parent: Any = super()  # redis-py's Connection, untyped here
        parent.connect_check_health(
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )


class _MasterCheckingPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, which also asks the sentinels for the master once a second.

    redis-py asks only when it opens a connection. After ``SENTINEL FAILOVER`` the old
    master keeps serving its open connections as a master until the sentinels
    reconfigure it as a replica, some 8 s later (Sentinel waits four publish periods
    before converting it): a busy pool that opens no connection would write there all
    that time, and those writes are lost when it resyncs from the new master. Asking
    here bounds that to about ``MASTER_CHECK_S``: when the answer changes, redis-py
    closes the idle connections and disowns the ones in use, so each reconnects to
    the new master.
    """

    def __init__(
        self, service_name: str, sentinel_manager: Sentinel, master_check_s: float, **kwargs: Any
    ) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)
        self._check_s = master_check_s
        self._next_check = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if self.is_master and now >= self._next_check:
            self._next_check = now + self._check_s
            try:
                self.get_master_address()
            except redis.ConnectionError as exc:  # no master known now: connecting says so
                logger.debug("sentinels name no master for %s: %s", self.service_name, exc)
        return super().get_connection(*args, **kwargs)


def has_url_password(url: str) -> bool:
    """Whether ``url`` carries the master's password itself (then a password file is a clash)."""
    return parse_sentinel_url(url).password is not None


def _userinfo(text: str) -> tuple[str | None, str | None]:
    user, colon, password = text.partition(":")
    if not colon:  # a lone user-info part is the password, as redis-py reads redis://secret@
        return None, unquote(user) or None
    return unquote(user) or None, unquote(password)


def _host_port(part: str) -> tuple[str, int]:
    text = part.strip()
    if text.startswith("["):  # [::1]:26379
        host, _, port_text = text[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"redis+sentinel URL: sentinel {text!r} has no host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(
            f"redis+sentinel URL: bad port {port_text!r} for sentinel {host} (1-65535)"
        )
    return host, int(port_text)


def _query(query: str) -> tuple[dict[str, str], dict[str, float]]:
    strings: dict[str, str] = {}
    timeouts: dict[str, float] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        value = values[-1]
        if name in _STR_OPTIONS:
            strings[name] = value
        elif name in _FLOAT_OPTIONS:
            try:
                timeouts[name] = float(value)
            except ValueError:
                message = f"redis+sentinel URL: {name} must be seconds, got {value!r}"
                raise ValueError(message) from None
        else:
            known = ", ".join(_STR_OPTIONS + _FLOAT_OPTIONS)
            raise ValueError(f"redis+sentinel URL: unknown option {name!r} (known: {known})")
    return strings, timeouts
