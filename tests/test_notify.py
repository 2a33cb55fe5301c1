"""sd_notify: the exact datagrams systemd receives, on a real AF_UNIX socket the test binds."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stocksched.notify import SystemdNotifier


class Receiver:
    """A bound datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def recv(self) -> str:
        return self.sock.recv(4096).decode("utf-8")

    def assert_empty(self) -> None:
        self.sock.setblocking(False)
        try:
            with pytest.raises(BlockingIOError):
                self.sock.recv(4096)
        finally:
            self.sock.setblocking(True)


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        sock = _bind(path)
        notify_socket = path
    else:
        name = f"stocksched-test-{uuid.uuid4().hex}"
        sock = _bind("\0" + name)
        notify_socket = "@" + name
    with sock:
        yield Receiver(sock, notify_socket)


def test_ready_sends_ready(receiver: Receiver) -> None:
    notifier = SystemdNotifier(receiver.notify_socket)
    assert notifier.enabled
    assert notifier.ready() is True
    assert receiver.recv() == "READY=1"


def test_ready_with_status_is_one_datagram(receiver: Receiver) -> None:
    SystemdNotifier(receiver.notify_socket).ready(status="3 jobs; next prices_daily at 18:00")
    assert receiver.recv() == "READY=1\nSTATUS=3 jobs; next prices_daily at 18:00"
    receiver.assert_empty()


def test_reloading_carries_monotonic_usec(receiver: Receiver) -> None:
    before = time.monotonic_ns() // 1000
    SystemdNotifier(receiver.notify_socket).reloading()
    after = time.monotonic_ns() // 1000
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", receiver.recv())
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_stopping_status_and_watchdog(receiver: Receiver) -> None:
    notifier = SystemdNotifier(receiver.notify_socket)
    notifier.stopping()
    notifier.status("reload failed: jobs.yaml:4:3: unknown field")
    notifier.watchdog()
    assert receiver.recv() == "STOPPING=1"
    assert receiver.recv() == "STATUS=reload failed: jobs.yaml:4:3: unknown field"
    assert receiver.recv() == "WATCHDOG=1"


def test_status_newlines_cannot_inject_assignments(receiver: Receiver) -> None:
    SystemdNotifier(receiver.notify_socket).status("bad config\nREADY=1")
    assert receiver.recv() == "STATUS=bad config READY=1"


def test_socket_taken_from_environment(receiver: Receiver) -> None:
    notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": receiver.notify_socket})
    notifier.ready()
    assert receiver.recv() == "READY=1"


def test_reads_process_environment_by_default(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.notify_socket)
    SystemdNotifier().watchdog()
    assert receiver.recv() == "WATCHDOG=1"


@pytest.mark.parametrize(
    "call",
    [
        lambda n: n.ready("x"),
        lambda n: n.reloading(),
        lambda n: n.stopping(),
        lambda n: n.status("x"),
        lambda n: n.watchdog(),
    ],
)
def test_noop_without_notify_socket(call: Callable[[SystemdNotifier], bool]) -> None:
    notifier = SystemdNotifier(environ={})
    assert not notifier.enabled
    assert call(notifier) is False


def test_unset_process_environment_is_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert SystemdNotifier().ready() is False


def test_unsupported_address_is_noop(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stocksched.notify"):
        notifier = SystemdNotifier("vsock:2:1234")
    assert not notifier.enabled
    assert notifier.ready() is False
    assert "not an AF_UNIX address" in caplog.text


def test_send_failure_never_raises_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier(str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.DEBUG, logger="stocksched.notify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "nobody-listens.sock" in warnings[0].getMessage()


def test_recovers_when_socket_appears(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    notifier = SystemdNotifier(str(path))
    assert notifier.ready() is False
    with _bind(str(path)) as sock:
        assert notifier.ready() is True
        assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert SystemdNotifier(environ=env).watchdog_interval() == expected


def test_watchdog_interval_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert SystemdNotifier().watchdog_interval() == 10.0


def test_watchdog_interval_independent_of_notify_socket() -> None:
    """systemd sets both, but the interval maths must not depend on having a socket."""
    assert SystemdNotifier(environ={"WATCHDOG_USEC": "8000000"}).watchdog_interval() == 4.0
