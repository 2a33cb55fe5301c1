"""Issue 9.10: a daemon listening beyond loopback with a token protects its reads.

Job specs, run history and status (config path, hostname, pid) are not for a network:
every route but the probes needs the token there, ``/metrics`` too when
``http.protect_metrics`` is set, and the CLI sends the token on reads.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.daemons import HOURLY_DEMO_JOBS, Launch, Replica, wait_ready

pytestmark = pytest.mark.slow

TOKEN = "exposed-token-123"


def get(replica: Replica, path: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://127.0.0.1:{replica.port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stocksched", *argv], capture_output=True, text=True, timeout=30
    )


def test_reads_need_the_token_on_a_non_loopback_bind(tmp_path: Path, launch: Launch) -> None:
    (tmp_path / "jobs.yaml").write_text(HOURLY_DEMO_JOBS)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    settings = tmp_path / "stocksched.yaml"
    settings.write_text("http:\n  protect_metrics: false\n")
    daemon = launch(
        "a",
        env={"STOCKSCHED_TOKEN_FILE": str(token)},
        config=settings,
        listen_host="0.0.0.0",
    )
    wait_ready(daemon)  # /readyz is open whatever the bind
    for path in ("/scheduler/status", "/scheduler/jobs", "/scheduler/jobs/demo/runs", "/ui/jobs"):
        assert get(daemon, path) == 401, path
        assert get(daemon, path, "wrong") == 401, path
        assert get(daemon, path, TOKEN) == 200, path
    for path in ("/healthz", "/readyz", "/metrics"):
        assert get(daemon, path) == 200, path

    url = f"http://127.0.0.1:{daemon.port}"
    refused = cli("jobs", "--url", url)
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr
    listed = cli("jobs", "--url", url, "--token-file", str(token))
    assert listed.returncode == 0, listed.stderr
    assert "demo" in listed.stdout
    daemon.stop()


def test_protect_metrics_needs_the_token_for_metrics(tmp_path: Path, launch: Launch) -> None:
    (tmp_path / "jobs.yaml").write_text(HOURLY_DEMO_JOBS)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    daemon = launch(
        "a", env={"STOCKSCHED_TOKEN_FILE": str(token), "STOCKSCHED_PROTECT_METRICS": "true"}
    )
    wait_ready(daemon)
    assert get(daemon, "/metrics") == 401
    assert get(daemon, "/metrics", TOKEN) == 200
    assert get(daemon, "/healthz") == 200
    daemon.stop()
