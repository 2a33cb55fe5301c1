"""Issue 9 item 8: idle HTTP connections must not use up the daemon's file descriptors.

1,100 idle sockets under systemd's default ``LimitNOFILE=1024`` made ``/healthz`` stop
answering and logged 217,768 "Too many open files" lines in 20 s. Here:

- in-process, on a real ApiServer with a short idle timeout: a connection that never
  sends a byte, one idle after a keep-alive response, and one trickling its request head
  are all closed after the timeout; past the cap the longest-idle connection makes room,
  and with every connection busy a new one is closed at once; accept failures for lack of
  descriptors are logged once per episode;
- end to end, a real daemon under a 1024 fd limit on a private redis-server holds 1,100
  idle sockets from this process: ``/healthz`` answers within 1 s, every idle socket is
  closed after the idle timeout, the daemon stays below its limit and logs no storm;
- the systemd unit sets a limit above systemd's default.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import selectors
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI

from stocksched.http import ApiServer
from stocksched.http.connections import (
    ACCEPT_ERROR_MESSAGE,
    ACCEPT_HEADROOM,
    ConnectionGuard,
    connection_cap,
)
from stocksched.settings import Settings, load_settings
from tests.daemons import Launch, Replica, wait_ready
from tests.test_deploy import UNIT, _unit_settings
from tests.test_reload import jobs_yaml

IDLE = 0.5  # the in-process servers' idle timeout, seconds


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/block")
    async def block() -> dict[str, str]:
        time.sleep(0.5)  # holds the event loop: connections pile up unaccepted
        return {"status": "done"}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(1.5)
        return {"status": "done"}

    return app


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start ApiServers on free loopback ports; each is stopped at the end."""
    started: list[ApiServer] = []

    def start(**kw: Any) -> ApiServer:
        server = ApiServer(_app(), "127.0.0.1", 0, idle_timeout=IDLE, **kw)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset); None if still open."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def _get(sock: socket.socket, path: str = "/healthz") -> bytes:
    """One keep-alive request on an open socket; the response head and body."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# -- the cap ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_connections", "soft", "cap"),
    [
        (512, 1024, 512),  # the default fits under systemd's default limit
        (5000, 1024, 768),  # a quarter of the limit stays for Redis, Yahoo and files
        (512, 256, 128),  # at least 128 stay
        (512, 100, 1),  # never zero: the probe must still get through
        (512, None, 512),  # unlimited
    ],
)
def test_connection_cap_stays_below_the_fd_limit(
    max_connections: int, soft: int | None, cap: int
) -> None:
    assert connection_cap(max_connections, soft) == cap


def test_settings_bound_the_connections_and_the_idle_timeout() -> None:
    http = Settings().http
    assert (http.max_connections, http.idle_timeout) == (512, 5.0)
    env = {"STOCKSCHED_HTTP_MAX_CONNECTIONS": "64", "STOCKSCHED_HTTP_IDLE_TIMEOUT": "2.5"}
    http = load_settings(None, env=env).http
    assert (http.max_connections, http.idle_timeout) == (64, 2.5)
    for bad in ({"STOCKSCHED_HTTP_MAX_CONNECTIONS": "0"}, {"STOCKSCHED_HTTP_IDLE_TIMEOUT": "0"}):
        with pytest.raises(Exception, match="http"):
            load_settings(None, env=bad)


def test_unit_raises_the_fd_limit_above_systemds_default() -> None:
    (limit,) = _unit_settings(UNIT)["LimitNOFILE"]
    assert int(limit.partition(":")[0]) >= 8192


# -- idle connections, in process -----------------------------------------------------------


def test_a_connection_that_never_sends_a_byte_is_closed_after_the_idle_timeout(
    serve: Any,
) -> None:
    server = serve()
    with _connect(server.port) as sock:
        closed = _closed_within(sock, 5)
    assert closed is not None, "the server still holds a connection that never sent a byte"
    assert IDLE * 0.5 < closed < IDLE + 1.5


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(serve: Any) -> None:
    server = serve()
    with _connect(server.port) as sock:
        assert b"200 OK" in _get(sock)
        assert b"200 OK" in _get(sock)  # still open for a second request
        closed = _closed_within(sock, 5)
    assert closed is not None and closed < IDLE + 1.5


def test_a_request_head_trickled_byte_by_byte_does_not_hold_the_connection(
    serve: Any,
) -> None:
    """Data arriving does not restart the timer: only a complete request does."""
    server = serve()
    with _connect(server.port) as sock:
        start = time.monotonic()
        sock.settimeout(0.1)
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                sock.send(bytes([byte]))
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "the trickled request head held the connection for 10 s"
        assert time.monotonic() - start < IDLE + 1.5


def test_a_slow_request_is_not_cut_by_the_idle_timeout(serve: Any) -> None:
    server = serve()
    with _connect(server.port) as sock:
        assert b'"done"' in _get(sock, "/slow")  # 1.5 s, three idle timeouts


def test_past_the_cap_the_longest_idle_connection_makes_room(serve: Any) -> None:
    server = serve(max_connections=4)
    idle = [_connect(server.port) for _ in range(4)]
    try:
        time.sleep(0.1)  # accepted, in this order
        with _connect(server.port) as probe:
            assert b"200 OK" in _get(probe)
        assert _closed_within(idle[0], 0.2) is not None, "the oldest idle one was kept"
        assert all(_closed_within(s, 0.05) is None for s in idle[1:])
    finally:
        for s in idle:
            s.close()


def test_a_burst_of_queued_connections_is_not_accepted_all_at_once(serve: Any) -> None:
    """asyncio would accept up to 2048 queued sockets in one tick, before any is seen."""
    server = serve(max_connections=8)
    guard = server._guard
    with _connect(server.port) as blocker:
        blocker.sendall(b"GET /block HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.1)
        burst = [_connect(server.port) for _ in range(300)]  # queued while the loop is held
        try:
            assert b'"done"' in blocker.recv(65536) + blocker.recv(65536)
            time.sleep(0.5)
            with _connect(server.port) as probe:
                assert b"200 OK" in _get(probe)
        finally:
            for s in burst:
                s.close()
    assert guard.peak_held <= guard.accept_limit == 8 + ACCEPT_HEADROOM
    assert guard.evicted > 250  # the burst was still accepted, a budget at a time


def test_with_every_connection_busy_a_new_one_is_closed_at_once(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(max_connections=2)
    busy = [_connect(server.port) for _ in range(2)]
    try:
        for s in busy:
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)
        with caplog.at_level(logging.INFO, "stocksched.http.connections"):
            for _ in range(3):
                with _connect(server.port) as extra:
                    assert _closed_within(extra, 1) is not None
            for s in busy:
                s.settimeout(5)
                assert b'"done"' in s.recv(65536) + s.recv(65536)
            with _connect(server.port) as later:
                assert b"200 OK" in _get(later)
        messages = [r.getMessage() for r in caplog.records]
        assert sum("limit reached" in m for m in messages) == 1, messages
        assert any("after 3 refused" in m for m in messages), messages
    finally:
        for s in busy:
            s.close()


def test_accept_failures_are_logged_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio reports every failed accept (in 3.11 up to `backlog` times a tick)."""
    guard = ConnectionGuard(512, 5.0, soft_limit=1024)
    loop = asyncio.new_event_loop()
    other: list[dict[str, Any]] = []
    loop.default_exception_handler = other.append  # type: ignore[method-assign,assignment]
    emfile = OSError(errno.EMFILE, "Too many open files")
    context = {"message": ACCEPT_ERROR_MESSAGE, "exception": emfile}
    try:
        with caplog.at_level(logging.INFO, "stocksched.http.connections"):
            for _ in range(2):  # two episodes
                for _ in range(2048):
                    guard.handle_loop_exception(loop, context)
                guard.admit(guard.protocol_class.__new__(guard.protocol_class))
            guard.handle_loop_exception(loop, {"message": "something else"})
    finally:
        loop.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Too many open files" in m for m in messages) == 2, messages
    assert sum("after 2048 failed accepts" in m for m in messages) == 2, messages
    assert other == [{"message": "something else"}]


