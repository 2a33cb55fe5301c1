"""The HTTP server's connection handling: how many sockets it holds, and for how long.

Why this exists (issue 9 item 8): 1,100 idle TCP connections under systemd's default
``LimitNOFILE=1024`` used up every file descriptor. uvicorn holds a connection that never
sends a request for ever (its h11 ``timeout_keep_alive`` is only armed after a response),
its ``limit_concurrency`` answers 503 but still accepts and holds the socket, and asyncio's
accept loop then logged "socket.accept() out of system resource" for every attempt (in
Python 3.11 up to ``backlog`` times per loop tick): ``/healthz`` stopped answering and the
log got 217,768 "Too many open files" lines in 20 s. So the server here:

- closes a connection that has not sent a complete request head within ``idle_timeout``
  seconds of connecting or of its previous response: an idle keep-alive connection, one
  that never sends a byte, and one trickling its headers byte by byte alike (data arriving
  does not restart the timer, a parsed request does);
- holds at most ``cap`` connections, below the soft RLIMIT_NOFILE minus a reserve for
  Redis, Yahoo, the jobs file and logs. A connection past the cap closes the connection
  idle the longest (as nginx reuses keep-alive connections when short of them), so a
  probe still gets an answer while idle sockets are held; only when every held connection
  is busy is the new one closed at once. Pausing accept instead would leave the probe in
  the listen backlog until idle connections time out;
- accepts at most ACCEPT_HEADROOM sockets beyond the cap before the connections they
  displace are closed: asyncio accepts up to ``backlog`` (2048) sockets in one loop tick
  before any protocol sees them, so 1,100 queued connections took every descriptor at
  once however few were "open". The listening socket's ``accept`` reports "nothing to
  accept" while the sockets still held reach that budget;
- logs an accept failure for lack of descriptors once per episode, and once more with the
  count when accepting works again (an asyncio exception handler on the server's loop).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import resource
import socket
import threading
import time
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# asyncio.selector_events.BaseSelectorEventLoop._accept_connection reports these through
# the loop's exception handler with this message (and retries after 1 s).
ACCEPT_ERROR_MESSAGE = "socket.accept() out of system resource"
ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Descriptors kept out of the HTTP server's reach: Redis connections, Yahoo sessions per
# running job and ticker, yfinance's cache files, the jobs file and its watcher, logs.
FD_RESERVE_MIN = 128
FD_RESERVE_FRACTION = 4  # a quarter of the limit when that is more
# Accepted sockets allowed beyond the cap while those they displace are being closed.
ACCEPT_HEADROOM = 32


def fd_soft_limit() -> int | None:
    """The soft RLIMIT_NOFILE (what EMFILE is measured against); None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def connection_cap(max_connections: int, soft_limit: int | None) -> int:
    """``max_connections``, lowered so the HTTP server alone cannot exhaust the fd limit.

    The reserve is the larger of FD_RESERVE_MIN and a quarter of the limit: under 1024
    that leaves 768 for HTTP, so the default 512 stands; under 256 only 128 remain.
    """
    if soft_limit is None:
        return max_connections
    reserve = max(FD_RESERVE_MIN, soft_limit // FD_RESERVE_FRACTION)
    return max(1, min(max_connections, soft_limit - reserve))


class ConnectionGuard:
    """Book-keeping shared by every connection of one server; used on its loop's thread only.

    ``protocol_class`` is the uvicorn protocol to pass as ``Config(http=...)``; it finds
    this guard through a class attribute because uvicorn builds protocols itself.
    """

    def __init__(
        self, max_connections: int, idle_timeout: float, *, soft_limit: int | None = None
    ) -> None:
        limit = fd_soft_limit() if soft_limit is None else soft_limit
        self.cap = connection_cap(max_connections, limit)
        self.idle_timeout = idle_timeout
        if self.cap < max_connections:
            log.warning(
                "HTTP connections capped at %d, below http.max_connections=%d: the "
                "file-descriptor limit (RLIMIT_NOFILE) is %s; raise LimitNOFILE to allow more",
                self.cap,
                max_connections,
                limit,
            )
        self._open: set[GuardedH11Protocol] = set()
        # Connections waiting for a request, the one idle the longest first.
        self._idle: dict[GuardedH11Protocol, None] = {}
        self.accept_limit = self.cap + ACCEPT_HEADROOM
        self.held = 0  # accepted sockets not yet closed (whatever their protocol did)
        self.peak_held = 0
        self.evicted = 0
        self.refused = 0
        self._refusing = 0  # refused in the current episode (every connection busy)
        self._accept_failures = 0  # failed accepts in the current episode
        self._accept_failing_since = 0.0
        self.protocol_class: type[GuardedH11Protocol] = type(
            "GuardedH11Protocol", (GuardedH11Protocol,), {"guard": self}
        )

    @property
    def keep_alive_seconds(self) -> int:
        """For uvicorn's own keep-alive timer (whole seconds): never before ours fires."""
        return max(1, math.ceil(self.idle_timeout))

    def admit(self, conn: GuardedH11Protocol) -> bool:
        """Take a new connection, making room by closing the longest-idle one if needed."""
        self._end_accept_episode()
        if len(self._open) >= self.cap and self._idle:
            victim = next(iter(self._idle))
            self.forget(victim)
            victim.close_idle()
            self.evicted += 1
        if len(self._open) >= self.cap:
            self.refused += 1
            if self._refusing == 0:
                log.warning(
                    "HTTP connection limit reached (%d open, every one busy): new "
                    "connections are closed until one finishes",
                    len(self._open),
                )
            self._refusing += 1
            return False
        if self._refusing:
            log.info(
                "HTTP connections accepted again after %d refused at the limit", self._refusing
            )
            self._refusing = 0
        self._open.add(conn)
        return True

    def listener(self, sock: socket.socket) -> socket.socket:
        """A duplicate of the listening socket whose ``accept`` keeps within the budget."""
        dup = _GuardedListener(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        dup.guard = self
        return dup

    def forget(self, conn: GuardedH11Protocol) -> None:
        self._open.discard(conn)
        self._idle.pop(conn, None)

    def set_idle(self, conn: GuardedH11Protocol, idle: bool) -> None:
        if conn not in self._open:
            return
        if idle:
            self._idle.setdefault(conn, None)
        else:
            self._idle.pop(conn, None)

    def handle_loop_exception(
        self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]
    ) -> None:
        """Collapse accept failures for lack of descriptors; pass anything else on."""
        exc = context.get("exception")
        if context.get("message") != ACCEPT_ERROR_MESSAGE or not (
            isinstance(exc, OSError) and exc.errno in ACCEPT_ERRNOS
        ):
            loop.default_exception_handler(context)
            return
        if self._accept_failures == 0:
            self._accept_failing_since = time.monotonic()
            log.error(
                "HTTP server cannot accept connections: %s (%d HTTP connections open, cap "
                "%d; file-descriptor limit %s); retrying, logged again once it recovers",
                exc.strerror or exc,
                len(self._open),
                self.cap,
                fd_soft_limit(),
            )
        self._accept_failures += 1

    def _end_accept_episode(self) -> None:
        if self._accept_failures:
            log.warning(
                "HTTP server accepting connections again after %d failed accepts in %.1f s",
                self._accept_failures,
                time.monotonic() - self._accept_failing_since,
            )
            self._accept_failures = 0


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the guard's cap and an idle timer armed from connect."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.close()
            return
        self._sync_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        self._cancel_idle_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._sync_idle()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request (handle_events)
        self._sync_idle()

    def close_idle(self) -> None:
        """Close a connection waiting for a request (idle timer, or evicted for room)."""
        self._cancel_idle_timer()
        if not self.transport.is_closing():
            self.transport.close()

    def _sync_idle(self) -> None:
        """Arm the timer while no request is in progress; stop it while one is."""
        if self.transport is None or self.transport.is_closing():
            return
        waiting = self.cycle is None or self.cycle.response_complete
        self.guard.set_idle(self, waiting)
        if not waiting:
            self._cancel_idle_timer()
        elif self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.guard.idle_timeout, self.close_idle)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None


