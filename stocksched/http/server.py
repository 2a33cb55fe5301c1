"""The HTTP server: uvicorn in its own thread, behind the connection guard."""

from __future__ import annotations

import logging
import socket
import time

import uvicorn
from fastapi import FastAPI

from stocksched.http.connections import ConnectionGuard, GuardedServer
from stocksched.threads import BackgroundThread

log = logging.getLogger(__name__)


class ApiStartError(RuntimeError):
    """The HTTP server could not start (address in use, permission denied...)."""


class ApiServer:
    """uvicorn in its own thread; ``start`` returns once the socket is listening."""

    def __init__(
        self,
        app: FastAPI,
        host: str,
        port: int,
        *,
        log_level: str = "info",
        max_connections: int = 512,
        idle_timeout: float = 5.0,
    ) -> None:
        self._app = app
        # Connections held at most and how long one may wait for a request: idle sockets
        # must not exhaust the file descriptors (stocksched.http.connections).
        self._guard = ConnectionGuard(max_connections, idle_timeout)
        self._host = host
        self._requested_port = port
        self._log_level = log_level.lower()
        self._server: uvicorn.Server | None = None
        self._thread: BackgroundThread | None = None
        self._sock: socket.socket | None = None
        self._port = port

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for), once started."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Bind (errors surface here, synchronously), then serve in a daemon thread."""
        self._sock = self._bind()
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="off",
            log_level=self._log_level,
            server_header=False,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=self._guard.keep_alive_seconds,
            http=self._guard.protocol_class,
            ws="none",  # no WebSocket routes: never import the websockets package
            loop="asyncio",  # the guard handles asyncio's accept errors
        )
        self._server = GuardedServer(config, self._guard)
        server, sock = self._server, self._sock
        self._thread = BackgroundThread("http", lambda: server.run(sockets=[sock]))
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.listening.wait(0.05):  # set by the server thread's startup
            if not self._thread.alive or time.monotonic() > deadline:
                self.stop()
                raise ApiStartError(f"HTTP API did not start on {self._host}:{self.port}")
        log.info("HTTP API listening on %s", self.url)

    def _bind(self) -> socket.socket:
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                self._host, self._requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise ApiStartError(
                f"cannot listen on {self._host}:{self._requested_port}: {exc.strerror or exc}"
            ) from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ApiStartError(
                f"cannot listen on {self._host}:{self._requested_port}: {exc.strerror or exc}"
            ) from None
        sock.set_inheritable(False)
        self._port = int(sock.getsockname()[1])
        return sock

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish (bounded), and join the thread."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
            if self._thread.alive:  # in-flight requests past the grace: cut them
                self._server.force_exit = True
                self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._thread = None
        self._server = None
