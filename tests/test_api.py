"""The HTTP API over the real wiring (Components on fakeredis or a real redis-server).

Each test builds the daemon's components, loads a jobs file, starts the scheduler
thread and talks to the FastAPI app, either in-process (TestClient) or through a real
uvicorn server on a free port (ApiServer).
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from stocksched import __version__
from stocksched.clock import Clock
from stocksched.daemon import Components
from stocksched.facade import SchedulerServingApp
from stocksched.http import (
    Access,
    ApiConfigError,
    ApiServer,
    ApiStartError,
    check_bind,
    create_app,
    load_token,
)
from stocksched.settings import Settings
from stocksched.sources.base import PermanentFetchError
from stocksched.sources.demo import DemoFetcher
from tests.conftest import RedisServer, free_port
from tests.fakes import FakeClock

# Far-away schedules: nothing fires on its own during a test; runs come from trigger.
JOBS = """\
version: 1
defaults:
  schedule: "0 0 1 1 *"
  source: demo
  window: 10d
jobs:
  - id: alpha
    tickers: [AAA, BBB]
  - id: beta
    tickers: [CCC]
  - id: mixed
    tickers: [AAA, BADX]
  - id: broken
    tickers: [BADY]
  - id: off
    tickers: [DDD]
    enabled: false
