"""Issue 9.11: while the daemon waits for Redis at startup, its probes say why.

The HTTP API listens before Redis is waited for: /healthz answers 200 (the process is
alive, "waiting for Redis") and /readyz 503 with the reason (nothing listening, a refused
password), so an operator or a load balancer sees the cause instead of "connection
refused"; once Redis answers, the daemon becomes ready without a restart.
"""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import HOURLY_DEMO_JOBS, Launch, Replica, wait_for, wait_ready
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.slow


def waiting_reason(replica: Replica) -> str | None:
    """/readyz's reason once the first connection attempt has failed."""
    got = probe(replica, "/readyz")
    if got is None or got[1].get("error") in (None, "waiting for Redis: not connected yet"):
        return None
    status, body = got
    assert status == 503
    assert body["status"] == "unavailable"
    return str(body["error"])


def probe(replica: Replica, path: str) -> tuple[int, dict[str, Any]] | None:
    """(status, body) of a probe, or None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{replica.port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


def test_probes_answer_while_redis_is_down_and_ready_once_it_comes_up(
    tmp_path: Path, launch: Launch
) -> None:
    (tmp_path / "jobs.yaml").write_text(HOURLY_DEMO_JOBS)
    port = free_port()  # nothing listens here yet
    daemon = launch("a", redis_url=f"redis://127.0.0.1:{port}/0")

    live = wait_for(lambda: probe(daemon, "/healthz"), 30, alive=[daemon])
    assert live == (200, {"status": "waiting for Redis"})
    reason = wait_for(lambda: waiting_reason(daemon), 10, alive=[daemon])
    assert reason.startswith("waiting for Redis: ")
    assert "refused" in reason.lower()

    with tempfile.TemporaryDirectory() as d:
        server = RedisServer(port=port, dir=Path(d))
        server.start()
        try:
            wait_ready(daemon)  # retried with backoff: no restart needed
            assert probe(daemon, "/healthz") == (200, {"status": "ok"})
            daemon.stop()
        finally:
            server.stop()


def test_readyz_names_a_refused_password(
    tmp_path: Path, launch: Launch, redis_server: RedisServer
) -> None:
    (tmp_path / "jobs.yaml").write_text(HOURLY_DEMO_JOBS)
    secret = tmp_path / "redis-password"
    secret.write_text("wrong password\n")
    admin = redis_server.client()
    admin.config_set("requirepass", "the right one")
    try:
        daemon = launch("a", env={"STOCKSCHED_REDIS_PASSWORD_FILE": str(secret)})
        assert wait_for(lambda: probe(daemon, "/healthz"), 30, alive=[daemon]) == (
            200,
            {"status": "waiting for Redis"},
        )
        reason = wait_for(lambda: waiting_reason(daemon), 10, alive=[daemon])
        assert reason.startswith("waiting for Redis: ")
        assert "password" in reason.lower()
        daemon.stop()
    finally:
        admin.execute_command("AUTH", "the right one")
        admin.config_set("requirepass", "")
        admin.close()
