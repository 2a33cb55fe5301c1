"""The operator's web page at ``/``: the jobs, a job's runs and data, the daemon, actions.

Server-side Jinja2 templates (``templates/``, autoescaped: a job name or an error text with
HTML in it renders as text) and htmx (``static/htmx.min.js``, shipped in the package: no
CDN, the page works offline). The page shells (``/``, ``/jobs/{id}``) hold no data; htmx
fills them from the fragments under ``/ui/`` and polls those every ``POLL_S`` seconds, so
the page updates without a reload. Fragments are reads like the JSON API's, with its
auth rules; the shells and static files need no token (the page asks for it, keeps it in
``sessionStorage`` for the tab only, and ``static/page.js`` sends it as a bearer header).
The buttons post to the API's own action endpoints, so the page adds no action surface of
its own, and no cookie is ever used: nothing to forge across sites.

Every page response carries a Content-Security-Policy that allows scripts, styles and
connections from this daemon only and no inline script at all.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.responses import HTMLResponse

from stocksched.facade import SchedulerServingApp
from stocksched.views import JobView, RunView

if TYPE_CHECKING:
    import jinja2

POLL_S = 3
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_STATIC = {
    "htmx.min.js": "text/javascript",
    "page.js": "text/javascript",
    "page.css": "text/css",
}
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@cache
def _templates() -> jinja2.Environment:
    import jinja2  # only when the page is first asked for

    return jinja2.Environment(
        loader=jinja2.PackageLoader("stocksched.http", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def render(name: str, **context: Any) -> HTMLResponse:
    html = _templates().get_template(name).render(poll_s=POLL_S, **context)
    return HTMLResponse(html, headers=_HEADERS)


def add_page_routes(app: FastAPI, facade: SchedulerServingApp, reads: Any) -> None:
    """The page's shells and static files (open), and its fragments (``reads``: the
    dependency the JSON reads use)."""

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return render("index.html")

    @app.get("/jobs/{job_id}", include_in_schema=False)
    def job_page(job_id: str) -> HTMLResponse:
        return render("job.html", job_id=job_id)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        kind = _STATIC.get(name)
        if kind is None:
            raise HTTPException(404, f"no static file {name!r}")
        body = resources.files("stocksched.http").joinpath("static", name).read_bytes()
        return Response(body, media_type=kind, headers={**_HEADERS, "Cache-Control": "no-cache"})

    fragments: list[Any] = [Depends(reads)] if reads is not None else []

    @app.get("/ui/daemon", include_in_schema=False, dependencies=fragments)
    def daemon_fragment() -> HTMLResponse:
        st = facade.status()
        return render(
            "_daemon.html",
            st=st,
            uptime=_duration(st.uptime_s),
            reload_at=_when(st.last_reload.at),
            storage_since=_when(st.storage.since),
        )

    @app.get("/ui/jobs", include_in_schema=False, dependencies=fragments)
    def jobs_fragment() -> HTMLResponse:
        now = datetime.now(UTC)
        return render("_jobs.html", rows=[job_row(j, now) for j in facade.list_jobs()])

    @app.get("/ui/jobs/{job_id}", include_in_schema=False, dependencies=fragments)
    def job_fragment(job_id: str) -> HTMLResponse:
        job = facade.get_job(job_id)
        runs = facade.get_runs(job_id, 20)
        return render(
            "_job.html",
            row=job_row(job, datetime.now(UTC)),
            spec_yaml=_yaml(job.spec),
            runs=[run_row(r) for r in runs],
            failing=_failing(runs),
            freshness=_freshness(facade, job),
        )


def job_row(job: JobView, now: datetime) -> dict[str, Any]:
    """What the jobs table shows of one job."""
    zone = ZoneInfo(job.timezone)
    state, state_class = _state(job)
    return {
        "job": job,
        "state": state,
        "state_class": state_class,
        "next_local": _when(job.next_run, zone),
        "next_utc": _when(job.next_run),
        "last_when": _when(job.last_result.finished_at) if job.last_result else "",
        "last_success": _when(job.last_success),
        "alert": _alert(job, now),
    }


def _state(job: JobView) -> tuple[str, str]:
    if not job.enabled:
        return "disabled", "disabled"
    if job.running:
        progress = job.progress
        if progress is not None:
            return f"running {progress.done} of {progress.total} tickers", "running"
        return "running", "running"
    if job.paused:
        return "paused", "paused"
    return job.status, job.status


def _alert(job: JobView, now: datetime) -> str:
    """Why a job needs a look: its last run failed, or no success in twice its period."""
    if job.last_result is not None and job.last_result.status == "failed":
        return "last run failed"
    if job.success_due_by is not None and now > job.success_due_by:
        what = f"last {_when(job.last_success)}" if job.last_success else "none yet"
        return f"no success in over twice its period ({what})"
    return ""


def run_row(r: RunView) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "status": r.status,
        "trigger": r.trigger,
        "slot": _when(r.scheduled_for) or "—",
        "started": _when(r.started_at),
        "duration": f"{r.duration_s:.1f} s",
        "fetched": len(r.fetched),
        "failed": len(r.failed),
        "reason": r.reason,
    }


def _failing(runs: list[RunView]) -> list[tuple[str, str]]:
    """The failing tickers of the last run that ran, with their error."""
    last = next((r for r in runs if r.status in ("success", "partial_success", "failed")), None)
    return sorted(last.errors.items()) if last is not None else []


def _freshness(facade: SchedulerServingApp, job: JobView) -> list[dict[str, Any]]:
    """Each ticker's stored series: last bar, bars, missing sessions, last fetched."""
    from stocksched.storage.series import SeriesId

    prefix, interval = str(job.spec.get("prefix")), job.interval
    ids = [SeriesId(prefix, t, interval) for t in job.tickers]
    metas = facade.read_series(lambda store: store.meta_many(ids))
    out = []
    for ticker, meta in zip(job.tickers, metas, strict=True):
        if not meta:
            out.append({"ticker": ticker, "last": "", "bars": 0, "missing": "—", "fetched": ""})
            continue
        last = datetime.fromtimestamp(int(meta["last"]), ZoneInfo(meta["tz"]))
        missing = json.loads(meta.get("missing") or "[]")
        out.append(
            {
                "ticker": ticker,
                "last": last.date().isoformat() if interval == "1d" else _when(last),
                "bars": int(meta.get("bars") or 0),
                "missing": f"{len(missing)}: {', '.join(missing[:5])}" if missing else "0",
                "fetched": _when(datetime.fromisoformat(meta["fetched"]))
                if meta.get("fetched")
                else "",
            }
        )
    return out


def _when(t: datetime | None, zone: ZoneInfo | None = None) -> str:
    if t is None:
        return ""
    local = t.astimezone(zone or UTC)
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or "")


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours or days else []
    return " ".join([*parts, f"{minutes}m", f"{s}s"])


def _yaml(spec: dict[str, Any]) -> str:
    import yaml

    shown = {k: v for k, v in spec.items() if v is not None}  # as written: no nulls
    return yaml.safe_dump(shown, sort_keys=False, allow_unicode=True, default_flow_style=None)