"""

TOKEN = "s3cret-token"

ISSUE_METRICS = (
    "stocksched_job_runs_total",
    "stocksched_job_run_duration_seconds",
    "stocksched_job_last_run_timestamp_seconds",
    "stocksched_job_last_success_timestamp_seconds",
    "stocksched_job_next_run_timestamp_seconds",
    "stocksched_job_running",
    "stocksched_job_paused",
    "stocksched_ticker_fetches_total",
    "stocksched_rows_stored_total",
    "stocksched_fetch_duration_seconds",
    "stocksched_schedule_lateness_seconds",
    "stocksched_config_reloads_total",
    "stocksched_config_last_reload_successful",
    "stocksched_config_last_reload_success_timestamp_seconds",
    "stocksched_jobs",
    "stocksched_redis_errors_total",
    "stocksched_build_info",
)


class TestFetcher(DemoFetcher):
    """Demo bars, except tickers starting with BAD fail (to get partial and failed runs)."""

    __test__ = False

    def fetch_from_source(self, ticker: str, start: date, end: date, interval: str) -> Any:
        if ticker.startswith("BAD"):
            raise PermanentFetchError(ticker, "no such symbol")
        return super().fetch_from_source(ticker, start, end, interval)


class Stack:
    """The daemon's components plus the facade and app, as the daemon wires them."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        redis_url: str = "memory://",
        latency: float = 0.0,
        clock: Clock | None = None,
        token: str | None = None,
        access: Access | None = None,
        max_body_bytes: int = 4096,
        load: bool = True,
        start: bool = True,
        jobs: str = JOBS,
    ) -> None:
        self.jobs_path = tmp_path / "jobs.yaml"
        if not self.jobs_path.exists():
            self.jobs_path.write_text(jobs)
        settings = Settings(jobs=self.jobs_path, redis_url=redis_url)
        self.c = Components(
            settings, clock=clock, fetchers={"demo": TestFetcher(latency_s=latency)}
        )
        self.facade = SchedulerServingApp(
            registry=self.c.registry,
            scheduler=self.c.scheduler,
            reloader=self.c.reloader,
            adapter=self.c.adapter,
            metrics=self.c.metrics,
            clock=self.c.clock,
            version="9.9.9-test",
            started_at=self.c.clock.now(),
        )
        self.app = create_app(self.facade, access or Access(token), max_body_bytes)
        self.http = TestClient(self.app)
        if load:
            assert self.c.reloader.reload().ok
        if start:
            self.c.scheduler.start()

    def close(self) -> None:
        self.http.close()
        self.c.scheduler.stop(10)

    def wait_run(self, job_id: str, run_id: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.http.get(f"/scheduler/jobs/{job_id}/runs").json():
                if run["run_id"] == run_id:
                    return dict(run)
            time.sleep(0.02)
        raise AssertionError(f"run {run_id} not recorded")

    def trigger_and_wait(self, job_id: str) -> dict[str, Any]:
        resp = self.http.post(f"/scheduler/jobs/{job_id}/trigger")
        assert resp.status_code == 202, resp.text
        return self.wait_run(job_id, resp.json()["run_id"])

    def redis_down(self, down: bool = True) -> None:
        server = self.c.adapter.client.connection_pool.connection_kwargs["server"]
        server.connected = not down


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    s.close()


def assert_error(resp: httpx.Response, status: int, *needles: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    # every error has its message; a 409 may name the run in progress
    assert set(body) - {"run_id"} == {"error"} and isinstance(body["error"], str) and body["error"]
    for needle in needles:
        assert needle in body["error"], body
    return str(body["error"])


# -- status, jobs, runs -------------------------------------------------------------------


def test_status_reports_daemon_jobs_config_and_last_reload(stack: Stack) -> None:
    st = stack.http.get("/scheduler/status").json()
    assert st["running"] is True
    assert st["version"] == "9.9.9-test"
    assert st["uptime_s"] >= 0
    assert st["jobs_total"] == 5
    assert st["jobs_by_state"] == {
        "pending": 4,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "paused": 1,
    }
    assert st["config"]["path"] == str(stack.jobs_path)
    assert len(st["config"]["sha256"]) == 64 and st["config"]["jobs"] == 5
    assert st["last_reload"]["ok"] is True and st["last_reload"]["added"] == 5
    assert st["last_reload"]["errors"] == []
    assert st["replicas"] is None


def test_status_counts_every_job_in_a_state_after_runs(stack: Stack) -> None:
    stack.trigger_and_wait("alpha")
    st = stack.http.get("/scheduler/status").json()
    assert st["jobs_by_state"]["completed"] == 1 and st["jobs_by_state"]["pending"] == 3
    assert sum(st["jobs_by_state"].values()) == st["jobs_total"]


def test_status_shows_an_invalid_reload_and_keeps_the_good_config(stack: Stack) -> None:
    good_sha = stack.http.get("/scheduler/status").json()["config"]["sha256"]
    stack.jobs_path.write_text(JOBS.replace("tickers: [CCC]", "tickers: [CCC]\n    bogus: 1"))
    assert not stack.c.reloader.reload().ok
    st = stack.http.get("/scheduler/status").json()
    assert st["last_reload"]["ok"] is False
    assert any(
        e.startswith(f"{stack.jobs_path}:11:5:") and "bogus" in e
        for e in st["last_reload"]["errors"]
    )
    assert st["config"]["sha256"] == good_sha and st["jobs_total"] == 5


def test_status_lists_replicas_from_the_hook(tmp_path: Path) -> None:
    s = Stack(tmp_path, start=False)
    facade = SchedulerServingApp(
        registry=s.c.registry,
        scheduler=s.c.scheduler,
        reloader=s.c.reloader,
        adapter=s.c.adapter,
        metrics=s.c.metrics,
        clock=s.c.clock,
        version="1",
        started_at=s.c.clock.now(),
        replicas=lambda: [{"id": "host-a:1", "leader": True}],
    )
    with TestClient(create_app(facade, Access(), 4096)) as http:
        assert http.get("/scheduler/status").json()["replicas"] == [
            {"id": "host-a:1", "leader": True}
        ]
    s.close()


def test_jobs_list_spec_and_runtime_state(stack: Stack) -> None:
    jobs = {j["job_id"]: j for j in stack.http.get("/scheduler/jobs").json()}
    assert sorted(jobs) == ["alpha", "beta", "broken", "mixed", "off"]
    alpha = jobs["alpha"]
    assert alpha["status"] == "pending" and alpha["active"] and not alpha["paused"]
    assert alpha["tickers"] == ["AAA", "BBB"] and alpha["schedule"] == "0 0 1 1 *"
    assert alpha["spec"]["window"] == "10d" and alpha["source"] == "demo"
    assert datetime.fromisoformat(alpha["next_run"]) > datetime.now(UTC)
    assert alpha["last_run"] is None and alpha["last_result"] is None
    off = jobs["off"]
    assert off["enabled"] is False and off["active"] is False
    assert off["status"] == "paused" and off["next_run"] is None
    assert stack.http.get("/scheduler/jobs/alpha").json() == alpha


NY_JOBS = """\
version: 1
jobs:
  - id: ny
    tickers: [AAA]
    schedule: "0 17 * * 1-5"
    timezone: America/New_York
    source: demo
    window: 10d
"""


def test_every_time_in_the_api_is_utc_with_an_explicit_offset(tmp_path: Path) -> None:
    """Issue 8, item 10: last_run was "Z", next_run in the job's zone (-05:00) in one object."""
    stack = Stack(tmp_path, jobs=NY_JOBS)
    try:
        run = stack.trigger_and_wait("ny")
        job = stack.http.get("/scheduler/jobs/ny").json()
        assert job["timezone"] == "America/New_York"  # the spec keeps the job's zone
        assert job["next_run"].endswith("+00:00"), job["next_run"]
        assert job["last_run"].endswith("+00:00"), job["last_run"]
        times = [
            job["created_at"],
            job["updated_at"],
            job["last_result"]["finished_at"],
            run["started_at"],
            run["finished_at"],
        ]
        assert all(t.endswith("+00:00") for t in times), times
        # The same instant as the schedule's 17:00 in New York, written in UTC.
        nxt = datetime.fromisoformat(job["next_run"])
        assert nxt.astimezone(ZoneInfo("America/New_York")).hour == 17
        assert nxt.hour in (21, 22)  # 17:00 EDT or EST
        assert stack.http.get("/scheduler/jobs").json() == [job]

        st = stack.http.get("/scheduler/status").json()
        assert st["started_at"].endswith("+00:00") and st["last_reload"]["at"].endswith("+00:00")

        stack.http.post("/scheduler/jobs/ny/stop")
        body = stack.http.post("/scheduler/jobs/ny/start").json()
        assert body["message"] == f"resumed; next run at {body['job']['next_run']}"
        assert body["job"]["next_run"] == job["next_run"]
    finally:
        stack.close()


def test_unknown_job_is_404_json_everywhere(stack: Stack) -> None:
    for method, path in [
        ("GET", "/scheduler/jobs/nope"),
        ("GET", "/scheduler/jobs/nope/runs"),
        ("POST", "/scheduler/jobs/nope/trigger"),
        ("POST", "/scheduler/jobs/nope/stop"),
        ("POST", "/scheduler/jobs/nope/start"),
    ]:
        assert_error(stack.http.request(method, path), 404, "nope")


@pytest.mark.parametrize("bad", ["UPPER", "-dash-first", "a" * 65, "sp ace", "dot.dot", "é"])
def test_invalid_job_id_is_422_json(stack: Stack, bad: str) -> None:
    assert_error(stack.http.get(f"/scheduler/jobs/{bad}"), 422, "job_id")
    assert_error(stack.http.post(f"/scheduler/jobs/{bad}/trigger"), 422, "job_id")


def test_unknown_routes_and_methods_are_json(stack: Stack) -> None:
    assert_error(stack.http.get("/scheduler/jobs/a%2Fb"), 404)
    assert_error(stack.http.get("/nothing-here"), 404)
    resp = stack.http.get("/scheduler/jobs/alpha/trigger")
    assert_error(resp, 405)
    assert "POST" in resp.headers["allow"]
    # Job definitions are not editable over HTTP.
    assert_error(stack.http.delete("/scheduler/jobs/alpha"), 405)
    assert_error(stack.http.put("/scheduler/jobs/alpha", json={}), 405)
    assert_error(stack.http.post("/scheduler/jobs", json={"id": "x"}), 405)


def test_runs_newest_first_with_limit_and_results(stack: Stack) -> None:
    first = stack.trigger_and_wait("alpha")
    second = stack.trigger_and_wait("alpha")
    runs = stack.http.get("/scheduler/jobs/alpha/runs").json()
    assert [r["run_id"] for r in runs] == [second["run_id"], first["run_id"]]
    assert runs[0]["status"] == "success" and runs[0]["trigger"] == "manual"
    assert runs[0]["fetched"] == ["AAA", "BBB"] and runs[0]["rows_stored"] > 0
    assert len(stack.http.get("/scheduler/jobs/alpha/runs?limit=1").json()) == 1
    partial = stack.trigger_and_wait("mixed")
    assert partial["status"] == "partial_success"
    assert partial["failed"] == ["BADX"] and "no such symbol" in partial["errors"]["BADX"]
    assert stack.http.get("/scheduler/jobs/beta/runs").json() == []


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "abc", "1.5"])
def test_runs_bad_limit_is_422_json(stack: Stack, limit: str) -> None:
    assert_error(stack.http.get(f"/scheduler/jobs/alpha/runs?limit={limit}"), 422, "limit")


