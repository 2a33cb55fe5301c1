"""Make docs/page.png and docs/page-phone.png: the operator page of a daemon running demo
jobs on a private redis-server, in Debian's Chromium (``python docs/screenshot.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import free_port, private_redis  # noqa: E402

JOBS = """\
version: 1
defaults: {source: demo, window: 30d}
jobs:
  - {id: daily-tech, name: Daily tech stocks, tickers: [AAPL, MSFT, NVDA],
     schedule: "0 17 * * 1-5", timezone: America/New_York}
  - {id: europe-close, name: European close, tickers: [SAP.DE, ASML.AS],
     schedule: "45 17 * * 1-5", timezone: Europe/Berlin}
  - {id: hourly-index, tickers: [SPY, QQQ], schedule: "@every 1h"}
  - {id: retired, tickers: [XYZ], schedule: "@daily", enabled: false}
"""


def post(port: int, path: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST")
    urllib.request.urlopen(req, timeout=10).read()


def main() -> None:
    from playwright.sync_api import sync_playwright

    with private_redis() as r, tempfile.TemporaryDirectory() as d:
        jobs = Path(d) / "jobs.yaml"
        jobs.write_text(JOBS)
        port = free_port()
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stocksched",
                "run",
                "--jobs",
                str(jobs),
                "--redis-url",
                r.url,
                "--listen",
                f"127.0.0.1:{port}",
            ],
            cwd=d,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                try:
                    json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz").read())
                    break
                except OSError:
                    time.sleep(0.1)
            for job in ("daily-tech", "europe-close", "hourly-index"):
                post(port, f"/scheduler/jobs/{job}/trigger")
            post(port, "/scheduler/jobs/hourly-index/pause")
            time.sleep(2)
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox"]
                )
                for name, width, path in (
                    ("page", 1280, "/"),
                    ("page-phone", 390, "/"),
                    ("page-job", 1280, "/jobs/daily-tech"),
                ):
                    tab = browser.new_page(viewport={"width": width, "height": 800})
                    tab.goto(f"http://127.0.0.1:{port}{path}")
                    tab.wait_for_timeout(1500)
                    tab.screenshot(path=str(REPO / "docs" / f"{name}.png"), full_page=True)
                browser.close()
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)


if __name__ == "__main__":
    main()
