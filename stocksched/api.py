"""The HTTP API: FastAPI routes over the SchedulerServingApp facade, served by uvicorn in a thread.

Read state, trigger a run, pause and resume. Job definitions are not created, edited or
deleted over HTTP: ``jobs.yaml`` in git is the source of truth.

Every error is JSON ``{"error": "..."}``. When a token is configured every POST needs
``Authorization: Bearer <token>``; binding a non-loopback address without one is refused
(``check_bind``), so the API is never open to a network by accident. On a non-loopback
address the reads need the token too (job specs, run history and status name hosts, paths
and pids), all but the probes and, unless ``http.protect_metrics`` is set, ``/metrics``
(``Access``).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from stocksched.client import TokenFileError, read_token
from stocksched.facade import (
    MAX_RUNS_LIMIT,
    JobBusyError,
    JobNotFoundError,
    JobView,
    PauseView,
    RunView,
    SchedulerServingApp,
    StatusView,
    TriggerView,
)
from stocksched.httpserver import ConnectionGuard, GuardedServer
from stocksched.jobs.spec import JOB_ID_PATTERN
from stocksched.storage.adapter import StorageError

log = logging.getLogger(__name__)


API_DESCRIPTION = """\
Observe and steer a running stocksched daemon.

**Job definitions are not created, edited or deleted over HTTP**: `jobs.yaml` in git is the
source of truth; commit a change and the daemon reloads it. This API reads state, triggers a
run now, and pauses or resumes a job (a runtime override kept in Redis).

When the daemon has a token (`http.token_file` / `STOCKSCHED_TOKEN_FILE`), every POST needs
`Authorization: Bearer <token>`; on a non-loopback address every GET does too, except
`/healthz`, `/readyz` and (unless `http.protect_metrics` is set) `/metrics`.
Errors are JSON: `{"error": "message"}`.
"""

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Any]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


class ApiConfigError(ValueError):
    """The API cannot be started safely with these settings (the daemon must not start)."""


class ApiStartError(RuntimeError):
    """The HTTP server could not start (address in use, permission denied...)."""


class NotAuthenticatedError(Exception):
    """A request to a protected route without the configured bearer token."""


class ErrorBody(BaseModel):
    error: str


class Probe(BaseModel):
    status: str
    error: str | None = None


# -- configuration checks -------------------------------------------------------------


def load_token(path: Path) -> str:
    """The API token in ``path`` (stripped); ApiConfigError if unreadable or empty."""
    try:
        return read_token(path)
    except TokenFileError as exc:
        raise ApiConfigError(str(exc)) from None


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_bind(listen_host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token."""
    if token is None and not is_loopback(listen_host):
        raise ApiConfigError(
            f"refusing to listen on {listen_host!r} without an API token: set http.token_file "
            "(or STOCKSCHED_TOKEN_FILE) or listen on 127.0.0.1"
        )


@dataclass(frozen=True)
class Access:
    """Which routes need the bearer token: the API's whole access policy, decided once.

    POSTs change state, so they need the token whenever one is configured. Reads need it
    when the daemon listens beyond loopback (the host's own users may read; a network may
    not). The probes never do (orchestrators call them without credentials); ``/metrics``
    only when the operator asks, since Prometheus can send a token but often is not set up
    to.
    """

    token: str | None = None
    reads: bool = False
    metrics: bool = False

    @classmethod
    def for_listen(cls, host: str, token: str | None, *, protect_metrics: bool) -> Access:
        """The policy for a daemon on ``host``; ApiConfigError for settings that cannot hold."""
        check_bind(host, token)
        if protect_metrics and token is None:
            raise ApiConfigError(
                "http.protect_metrics needs an API token: set http.token_file "
                "(or STOCKSCHED_TOKEN_FILE)"
            )
        protected = token is not None and not is_loopback(host)
        return cls(token, reads=protected, metrics=protect_metrics)


# -- the app -------------------------------------------------------------------------------

JobId = Annotated[
    str,
    PathParam(pattern=JOB_ID_PATTERN, description="job id from jobs.yaml", examples=["daily-tech"]),
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (404, "no such job in the current config"),
        (422, "invalid job id or query parameter"),
        (503, "Redis is unavailable"),
    )
}
_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
}
_POST_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    **_AUTH,
    413: {"model": ErrorBody, "description": "request body too large"},
}