# -- actions --------------------------------------------------------------------------------


def test_trigger_is_202_with_run_id_and_keeps_next_run(stack: Stack) -> None:
    before = stack.http.get("/scheduler/jobs/alpha").json()
    resp = stack.http.post("/scheduler/jobs/alpha/trigger")
    assert resp.status_code == 202
    body = resp.json()
    assert body["job_id"] == "alpha" and body["run_id"].startswith("alpha:m")
    assert resp.headers["location"] == "/scheduler/jobs/alpha/runs"
    run = stack.wait_run("alpha", body["run_id"])
    assert run["status"] == "success"
    after = stack.http.get("/scheduler/jobs/alpha").json()
    assert after["next_run"] == before["next_run"]
    assert after["last_result"]["run_id"] == body["run_id"]
    assert after["last_result"]["status"] == "success" and after["status"] == "completed"


def test_trigger_while_running_is_409(tmp_path: Path) -> None:
    s = Stack(tmp_path, latency=1.0)
    try:
        first = s.http.post("/scheduler/jobs/alpha/trigger")
        assert first.status_code == 202
        job = s.http.get("/scheduler/jobs/alpha").json()
        assert job["running"] is True and job["status"] == "running"
        assert s.http.get("/scheduler/status").json()["jobs_by_state"]["running"] == 1
        busy = s.http.post("/scheduler/jobs/alpha/trigger")
        assert_error(busy, 409, "alpha", "already running")
        assert busy.json()["run_id"] == first.json()["run_id"]  # the run in progress
        assert s.http.post("/scheduler/jobs/beta/trigger").status_code == 202  # others free
        s.wait_run("alpha", first.json()["run_id"])
    finally:
        s.close()


