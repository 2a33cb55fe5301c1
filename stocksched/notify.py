"""The sd_notify protocol, written here so the daemon needs no extra (and unmaintained) package.

systemd's ``Type=notify`` services report their state by sending newline-separated
``KEY=VALUE`` assignments as one datagram to the AF_UNIX socket named in ``$NOTIFY_SOCKET``
(see sd_notify(3)). A name starting with ``@`` is an abstract-namespace address. When the
variable is unset (run from a terminal, in tests, under another supervisor) every call is a
no-op, so callers never need to check whether they run under systemd.

A notification must never take the daemon down: a send failure is logged once and ignored,
because the only consequence is that systemd's view is stale (the watchdog will then restart
a daemon that really is stuck).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from stocksched.logs import one_line

log = logging.getLogger(__name__)

# A full receive queue would block sendto(); the scheduler loop sends WATCHDOG=1, so bound it.
SEND_TIMEOUT_SECONDS = 1.0


def _address(socket_path: str) -> str | None:
    """Map $NOTIFY_SOCKET to a socket address; None for forms we do not speak (e.g. vsock:)."""
    if socket_path.startswith("@"):
        return "\0" + socket_path[1:]
    if socket_path.startswith("/"):
        return socket_path
    return None


class SystemdNotifier:
    """Sends READY/RELOADING/STOPPING/STATUS/WATCHDOG notifications to the service manager.

    Every sending method returns True when a datagram was delivered and False when it was a
    no-op (no ``$NOTIFY_SOCKET``) or failed; it never raises.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET", "")
        self._socket_path = path
        self._address = _address(path) if path else None
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._failure_logged = False
        if path and self._address is None:
            log.warning("NOTIFY_SOCKET=%s is not an AF_UNIX address; not notifying systemd", path)

    @property
    def enabled(self) -> bool:
        """True when notifications go somewhere (so callers can skip building STATUS text)."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        return self._send(["READY=1"], status)

    def reloading(self, status: str | None = None) -> bool:
        """MONOTONIC_USEC lets systemd tell this reload apart from an earlier READY=1."""
        usec = time.monotonic_ns() // 1000
        return self._send(["RELOADING=1", f"MONOTONIC_USEC={usec}"], status)

    def stopping(self, status: str | None = None) -> bool:
        return self._send(["STOPPING=1"], status)

    def status(self, text: str) -> bool:
        return self._send([], text)

    def watchdog(self) -> bool:
        return self._send(["WATCHDOG=1"], None)

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) says.

        None when no watchdog is configured for this process: WATCHDOG_USEC unset or invalid,
        or WATCHDOG_PID naming another process (the variables were inherited from a parent).
        """
        if not self._watchdog_usec:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                pid = int(self._watchdog_pid)
            except ValueError:
                return None
            if pid != os.getpid():
                return None
        return usec / 2 / 1_000_000

    def _send(self, assignments: list[str], status: str | None) -> bool:
        if self._address is None:
            return False
        lines = list(assignments)
        if status is not None:
            lines.append("STATUS=" + one_line(status))
        payload = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT_SECONDS)
                sock.sendto(payload, self._address)
        except OSError as exc:
            self._log_failure(exc)
            return False
        return True

    def _log_failure(self, exc: OSError) -> None:
        """Log the first failure loudly and later ones quietly: a dead socket stays dead."""
        if self._failure_logged:
            log.debug("sd_notify to %s failed again: %s", self._socket_path, exc)
            return
        self._failure_logged = True
        log.warning(
            "sd_notify to %s failed (further failures at debug level): %s", self._socket_path, exc
        )
