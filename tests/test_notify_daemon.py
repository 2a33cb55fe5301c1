"""The sd_notify sequence of a real `stocksched run`, received on a socket the test binds.

systemd's Type=notify contract, as the unit relies on it: READY=1 only once Redis answers,
the jobs are loaded and the HTTP API listens; STATUS= lines a person can read; WATCHDOG=1 at
half of WATCHDOG_USEC from the scheduler loop; RELOADING=1 (with MONOTONIC_USEC) then READY=1
around SIGHUP; STOPPING=1 on SIGTERM, then exit 0.
"""

from __future__ import annotations

import itertools
import re
import secrets
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from stocksched.storage import keys
from tests.conftest import RedisServer
from tests.test_e2e import start_daemon

pytestmark = pytest.mark.slow

JOBS = """\
version: 1
jobs:
  - id: demo-slow
    tickers: [AAA]
    schedule: "@every 1h"
    source: demo
    window: 10d
"""

# What `systemctl status` shows in its "Status:" line once the daemon runs.
RUNNING_STATUS = re.compile(
    r"^1 jobs; next demo-slow at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d; last reload ok$"
)


@dataclass(frozen=True)
class Note:
    """One datagram: when it arrived (this process's monotonic clock) and its assignments."""

    at: float
    raw: str

    @property
    def fields(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.raw.split("\n") if line)


class NotifySocket:
    """Stands in for systemd's notification socket; a thread keeps the queue drained."""

    def __init__(self, env_value: str) -> None:
        self.env_value = env_value  # what goes into $NOTIFY_SOCKET
        address = "\0" + env_value[1:] if env_value.startswith("@") else env_value
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(address)
        self._sock.settimeout(0.1)
        self.notes: list[Note] = []
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.notes.append(Note(time.monotonic(), data.decode("utf-8")))
                self._cond.notify_all()

    def wait_for(self, key: str, after: int = 0, timeout: float = 30.0) -> tuple[int, Note]:
        """The first note at index >= ``after`` that carries ``key``, and its index."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.notes)):
                    if key in self.notes[i].fields:
                        return i, self.notes[i]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {key} within {timeout}s; got {self.raws()}")
                self._cond.wait(remaining)

    def with_key(self, key: str) -> list[Note]:
        with self._cond:
            return [n for n in self.notes if key in n.fields]

    def raws(self) -> list[str]:
        with self._cond:
            return [n.raw for n in self.notes]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self._sock.close()


@pytest.fixture
def notify_path() -> Iterator[NotifySocket]:
    """A filesystem socket in a short directory (sun_path holds only 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        sock = NotifySocket(str(Path(d) / "notify"))
        try:
            yield sock
        finally:
            sock.close()


@pytest.fixture
def notify_abstract() -> Iterator[NotifySocket]:
    """An abstract-namespace socket, as systemd may hand out (``@`` in $NOTIFY_SOCKET)."""
    sock = NotifySocket(f"@stocksched-test-{secrets.token_hex(6)}")
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "jobs.yaml").write_text(JOBS)
    (tmp_path / "home").mkdir()
    return tmp_path


def _env(workdir: Path, notify: NotifySocket, watchdog_usec: str = "") -> dict[str, str]:
    # The state dir keeps yfinance's cache in the test's directory; an empty WATCHDOG_USEC
    # overrides one this test process might have inherited.
    return {
        "NOTIFY_SOCKET": notify.env_value,
        "WATCHDOG_USEC": watchdog_usec,
        "STOCKSCHED_STATE_DIR": str(workdir / "state"),
    }


def _healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        return int(resp.status)


def _stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM (if still running) and the daemon's output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def _waiting_for_redis(note: Note) -> None:
    status = note.fields["STATUS"]
    assert status.startswith("waiting for Redis: "), status
    assert "refused" in status.lower() or "connect" in status.lower(), status
    assert len(status) < 300, status