def test_pause_and_resume(stack: Stack) -> None:
    resp = stack.http.post("/scheduler/jobs/alpha/stop")
    assert resp.status_code == 200
    body = resp.json()
    assert body["paused"] is True and body["active"] is False and body["enabled"] is True
    assert "paused" in body["message"]
    assert body["job"]["status"] == "paused" and body["job"]["next_run"] is None
    assert stack.http.post("/scheduler/jobs/alpha/stop").json()["message"] == "already paused"
    st = stack.http.get("/scheduler/status").json()
    assert st["jobs_by_state"]["paused"] == 2
    assert 'stocksched_job_paused{job="alpha"} 1.0' in stack.http.get("/metrics").text

    resp = stack.http.post("/scheduler/jobs/alpha/start")
    body = resp.json()
    assert resp.status_code == 200 and body["paused"] is False and body["active"] is True
    assert body["message"].startswith("resumed; next run at ")
    assert body["job"]["status"] == "pending" and body["job"]["next_run"]
    assert 'stocksched_job_paused{job="alpha"} 0.0' in stack.http.get("/metrics").text


def _raw_metrics(stack: Stack, accept_encoding: str) -> httpx.Response:
    """GET /metrics and keep the body exactly as sent (httpx would decompress it)."""
    headers = {"Accept-Encoding": accept_encoding}
    with stack.http.stream("GET", "/metrics", headers=headers) as resp:
        resp._content = b"".join(resp.iter_raw())
    return resp


def test_a_scraper_asking_for_gzip_gets_the_same_exposition_compressed(stack: Stack) -> None:
    stack.trigger_and_wait("alpha")
    plain = _raw_metrics(stack, "identity")
    assert "content-encoding" not in plain.headers
    assert b'stocksched_job_runs_total{job="alpha"' in plain.content
    # What Prometheus sends (scrape.go: acceptEncodingHeader).
    zipped = _raw_metrics(stack, "gzip")
    assert zipped.status_code == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["content-type"].startswith("text/plain; version=")
    assert "accept-encoding" in zipped.headers["vary"].lower()
    body = gzip.decompress(zipped.content)
    assert len(zipped.content) < len(body)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    runs = {
        tuple(sorted(s.labels.items())): s.value for s in families["stocksched_job_runs"].samples
    }
    assert runs[(("job", "alpha"), ("status", "success"), ("trigger", "manual"))] == 1
    assert "stocksched_job_last_run_timestamp_seconds" in families
    refused = _raw_metrics(stack, "gzip;q=0, identity")
    assert "content-encoding" not in refused.headers
    assert refused.content.startswith(b"# HELP")


