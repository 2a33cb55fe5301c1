"""The HTTP API's routes over the SchedulerServingApp facade.

Read state and the stored bar series (``/data``, ``stocksched.http.data_routes``), trigger
a run, pause and resume. Job definitions are not created, edited or deleted over HTTP:
``jobs.yaml`` in git is the source of truth.

Every error is JSON ``{"error": "..."}`` (``stocksched.http.errors``). When a token is
configured every POST needs ``Authorization: Bearer <token>``; binding a non-loopback
address without one is refused, so the API is never open to a network by accident. On a
non-loopback address the reads need the token too (job specs, run history and status name
hosts, paths and pids), all but the probes and, unless ``http.protect_metrics`` is set,
``/metrics`` (``stocksched.http.access.Access``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from stocksched.facade import MAX_RUNS_LIMIT, SchedulerServingApp
from stocksched.http.access import Access, bearer_check
from stocksched.http.data_routes import add_data_routes
from stocksched.http.errors import add_error_handlers
from stocksched.http.limits import BodyLimitMiddleware
from stocksched.http.page import add_page_routes
from stocksched.jobs.spec import JOB_ID_PATTERN
from stocksched.metrics import exposition
from stocksched.views import ErrorBody, JobView, PauseView, Probe, RunView, StatusView, TriggerView

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
    auth = Depends(bearer_check(access.token))
    app = FastAPI(
        title="stocksched",
        description=API_DESCRIPTION,
        version=facade.version,
        # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN and stay
        # blank offline. The schema is /openapi.json; the operator page is at /.
        docs_url=None,
        redoc_url=None,
        # Protected reads include the schema (added below, behind the token).
        openapi_url=None if access.reads else "/openapi.json",
    )
    add_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    _add_probe_routes(app, facade, [auth] if access.metrics else [])
    _add_read_routes(app, facade, [auth] if access.reads else [])
    add_data_routes(app, facade, [auth] if access.reads else [])
    _add_action_routes(app, facade, auth)
    add_page_routes(app, facade, bearer_check(access.token) if access.reads else None)
    if access.reads:
        _add_protected_schema(app, auth)
    return app


def _add_protected_schema(app: FastAPI, auth: Any) -> None:
    @app.get("/openapi.json", include_in_schema=False, dependencies=[auth])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())


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
        summary="Prometheus metrics (text format; gzip if the scraper accepts it)",
        response_class=Response,
        dependencies=metrics_auth,
        responses={200: {"content": {"text/plain": {}}}, **(_AUTH if metrics_auth else {})},
    )
    def metrics(request: Request) -> Response:
        body, headers = exposition(facade.render_metrics(), request.headers.get("accept-encoding"))
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers=headers)


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

    def pause(job_id: JobId) -> PauseView:
        return facade.pause(job_id)

    def resume(job_id: JobId) -> PauseView:
        return facade.resume(job_id)

    pause_text = "Pause: no scheduled runs until resumed (kept across reloads/restarts)"
    resume_text = "Resume a paused job; a job with enabled: false in jobs.yaml stays disabled"
    # /stop and /start are the original names, kept as aliases (marked deprecated).
    for name, alias, handler, text in (
        ("pause", "stop", pause, pause_text),
        ("resume", "start", resume, resume_text),
    ):
        for path, deprecated in ((name, False), (alias, True)):
            # name=path keeps the operation ids, e.g. stop_scheduler_jobs__job_id__stop_post
            app.post(
                f"/scheduler/jobs/{{job_id}}/{path}",
                response_model=PauseView,
                tags=["actions"],
                dependencies=[auth],
                responses=_POST_ERRORS,
                summary=f"Alias of /{name}: {text}" if deprecated else text,
                deprecated=deprecated,
                name=path,
            )(handler)
