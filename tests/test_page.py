"""The operator page's server side, without a browser: shells, fragments, CSP, escaping,
freshness, the stale mark (the browser tests are tests/test_page_browser.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stocksched.http.page import CSP, job_row
from tests.test_api import Stack

JOBS = """\
version: 1
jobs:
  - id: alpha
    name: "<script>alert('x')</script> & <b>co</b>"
    tickers: [AAA, BBB]
    schedule: "@every 1h"
    source: demo
    window: 10d
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, jobs=JOBS)
    yield s
    s.close()


@pytest.mark.parametrize("path", ["/", "/jobs/alpha", "/ui/jobs", "/ui/daemon", "/ui/jobs/alpha"])
def test_every_page_response_forbids_inline_and_foreign_scripts(stack: Stack, path: str) -> None:
    resp = stack.http.get(path)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-security-policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
    assert "<script>" not in resp.text  # no inline script: every one is src="/static/..."
    assert "http://" not in resp.text.replace('href="/', "") and "https://" not in resp.text


def test_the_shell_loads_only_files_the_package_ships(stack: Stack) -> None:
    shell = stack.http.get("/").text
    for name, kind in (
        ("htmx.min.js", "javascript"),
        ("page.js", "javascript"),
        ("page.css", "css"),
    ):
        assert f"/static/{name}" in shell
        resp = stack.http.get(f"/static/{name}")
        assert resp.status_code == 200 and kind in resp.headers["content-type"]
    assert stack.http.get("/static/../app.py").status_code == 404
    assert stack.http.get("/static/nothing.js").status_code == 404
    assert stack.http.get("/docs").status_code == 404  # its Swagger UI would need a CDN


def test_a_job_name_with_html_is_escaped(stack: Stack) -> None:
    html = stack.http.get("/ui/jobs").text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;co&lt;/b&gt;" in html
    assert "<b>co</b>" not in html


def test_the_job_fragment_shows_runs_failures_and_freshness(stack: Stack) -> None:
    stack.trigger_and_wait("alpha")
    html = stack.http.get("/ui/jobs/alpha").text
    assert 'data-run="alpha:m' in html and ">manual<" in html
    assert "<td>AAA</td>" in html and "<td>BBB</td>" in html  # freshness rows
    assert "Nothing stored yet" not in html
    assert "start: null" not in html and "tickers: [AAA, BBB]" in html  # the spec, no nulls


def test_a_job_without_a_success_for_two_periods_is_marked(stack: Stack) -> None:
    job = stack.facade.get_job("alpha")
    assert job.success_due_by is not None
    created = job.created_at
    assert created + timedelta(hours=1) < job.success_due_by <= created + timedelta(hours=2)
    assert job_row(job, datetime.now(UTC))["alert"] == ""
    late = job_row(job, job.success_due_by + timedelta(seconds=1))
    assert late["alert"] == "no success in over twice its period (none yet)"
    stack.trigger_and_wait("alpha")
    done = stack.facade.get_job("alpha")
    assert done.last_success is not None and done.success_due_by is not None
    assert done.success_due_by > done.last_success + timedelta(hours=1)


def test_a_running_job_shows_how_many_of_its_tickers_are_done(tmp_path: Path) -> None:
    import time

    six = JOBS.replace("tickers: [AAA, BBB]", "tickers: [AAA, BBB, CCC, DDD, EEE, FFF]")
    s = Stack(tmp_path, jobs=six, latency=0.5)  # 4 tickers at a time: 4 done, then 2 more
    try:
        run_id = s.http.post("/scheduler/jobs/alpha/trigger").json()["run_id"]
        job = s.facade.get_job("alpha")
        deadline = time.monotonic() + 5
        while (job.progress is None or job.progress.done == 0) and time.monotonic() < deadline:
            time.sleep(0.05)
            job = s.facade.get_job("alpha")
        assert job.running and job.progress is not None and job.progress.total == 6
        row = job_row(job, datetime.now(UTC))
        assert row["state"] == f"running {job.progress.done} of 6 tickers"
        s.wait_run("alpha", run_id)
        assert s.facade.get_job("alpha").progress is None
    finally:
        s.close()