def test_pause_and_resume_are_the_names_and_stop_and_start_their_aliases(stack: Stack) -> None:
    paused = stack.http.post("/scheduler/jobs/alpha/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    assert stack.http.post("/scheduler/jobs/alpha/stop").json()["message"] == "already paused"
    resumed = stack.http.post("/scheduler/jobs/alpha/resume")
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    assert (
        stack.http.post("/scheduler/jobs/alpha/start")
        .json()["message"]
        .startswith("was not paused; next run at ")
    )
    assert stack.http.post("/scheduler/jobs/alpha/stop").json()["paused"] is True
    assert stack.http.post("/scheduler/jobs/alpha/resume").json()["message"].startswith("resumed")
    assert_error(stack.http.post("/scheduler/jobs/nope/pause"), 404, "nope")
    assert_error(stack.http.post("/scheduler/jobs/nope/resume"), 404, "nope")


def test_resume_leaves_a_job_disabled_in_jobs_yaml_disabled(stack: Stack) -> None:
    body = stack.http.post("/scheduler/jobs/off/start").json()
    assert body["enabled"] is False and body["active"] is False and body["paused"] is False
    assert "enabled: false" in body["message"] and "stays disabled" in body["message"]
    assert body["job"]["status"] == "paused" and body["job"]["next_run"] is None


def test_a_paused_job_can_still_be_triggered_by_hand(stack: Stack) -> None:
    stack.http.post("/scheduler/jobs/alpha/stop")
    assert stack.trigger_and_wait("alpha")["status"] == "success"
    assert stack.http.get("/scheduler/jobs/alpha").json()["paused"] is True


@pytest.mark.redis
def test_pause_survives_a_restart_and_reloads(
    tmp_path: Path, redis_server: RedisServer, real_redis: Any
) -> None:
    first = Stack(tmp_path, redis_url=redis_server.url)
    assert first.http.post("/scheduler/jobs/alpha/stop").json()["paused"] is True
    first.close()

    second = Stack(tmp_path, redis_url=redis_server.url)  # a new daemon, same Redis
    try:
        job = second.http.get("/scheduler/jobs/alpha").json()
        assert job["paused"] is True and job["status"] == "paused" and job["next_run"] is None
        assert second.c.scheduler.job_states()["alpha"] == "paused"
        # A reload that changes the job's spec keeps the override.
        second.jobs_path.write_text(JOBS.replace("tickers: [AAA, BBB]", "tickers: [AAA, ZZZ]"))
        status = second.c.reloader.reload()
        assert status.ok and status.diff is not None and status.diff.changed == ["alpha"]
        job = second.http.get("/scheduler/jobs/alpha").json()
        assert job["paused"] is True and job["tickers"] == ["AAA", "ZZZ"]
        assert second.c.scheduler.job_states()["alpha"] == "paused"
    finally:
        second.close()


# -- security -------------------------------------------------------------------------------


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, token=TOKEN)
    yield s
    s.close()


@pytest.mark.parametrize("path", ["trigger", "pause", "resume", "stop", "start"])
@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ({}, "missing"),
        ({"Authorization": "Bearer wrong"}, "invalid token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "invalid token"),
        ({"Authorization": f"Basic {TOKEN}"}, "missing"),
        ({"Authorization": TOKEN}, "missing"),
    ],
)
def test_post_without_the_right_token_is_401(
    secured: Stack, path: str, headers: dict[str, str], needle: str
) -> None:
    resp = secured.http.post(f"/scheduler/jobs/alpha/{path}", headers=headers)
    assert_error(resp, 401, needle)
    assert resp.headers["www-authenticate"] == "Bearer"
    assert secured.http.get("/scheduler/jobs/alpha").json()["paused"] is False
    assert secured.http.get("/scheduler/jobs/alpha/runs").json() == []


def test_post_with_the_token_works_and_gets_on_loopback_need_none(secured: Stack) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert secured.http.post("/scheduler/jobs/alpha/stop", headers=auth).json()["paused"]
    assert secured.http.post("/scheduler/jobs/alpha/start", headers=auth).status_code == 200
    assert (
        secured.http.post(
            "/scheduler/jobs/alpha/trigger", headers={"authorization": f"bearer {TOKEN}"}
        ).status_code
        == 202
    )
    for path in ("/scheduler/status", "/scheduler/jobs", "/healthz", "/readyz", "/metrics"):
        assert secured.http.get(path).status_code == 200


def test_token_is_checked_before_the_job_exists(secured: Stack) -> None:
    # An unauthenticated caller learns nothing about which jobs exist.
    assert_error(secured.http.post("/scheduler/jobs/nope/trigger"), 401)


def test_without_a_token_configured_posts_are_open(stack: Stack) -> None:
    assert stack.http.post("/scheduler/jobs/alpha/stop").status_code == 200


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST", "::ffff:127.0.0.1"]
)
def test_loopback_bind_needs_no_token(host: str) -> None:
    check_bind(host, None)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.com", "fe80::1"]
)
def test_non_loopback_bind_without_token_is_refused(host: str) -> None:
    with pytest.raises(ApiConfigError, match="token"):
        check_bind(host, None)
    check_bind(host, TOKEN)  # with a token it is allowed


READS = (
    "/scheduler/status",
    "/scheduler/jobs",
    "/scheduler/jobs/alpha",
    "/scheduler/jobs/alpha/runs",
    "/openapi.json",
    "/ui/jobs",  # the page's fragments are reads too
    "/ui/daemon",
    "/ui/jobs/alpha",
)
PROBES = ("/healthz", "/readyz")