def test_ready_only_after_redis_answers_and_config_is_loaded(
    workdir: Path, redis_server: RedisServer, notify_path: NotifySocket
) -> None:
    redis_server.stop()
    proc = start_daemon(workdir, redis_server.url, env_extra=_env(workdir, notify_path))
    try:
        _, waiting = notify_path.wait_for("STATUS")
        _waiting_for_redis(waiting)
        time.sleep(2.0)
        assert proc.poll() is None, "the daemon gave up instead of waiting for Redis"
        assert not notify_path.with_key("READY"), notify_path.raws()
        assert all(
            n.fields["STATUS"].startswith("waiting for Redis")
            for n in notify_path.with_key("STATUS")
        )

        redis_server.start()
        _, ready = notify_path.wait_for("READY")
        # At READY=1 the jobs are in Redis and the API answers, with no grace period.
        assert redis_server.client().exists(keys.job_key("demo-slow"))
        assert _healthz(proc.port) == 200  # type: ignore[attr-defined]
        assert RUNNING_STATUS.match(ready.fields["STATUS"]), ready.raw
        assert ready.fields["READY"] == "1"

        stop_from = len(notify_path.notes)
        proc.send_signal(signal.SIGTERM)
        _, stopping = notify_path.wait_for("STOPPING", after=stop_from)
        assert stopping.fields["STOPPING"] == "1"
        assert proc.wait(timeout=30) == 0
    finally:
        out = _stop(proc)
        if not redis_server.running:
            redis_server.start()
    assert "Traceback" not in out, out
    # No WATCHDOG_USEC, no pings: a daemon outside a watchdog must not pretend to have one.
    assert not notify_path.with_key("WATCHDOG"), notify_path.raws()


def test_sigterm_while_waiting_for_redis_reports_stopping(
    workdir: Path, redis_server: RedisServer, notify_path: NotifySocket
) -> None:
    redis_server.stop()
    try:
        proc = start_daemon(workdir, redis_server.url, env_extra=_env(workdir, notify_path))
        try:
            _waiting_for_redis(notify_path.wait_for("STATUS")[1])
            proc.send_signal(signal.SIGTERM)
            _, stopping = notify_path.wait_for("STOPPING")
            assert proc.wait(timeout=30) == 0
        finally:
            out = _stop(proc)
    finally:
        redis_server.start()
    assert stopping.fields["STOPPING"] == "1"
    assert "READY" not in "".join(notify_path.raws())
    assert "Traceback" not in out, out


def test_watchdog_reload_and_stop_sequence(
    workdir: Path,
    redis_server: RedisServer,
    real_redis: redis.Redis,
    notify_abstract: NotifySocket,
) -> None:
    notify = notify_abstract
    proc = start_daemon(
        workdir, redis_server.url, env_extra=_env(workdir, notify, watchdog_usec="1000000")
    )
    try:
        i, ready = notify.wait_for("READY")
        assert RUNNING_STATUS.match(ready.fields["STATUS"]), ready.raw

        # WATCHDOG_USEC=1s: a ping every 0.5 s from the scheduler loop.
        start = time.monotonic()
        time.sleep(3.0)
        end = time.monotonic()
        pings = [n.at for n in notify.with_key("WATCHDOG") if start <= n.at < end]
        assert 4 <= len(pings) <= 9, pings
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert 0.3 <= statistics.median(gaps) <= 0.8, gaps
        assert max(gaps) < 1.0, f"a gap reached the watchdog timeout: {gaps}"

        # systemctl reload: RELOADING=1 stamped with CLOCK_MONOTONIC, then READY=1.
        before_usec = time.monotonic_ns() // 1000
        proc.send_signal(signal.SIGHUP)
        j, reloading = notify.wait_for("RELOADING", after=i + 1)
        after_usec = time.monotonic_ns() // 1000
        assert reloading.fields["RELOADING"] == "1"
        assert before_usec <= int(reloading.fields["MONOTONIC_USEC"]) <= after_usec
        k, ready = notify.wait_for("READY", after=j + 1)
        assert RUNNING_STATUS.match(ready.fields["STATUS"]), ready.raw

        # A reload of a broken file still ends in READY=1, and the status says what happened.
        (workdir / "jobs.yaml").write_text(JOBS.replace("schedule:", "schedul:"))
        proc.send_signal(signal.SIGHUP)
        j, _ = notify.wait_for("RELOADING", after=k + 1)
        k, ready = notify.wait_for("READY", after=j + 1)
        status = ready.fields["STATUS"]
        assert status.startswith("1 jobs; next demo-slow at "), status
        assert "last reload FAILED" in status and "old config kept" in status, status

        proc.send_signal(signal.SIGTERM)
        _, stopping = notify.wait_for("STOPPING", after=k + 1)
        assert stopping.fields["STOPPING"] == "1"
        assert proc.wait(timeout=30) == 0
    finally:
        out = _stop(proc)
    assert "Traceback" not in out, out