# -- a real daemon under a 1024 fd limit ------------------------------------------------------

DAEMON_FDS = 1024
HELD = 1100
DAEMON_IDLE = 2.0


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (DAEMON_FDS, DAEMON_FDS))


@pytest.fixture
def daemon_1024(tmp_path: Path, real_redis: redis.Redis, launch: Launch) -> Replica:
    """`stocksched run` with RLIMIT_NOFILE 1024 (systemd's default) on the private Redis."""
    (tmp_path / "jobs.yaml").write_text(jobs_yaml(("a", "0 3 * * *")))
    daemon = launch(
        "d", env={"STOCKSCHED_HTTP_IDLE_TIMEOUT": str(DAEMON_IDLE)}, preexec_fn=_limit_fds
    )
    wait_ready(daemon)
    return daemon


@pytest.fixture
def enough_fds_here() -> Iterator[None]:
    """This process holds the 1,100 sockets, so its own soft limit must allow them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = HELD + 200
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the hard fd limit {hard} is below {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
def test_daemon_under_1024_fds_answers_healthz_with_1100_idle_sockets_held(
    daemon_1024: Replica, enough_fds_here: None
) -> None:
    daemon = daemon_1024
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= HELD
    held: list[socket.socket] = []
    try:
        for _ in range(HELD):
            held.append(_connect(daemon.port))  # queued by the kernel even if not accepted
        time.sleep(0.3)
        start = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/healthz", timeout=1) as r:
            assert r.status == 200
        assert time.monotonic() - start < 1.0
        assert _open_fds(daemon.proc.pid) < DAEMON_FDS

        # Every idle socket is closed: evicted to make room, or after the idle timeout.
        selector = selectors.DefaultSelector()
        for sock in held:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        still_open = set(held)
        deadline = time.monotonic() + DAEMON_IDLE + 4
        while still_open and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.2):
                fileobj = key.fileobj
                assert isinstance(fileobj, socket.socket)
                sock = fileobj
                with contextlib.suppress(ConnectionResetError):
                    if sock.recv(1024):
                        continue
                selector.unregister(sock)
                still_open.discard(sock)
        selector.close()
        assert not still_open, f"{len(still_open)} idle sockets still held by the daemon"
        assert _open_fds(daemon.proc.pid) < 200
    finally:
        for sock in held:
            sock.close()

    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/healthz", timeout=1) as r:
        assert r.status == 200
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(timeout=30)
    out = daemon.output()
    assert daemon.proc.returncode == 0, out[-3000:]
    storm = [
        line
        for line in out.splitlines()
        if "Too many open files" in line or ACCEPT_ERROR_MESSAGE in line
    ]
    assert len(storm) <= 1, f"{len(storm)} lines, e.g. {storm[:3]}"
    assert "Traceback" not in out, out[-3000:]