@pytest.fixture
def exposed(tmp_path: Path) -> Iterator[Stack]:
    """A daemon listening beyond loopback with a token: its reads are protected."""
    s = Stack(tmp_path, access=Access.for_listen("0.0.0.0", TOKEN, protect_metrics=False))
    yield s
    s.close()


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize(
    ("headers", "needle"),
    [({}, "missing"), ({"Authorization": "Bearer wrong"}, "invalid token")],
)
def test_reads_beyond_loopback_need_the_token(
    exposed: Stack, path: str, headers: dict[str, str], needle: str
) -> None:
    resp = exposed.http.get(path, headers=headers)
    assert_error(resp, 401, needle)
    assert resp.headers["www-authenticate"] == "Bearer"
    assert "alpha" not in resp.text and "hostname" not in resp.text


@pytest.mark.parametrize("path", READS)
def test_reads_beyond_loopback_with_the_token_work(exposed: Stack, path: str) -> None:
    resp = exposed.http.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200, resp.text


def test_probes_and_metrics_stay_open_beyond_loopback(exposed: Stack) -> None:
    for path in (*PROBES, "/metrics"):
        assert exposed.http.get(path).status_code == 200, path
    assert exposed.http.post("/scheduler/jobs/alpha/stop").status_code == 401


def test_protect_metrics_puts_metrics_behind_the_token(tmp_path: Path) -> None:
    s = Stack(tmp_path, access=Access.for_listen("127.0.0.1", TOKEN, protect_metrics=True))
    try:
        assert_error(s.http.get("/metrics"), 401, "missing")
        ok = s.http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and "stocksched_jobs" in ok.text
        for path in PROBES:
            assert s.http.get(path).status_code == 200, path
        assert s.http.get("/scheduler/jobs").status_code == 200  # loopback reads stay open
    finally:
        s.close()


def test_the_openapi_schema_documents_401_on_protected_reads(exposed: Stack) -> None:
    schema = exposed.http.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    paths = schema.json()["paths"]
    assert "401" in paths["/scheduler/jobs"]["get"]["responses"]
    assert "401" not in paths["/healthz"]["get"]["responses"]


def test_protect_metrics_without_a_token_is_refused() -> None:
    with pytest.raises(ApiConfigError, match="protect_metrics needs an API token"):
        Access.for_listen("127.0.0.1", None, protect_metrics=True)


def test_access_policy_follows_the_bind_address() -> None:
    assert not Access.for_listen("127.0.0.1", TOKEN, protect_metrics=False).reads
    assert not Access.for_listen("::1", TOKEN, protect_metrics=False).reads
    assert Access.for_listen("192.168.1.10", TOKEN, protect_metrics=False).reads
    with pytest.raises(ApiConfigError, match="token"):
        Access.for_listen("0.0.0.0", None, protect_metrics=False)


def test_load_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    assert load_token(path) == TOKEN
    path.write_text(" \n")
    with pytest.raises(ApiConfigError, match="empty"):
        load_token(path)
    with pytest.raises(ApiConfigError, match="cannot read"):
        load_token(tmp_path / "missing")
    with pytest.raises(ApiConfigError, match="cannot read"):
        load_token(tmp_path)  # a directory


