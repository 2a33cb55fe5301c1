"""Every error the API answers is JSON ``{"error": "..."}``: the handlers that make it so."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stocksched.facade import JobBusyError, JobNotFoundError
from stocksched.http.access import NotAuthenticatedError
from stocksched.storage.adapter import StorageError

log = logging.getLogger(__name__)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _not_found(_r: Request, exc: Exception) -> JSONResponse:
    return error_response(404, str(exc))


async def _busy(_r: Request, exc: Exception) -> JSONResponse:
    run_id = getattr(exc, "run_id", None)
    running = f" (run {run_id})" if run_id else ""
    body = {
        "error": f"job {exc.args[0] if exc.args else ''!r} is already running{running} "
        "(or the daemon is shutting down); try again when it has finished"
    }
    if run_id:
        body["run_id"] = run_id  # the run in progress: `trigger --wait` waits for it
    return JSONResponse(body, status_code=409)


async def _unauthenticated(_r: Request, exc: Exception) -> JSONResponse:
    return error_response(401, str(exc), {"WWW-Authenticate": "Bearer"})


async def _storage(_r: Request, exc: Exception) -> JSONResponse:
    log.warning("API request failed on Redis: %s", exc)
    return error_response(503, f"storage unavailable: {exc}")


async def _invalid(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = [
        f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()
    ]
    return error_response(422, "; ".join(parts) or "invalid request")


async def _http_error(_r: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _crash(_r: Request, _exc: Exception) -> JSONResponse:
    # uvicorn logs the traceback ("Exception in ASGI application"); answer in JSON.
    return error_response(500, "internal error; see the daemon's log")


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(JobNotFoundError, _not_found)
    app.add_exception_handler(JobBusyError, _busy)
    app.add_exception_handler(NotAuthenticatedError, _unauthenticated)
    app.add_exception_handler(StorageError, _storage)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _crash)