def create_app(facade: SchedulerServingApp, access: Access, max_body_bytes: int) -> FastAPI:
    auth = Depends(_bearer_check(access.token))
    app = FastAPI(
        title="stocksched",
        description=API_DESCRIPTION,
        version=facade.version,
        redoc_url=None,
        # Protected reads include the schema and its page (added below, behind the token).
        openapi_url=None if access.reads else "/openapi.json",
        docs_url=None if access.reads else "/docs",
    )
    _add_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    _add_probe_routes(app, facade, [auth] if access.metrics else [])
    _add_read_routes(app, facade, [auth] if access.reads else [])
    _add_action_routes(app, facade, auth)
    if access.reads:
        _add_protected_docs(app, auth)
    return app


def _add_protected_docs(app: FastAPI, auth: Any) -> None:
    @app.get("/openapi.json", include_in_schema=False, dependencies=[auth])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[auth])
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="stocksched API")


_BEARER = HTTPBearer(auto_error=False, description="The daemon's API token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


def _bearer_check(token: str | None) -> Callable[..., None]:
    expected = token.encode() if token is not None else None

    def check(creds: Credentials) -> None:
        if expected is None:
            return
        if creds is None:
            raise NotAuthenticatedError("missing 'Authorization: Bearer <token>' header")
        if not hmac.compare_digest(creds.credentials.encode(), expected):
            raise NotAuthenticatedError("invalid token")

    return check


def _add_probe_routes(app: FastAPI, facade: SchedulerServingApp, metrics_auth: list[Any]) -> None:
    def probe(result: tuple[bool, str]) -> JSONResponse:
        ok, reason = result
        if ok:  # "ok", or what a live daemon is doing ("waiting for Redis")
            return JSONResponse({"status": reason})
        return JSONResponse({"status": "unavailable", "error": reason}, status_code=503)

    @app.get(
        "/healthz",
        response_model=Probe,
        tags=["probes"],
        responses={503: {"model": Probe, "description": "scheduler dead or stuck"}},
        summary="Liveness: the scheduler thread is alive and its loop is not stuck",
    )
    async def healthz() -> JSONResponse:  # in-memory only: no thread-pool hop
        return probe(facade.healthz())

    @app.get(
        "/readyz",
        response_model=Probe,
        tags=["probes"],
        responses={503: {"model": Probe, "description": "not ready, with the reason"}},
        summary="Readiness: a valid config is loaded and Redis answers",
    )
    def readyz() -> JSONResponse:
        return probe(facade.readyz())

    @app.get(
        "/metrics",
        tags=["probes"],
        summary="Prometheus metrics (text format)",
        response_class=Response,
        dependencies=metrics_auth,
        responses={200: {"content": {"text/plain": {}}}, **(_AUTH if metrics_auth else {})},
    )
    def metrics() -> Response:
        return Response(facade.render_metrics(), media_type=CONTENT_TYPE_LATEST)


def _add_read_routes(app: FastAPI, facade: SchedulerServingApp, auth: list[Any]) -> None:
    extra = _AUTH if auth else {}

    @app.get(
        "/scheduler/status",
        response_model=StatusView,
        tags=["scheduler"],
        dependencies=auth,
        responses=extra,
        summary="Daemon status: uptime, version, jobs by state, config and last reload",
    )
    def status() -> StatusView:
        return facade.status()

    @app.get(
        "/scheduler/jobs",
        response_model=list[JobView],
        tags=["jobs"],
        dependencies=auth,
        responses={503: _ERRORS[503], **extra},
        summary="Every job in the current config, with its runtime state",
    )
    def list_jobs() -> list[JobView]:
        return facade.list_jobs()

    @app.get(
        "/scheduler/jobs/{job_id}",
        response_model=JobView,
        tags=["jobs"],
        dependencies=auth,
        responses={**_ERRORS, **extra},
        summary="One job: spec and runtime state",
    )
    def get_job(job_id: JobId) -> JobView:
        return facade.get_job(job_id)

    @app.get(
        "/scheduler/jobs/{job_id}/runs",
        response_model=list[RunView],
        tags=["jobs"],
        dependencies=auth,
        responses={**_ERRORS, **extra},
        summary="Run history of a job, newest first",
    )
    def get_runs(
        job_id: JobId,
        limit: Annotated[int, Query(ge=1, le=MAX_RUNS_LIMIT, description="entries")] = 20,
    ) -> list[RunView]:
        return facade.get_runs(job_id, limit)


def _add_action_routes(app: FastAPI, facade: SchedulerServingApp, auth: Any) -> None:
    busy: dict[int | str, dict[str, Any]] = {
        409: {"model": ErrorBody, "description": "a run of this job is in progress"}
    }

    @app.post(
        "/scheduler/jobs/{job_id}/trigger",
        status_code=202,
        response_model=TriggerView,
        tags=["actions"],
        dependencies=[auth],
        responses={**_POST_ERRORS, **busy},
        summary="Run the job now, outside its schedule (next_run does not move)",
    )
    def trigger(job_id: JobId, response: Response) -> TriggerView:
        run_id = facade.trigger(job_id)
        response.headers["Location"] = f"/scheduler/jobs/{job_id}/runs"
        return TriggerView(
            job_id=job_id,
            run_id=run_id,
            message="run started; it appears in the run history when it ends",
        )

    @app.post(
        "/scheduler/jobs/{job_id}/stop",
        response_model=PauseView,
        tags=["actions"],
        dependencies=[auth],
        responses=_POST_ERRORS,
        summary="Pause: no scheduled runs until resumed (kept across reloads/restarts)",
    )
    def stop(job_id: JobId) -> PauseView:
        return facade.pause(job_id)

    @app.post(
        "/scheduler/jobs/{job_id}/start",
        response_model=PauseView,
        tags=["actions"],
        dependencies=[auth],
        responses=_POST_ERRORS,
        summary="Resume a paused job; a job with enabled: false in jobs.yaml stays disabled",
    )
    def start(job_id: JobId) -> PauseView:
        return facade.resume(job_id)


# -- errors ----------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    async def not_found(_r: Request, exc: Exception) -> JSONResponse:
        return _error(404, str(exc))

    async def busy(_r: Request, exc: Exception) -> JSONResponse:
        return _error(
            409,
            f"job {exc.args[0] if exc.args else ''!r} is already running "
            "(or the daemon is shutting down); try again when it has finished",
        )

    async def unauthenticated(_r: Request, exc: Exception) -> JSONResponse:
        return _error(401, str(exc), {"WWW-Authenticate": "Bearer"})

    async def storage(_r: Request, exc: Exception) -> JSONResponse:
        log.warning("API request failed on Redis: %s", exc)
        return _error(503, f"storage unavailable: {exc}")

    async def invalid(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = [
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
            for e in exc.errors()
        ]
        return _error(422, "; ".join(parts) or "invalid request")

    async def http_error(_r: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def crash(_r: Request, _exc: Exception) -> JSONResponse:
        # uvicorn logs the traceback ("Exception in ASGI application"); answer in JSON.
        return _error(500, "internal error; see the daemon's log")

    app.add_exception_handler(JobNotFoundError, not_found)
    app.add_exception_handler(JobBusyError, busy)
    app.add_exception_handler(NotAuthenticatedError, unauthenticated)
    app.add_exception_handler(StorageError, storage)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, crash)


# -- request body bound ---------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Reject bodies over ``max_bytes`` with 413, whether announced or streamed (chunked).

    No endpoint takes a body, so a chunked body is read here, bounded, and replayed: the
    bound holds even for routes that never read what they were sent.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _error(400, "invalid Content-Length")(scope, receive, send)
            elif int(length) > self.max_bytes:
                await self._too_large(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        try:
            body = await self._read_bounded(receive)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_bounded(self, receive: Callable[[], Awaitable[Any]]) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)  # disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        response = _error(413, f"request body over {self.max_bytes} bytes", {"Connection": "close"})
        await response(scope, receive, send)


def _replay(body: bytes, receive: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


# -- the server thread ------------------------------------------------------------------------


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
        # must not exhaust the file descriptors (stocksched.httpserver).
        self._guard = ConnectionGuard(max_connections, idle_timeout)
        self._host = host
        self._requested_port = port
        self._log_level = log_level.lower()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
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
            loop="asyncio",  # the guard handles asyncio's accept errors
        )
        self._server = GuardedServer(config, self._guard)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ApiStartError(f"HTTP API did not start on {self._host}:{self.port}")
            time.sleep(0.01)
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
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout)
                if self._thread.is_alive():
                    log.warning("HTTP API thread did not stop in time")
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._thread = None
        self._server = None