def test_body_over_the_limit_is_413(stack: Stack) -> None:
    resp = stack.http.post("/scheduler/jobs/alpha/trigger", content=b"x" * 5000)
    assert_error(resp, 413, "4096")
    assert stack.http.get("/scheduler/jobs/alpha/runs").json() == []  # nothing ran
    resp = stack.http.post(
        "/scheduler/jobs/alpha/stop", content=b"{}", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 200  # small bodies are fine (and ignored)


def test_bad_content_length_is_400(stack: Stack) -> None:
    resp = stack.http.post("/scheduler/jobs/alpha/stop", headers={"content-length": "abc"})
    assert_error(resp, 400, "Content-Length")


# -- probes ------------------------------------------------------------------------------------


def test_healthz_and_readyz_ok(stack: Stack) -> None:
    assert stack.http.get("/healthz").json() == {"status": "ok"}
    assert stack.http.get("/readyz").json() == {"status": "ok"}


def test_healthz_is_alive_while_waiting_for_the_first_load(tmp_path: Path) -> None:
    s = Stack(tmp_path, load=False, start=False)
    try:
        resp = s.http.get("/healthz")
        assert resp.status_code == 200
        assert resp.json() == {"status": "waiting for Redis"}
        ready = s.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"] == "waiting for Redis: not connected yet"
    finally:
        s.close()


def test_healthz_fails_when_the_scheduler_is_not_running(tmp_path: Path) -> None:
    s = Stack(tmp_path)
    try:
        s.c.scheduler.stop(0)  # the scheduler thread has ended (as if it had died)
        resp = s.http.get("/healthz")
        assert resp.status_code == 503
        assert resp.json() == {"status": "unavailable", "error": "scheduler thread is not running"}
    finally:
        s.close()


def test_healthz_fails_when_the_scheduler_loop_is_stuck(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
    s = Stack(tmp_path, clock=clock)
    try:
        clock.advance(30)
        assert s.http.get("/healthz").status_code == 200  # idle but within 3 sleeps
        clock.advance(120)  # the loop has not come round for 150 s
        resp = s.http.get("/healthz")
        assert resp.status_code == 503 and "last ran 150s ago" in resp.json()["error"]
    finally:
        s.close()


def test_readyz_needs_a_loaded_config(tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text("jobs: [")
    s = Stack(tmp_path, load=False, start=False)
    try:
        assert not s.c.reloader.reload().ok
        resp = s.http.get("/readyz")
        assert resp.status_code == 503
        error = resp.json()["error"]
        assert "no valid config" in error and "jobs.yaml:2:1:" in error
    finally:
        s.close()


def test_redis_outage_is_503_json_not_500(stack: Stack) -> None:
    stack.redis_down()
    try:
        resp = stack.http.get("/readyz")
        assert resp.status_code == 503 and "redis" in resp.json()["error"]
        for method, path in [
            ("GET", "/scheduler/jobs"),
            ("GET", "/scheduler/jobs/alpha"),
            ("GET", "/scheduler/jobs/alpha/runs"),
            ("POST", "/scheduler/jobs/alpha/stop"),
        ]:
            assert_error(stack.http.request(method, path), 503, "storage unavailable")
        # Served from memory, so they keep answering during the outage.
        assert stack.http.get("/scheduler/status").status_code == 200
        assert stack.http.get("/healthz").status_code == 200
        assert stack.http.get("/metrics").status_code == 200
        errors = _samples(stack.http.get("/metrics").text)["stocksched_redis_errors_total"]
        assert errors[()] >= 4
    finally:
        stack.redis_down(False)
    assert stack.http.get("/readyz").status_code == 200


# -- metrics -------------------------------------------------------------------------------------


def _samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_has_every_issue_metric_with_job_series(stack: Stack) -> None:
    stack.trigger_and_wait("alpha")
    stack.trigger_and_wait("mixed")
    resp = stack.http.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    samples = _samples(resp.text)
    names = {
        n.removesuffix("_bucket")
        .removesuffix("_count")
        .removesuffix("_sum")
        .removesuffix("_created")
        for n in samples
    }
    missing = [m for m in ISSUE_METRICS if m not in names]
    assert not missing, missing
    runs = samples["stocksched_job_runs_total"]
    assert runs[(("job", "alpha"), ("status", "success"), ("trigger", "manual"))] == 1
    assert runs[(("job", "mixed"), ("status", "partial_success"), ("trigger", "manual"))] == 1
    fetches = samples["stocksched_ticker_fetches_total"]
    assert fetches[(("job", "mixed"), ("result", "failure"))] == 1
    # The original design's states: alpha and mixed ran (partial success completes), the rest wait.
    assert samples["stocksched_jobs"][(("state", "completed"),)] == 2
    assert samples["stocksched_jobs"][(("state", "pending"),)] == 2
    assert samples["stocksched_jobs"][(("state", "paused"),)] == 1
    assert samples["stocksched_build_info"][(("version", __version__),)] == 1
    assert samples["stocksched_config_last_reload_successful"][()] == 1
    assert samples["stocksched_job_running"][(("job", "alpha"),)] == 0


def test_jobs_by_state_gauge_is_computed_at_scrape_time(tmp_path: Path) -> None:
    s = Stack(tmp_path, latency=0.5)
    try:
        run_id = s.http.post("/scheduler/jobs/alpha/trigger").json()["run_id"]
        jobs = _samples(s.http.get("/metrics").text)["stocksched_jobs"]
        assert jobs[(("state", "running"),)] == 1 and jobs[(("state", "pending"),)] == 3
        s.wait_run("alpha", run_id)
        jobs = _samples(s.http.get("/metrics").text)["stocksched_jobs"]
        assert jobs[(("state", "running"),)] == 0 and jobs[(("state", "pending"),)] == 3
        assert jobs[(("state", "completed"),)] == 1
    finally:
        s.close()


def test_a_removed_jobs_series_disappear_from_metrics(stack: Stack) -> None:
    stack.trigger_and_wait("beta")
    assert 'job="beta"' in stack.http.get("/metrics").text
    stack.jobs_path.write_text(JOBS.replace("  - id: beta\n    tickers: [CCC]\n", ""))
    status = stack.c.reloader.reload()
    assert status.ok and status.diff is not None and status.diff.removed == ["beta"]
    text = stack.http.get("/metrics").text
    assert 'job="beta"' not in text
    assert 'job="alpha"' in text  # the others stay
    assert_error(stack.http.get("/scheduler/jobs/beta"), 404)


def test_metrics_pass_promtool_check(stack: Stack, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    stack.trigger_and_wait("alpha")
    stack.trigger_and_wait("broken")
    stack.http.post("/scheduler/jobs/beta/stop")
    text = stack.http.get("/metrics").text
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


# -- OpenAPI -------------------------------------------------------------------------------------


def test_openapi_documents_the_read_only_contract(stack: Stack) -> None:
    spec = stack.http.get("/openapi.json").json()
    assert "jobs.yaml" in spec["info"]["description"]
    assert "not created, edited or deleted" in spec["info"]["description"]
    methods = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert methods == {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/scheduler/status"),
        ("GET", "/scheduler/jobs"),
        ("GET", "/scheduler/jobs/{job_id}"),
        ("GET", "/scheduler/jobs/{job_id}/runs"),
        ("GET", "/data"),
        ("GET", "/data/{ticker}"),
        ("POST", "/scheduler/jobs/{job_id}/trigger"),
        ("POST", "/scheduler/jobs/{job_id}/pause"),
        ("POST", "/scheduler/jobs/{job_id}/resume"),
        ("POST", "/scheduler/jobs/{job_id}/stop"),
        ("POST", "/scheduler/jobs/{job_id}/start"),
    }
    for name, alias in (("pause", "stop"), ("resume", "start")):
        documented = spec["paths"][f"/scheduler/jobs/{{job_id}}/{name}"]["post"]
        old = spec["paths"][f"/scheduler/jobs/{{job_id}}/{alias}"]["post"]
        assert not documented.get("deprecated") and old["deprecated"] is True
        assert old["summary"].startswith(f"Alias of /{name}")
        assert documented["security"] == old["security"] == [{"HTTPBearer": []}]
    trigger = spec["paths"]["/scheduler/jobs/{job_id}/trigger"]["post"]
    assert {"202", "401", "404", "409", "413"} <= set(trigger["responses"])
    assert trigger["security"] == [{"HTTPBearer": []}]
    job_schema = spec["components"]["schemas"]["JobView"]["properties"]
    assert {"status", "paused", "last_run", "next_run", "last_result", "spec"} <= set(job_schema)
    param = spec["paths"]["/scheduler/jobs/{job_id}"]["get"]["parameters"][0]
    assert param["schema"]["pattern"] == "^[a-z0-9][a-z0-9_-]{0,63}$"


# -- the real server -------------------------------------------------------------------------------


def test_api_server_serves_on_a_free_port_and_stops(stack: Stack) -> None:
    server = ApiServer(stack.app, "127.0.0.1", 0)
    server.start()
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            assert client.post("/scheduler/jobs/alpha/trigger").status_code == 202
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=2)


def test_api_server_bounds_streamed_bodies(stack: Stack) -> None:
    server = ApiServer(stack.app, "127.0.0.1", 0)
    server.start()
    try:

        def chunks(n: int) -> Iterator[bytes]:
            for _ in range(n):
                yield b"y" * 1000

        with httpx.Client(base_url=server.url) as client:
            resp = client.post("/scheduler/jobs/alpha/stop", content=chunks(10))
            assert "content-length" not in resp.request.headers
            assert_error(resp, 413)
            assert client.get("/scheduler/jobs/alpha").json()["paused"] is False
            small = client.post("/scheduler/jobs/alpha/stop", content=chunks(2))
            assert small.status_code == 200 and small.json()["paused"] is True
    finally:
        server.stop()


def test_api_server_reports_a_port_in_use(stack: Stack) -> None:
    first = ApiServer(stack.app, "127.0.0.1", 0)
    first.start()
    try:
        with pytest.raises(ApiStartError, match=r"cannot listen on 127\.0\.0\.1"):
            ApiServer(stack.app, "127.0.0.1", first.port).start()
    finally:
        first.stop()


def test_api_server_on_ipv6_loopback(stack: Stack) -> None:
    server = ApiServer(stack.app, "::1", free_port())
    try:
        server.start()
    except ApiStartError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert server.url.startswith("http://[::1]:")
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    finally:
        server.stop()