class _CountedSocket(socket.socket):
    """An accepted connection that gives its place in the budget back when closed."""

    guard: ConnectionGuard | None = None

    def close(self) -> None:
        guard, self.guard = self.guard, None
        if guard is not None:
            guard.held -= 1
        super().close()


class _GuardedListener(socket.socket):
    """The listening socket as asyncio's accept loop sees it."""

    guard: ConnectionGuard

    def accept(self) -> tuple[socket.socket, Any]:
        # BlockingIOError ends asyncio's accept loop for this tick as "queue empty"; the
        # kernel keeps the connections queued and they are accepted once sockets close.
        if self.guard.held >= self.guard.accept_limit:
            raise BlockingIOError(errno.EAGAIN, "HTTP connection budget reached")
        conn, addr = super().accept()
        counted = _CountedSocket(conn.family, conn.type, conn.proto, fileno=conn.detach())
        counted.guard = self.guard
        self.guard.held += 1
        self.guard.peak_held = max(self.guard.peak_held, self.guard.held)
        return counted, addr


class GuardedServer(uvicorn.Server):
    """uvicorn.Server whose loop reports accept failures through the guard."""

    def __init__(self, config: uvicorn.Config, guard: ConnectionGuard) -> None:
        super().__init__(config)
        self.guard = guard
        self.listening = threading.Event()  # set once serving: ApiServer.start waits on it

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(self.guard.handle_loop_exception)
        if sockets is not None:
            sockets = [self.guard.listener(sock) for sock in sockets]
        await super().startup(sockets=sockets)
        if self.started:
            self.listening.set()
