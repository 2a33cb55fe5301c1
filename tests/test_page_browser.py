"""The operator page in a real browser: Debian's Chromium driven by Playwright, against a
real daemon with demo jobs on a real redis-server (issue 13)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from stocksched.storage import keys
from tests.daemons import Launch, Replica, wait_for, wait_ready
from tests.servers import RedisServer

pytestmark = pytest.mark.slow

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HTML_NAME = "<b>Bold</b> <img src=x onerror=alert(1)> & co"
JOBS = f"""\
version: 1
defaults:
  source: demo
  window: 10d
  schedule: "@every 1h"
jobs:
  - id: alpha
    name: "{HTML_NAME}"
    tickers: [AAA, BBB]
  - id: beta
    tickers: [CCC]
    timezone: America/New_York
  - id: gamma
    tickers: [DDD]
    enabled: false
  - id: many
    tickers: [{", ".join(f"T{i:03d}" for i in range(1500))}]
"""
TOKEN = "page-test-token-0123456789"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Page:
    """One tab on the daemon's page, every request outside the daemon refused and noted."""

    def __init__(self, browser: Any, daemon: Replica, width: int = 1280) -> None:
        self.base = f"http://127.0.0.1:{daemon.port}"
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.tab = self.context.new_page()
        self.outside: list[str] = []
        self.dialogs: list[str] = []
        self.tab.route("**/*", self._route)
        self.tab.on("dialog", self._dialog)

    def _route(self, route: Any) -> None:
        if route.request.url.startswith(self.base):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.accept()

    def open(self, path: str = "/") -> Any:
        self.tab.goto(self.base + path)
        return self.tab

    def close(self) -> None:
        self.context.close()


def start(launch: Launch, tmp_path: Path, token: bool = False) -> Replica:
    (tmp_path / "jobs.yaml").write_text(JOBS)
    config = None
    if token:
        (tmp_path / "token").write_text(TOKEN + "\n")
        config = tmp_path / "stocksched.yaml"
        config.write_text(f"http:\n  token_file: {tmp_path / 'token'}\n")
    daemon = launch("page", config=config)
    wait_ready(daemon)
    return daemon


def test_the_jobs_table_lists_every_job_with_its_next_run_offline(
    launch: Launch, tmp_path: Path, browser: Any
) -> None:
    daemon = start(launch, tmp_path)
    page = Page(browser, daemon)
    tab = page.open()
    rows = tab.locator("tr[data-job]")
    rows.first.wait_for()
    assert rows.count() == 4
    for job in ("alpha", "beta"):
        next_cell = tab.locator(f"#job-{job} td.next")
        assert "UTC" in next_cell.inner_text()
    assert "EST" in tab.locator("#job-beta td.next").inner_text() or "EDT" in (
        tab.locator("#job-beta td.next").inner_text()
    )
    assert tab.locator("#job-gamma td.state").inner_text() == "disabled"
    assert "none" in tab.locator("#job-gamma td.next").inner_text()
    # The daemon panel: version, config, storage up.
    daemon_panel = tab.locator("#daemon")
    wait_for(lambda: "Version" in daemon_panel.inner_text(), 10)
    assert "up" in daemon_panel.inner_text() and "1 live" in daemon_panel.inner_text()
    # A name with HTML in it is text: no element made of it, no script run.
    name = tab.locator("#job-alpha .name")
    assert name.inner_text() == HTML_NAME
    assert tab.locator("#job-alpha .name b, #job-alpha .name img").count() == 0
    assert page.dialogs == []
    # Everything came from the daemon itself: no CDN, works with the network gone.
    assert page.outside == []
    page.close()


def test_run_now_shows_the_run_in_the_history_without_a_reload(
    launch: Launch, tmp_path: Path, browser: Any
) -> None:
    daemon = start(launch, tmp_path)
    page = Page(browser, daemon)
    tab = page.open("/jobs/alpha")
    tab.locator("#job h2").wait_for()
    assert tab.locator("tr[data-run]").count() == 0
    loads: list[str] = []
    tab.on("load", lambda _: loads.append("load"))
    tab.get_by_role("button", name="Run now").click()
    assert page.dialogs == ["Run alpha now?"]
    tab.locator("#message", has_text="Run of alpha started").wait_for()
    tab.locator("tr[data-run] .badge", has_text="success").first.wait_for(timeout=15_000)
    assert loads == []  # the history updated in place
    fresh = tab.locator("section.panel", has_text="Data freshness")
    wait_for(lambda: "AAA" in fresh.inner_text() and "BBB" in fresh.inner_text(), 10)
    page.close()


def test_run_now_on_a_running_job_says_it_is_already_running(
    launch: Launch, tmp_path: Path, browser: Any
) -> None:
    daemon = start(launch, tmp_path)
    page = Page(browser, daemon)
    tab = page.open()
    run_now = tab.locator("#job-many").get_by_role("button", name="Run now")
    run_now.click()
    tab.locator("#message", has_text="Run of many started").wait_for()
    assert daemon.request("/scheduler/jobs/many")["running"]  # 1,500 tickers take a while
    run_now.click()
    tab.locator("#message", has_text="Already running (HTTP 409)").wait_for()
    assert "job 'many' is already running (run many:m" in tab.locator("#message").inner_text()
    page.close()


def test_pause_and_resume_change_the_state_shown_and_in_redis(
    launch: Launch, tmp_path: Path, browser: Any, redis_server: RedisServer
) -> None:
    daemon = start(launch, tmp_path)
    client: redis.Redis = redis_server.client()
    page = Page(browser, daemon)
    tab = page.open()
    state = tab.locator("#job-beta td.state")
    state.wait_for()
    tab.locator("#job-beta").get_by_role("button", name="Pause").click()
    tab.locator("#job-beta td.state", has_text="paused").wait_for()
    assert client.sismember(keys.paused_index_key(), "beta")
    tab.locator("#job-beta").get_by_role("button", name="Resume").click()
    wait_for(lambda: state.inner_text() != "paused", 10)
    assert not client.sismember(keys.paused_index_key(), "beta")
    assert page.dialogs[0].startswith("Pause beta?") and page.dialogs[1] == "Resume beta?"
    page.close()


def test_an_action_without_the_token_says_so_and_works_with_it(
    launch: Launch, tmp_path: Path, browser: Any
) -> None:
    daemon = start(launch, tmp_path, token=True)
    page = Page(browser, daemon)
    tab = page.open()
    tab.locator("#job-beta").wait_for()
    tab.locator("#job-beta").get_by_role("button", name="Run now").click()
    tab.locator("#message", has_text="HTTP 401").wait_for()
    assert "needs its API token" in tab.locator("#message").inner_text()
    tab.locator("#token").fill(TOKEN)
    tab.get_by_role("button", name="Use", exact=True).click()
    tab.locator("#job-beta").get_by_role("button", name="Run now").click()
    tab.locator("#message", has_text="Run of beta started").wait_for()
    # Kept for the tab only: not in a cookie, not in the URL.
    assert page.context.cookies() == [] and TOKEN not in tab.url
    page.close()


def test_the_page_fits_a_phone_width(launch: Launch, tmp_path: Path, browser: Any) -> None:
    daemon = start(launch, tmp_path)
    page = Page(browser, daemon, width=390)
    tab = page.open()
    tab.locator("tr[data-job]").first.wait_for()
    overflow = tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    page.close()
