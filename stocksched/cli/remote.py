"""The HTTP client of a running daemon (ApiClient), and where to find the daemon.

Kept light (httpx, no FastAPI) so the commands start fast. Every failure is one of three
errors: DaemonUrlError (an address that is not a daemon URL), DaemonUnreachableError (no
answer) and ApiError (the daemon answered with an error).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from stocksched.settings import split_listen

REQUEST_TIMEOUT_S = 10.0


class DaemonUnreachableError(Exception):
    """No answer from the daemon's address (not running, wrong URL, firewall)."""


class ApiError(Exception):
    """The daemon answered with an error; ``message`` is its ``error`` field."""

    def __init__(self, status: int, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.body = body or {}  # the whole JSON error, e.g. a 409's ``run_id``


def url_from_listen(listen: str) -> str:
    """``http://HOST:PORT`` to reach a daemon listening on ``listen`` from this machine."""
    host, port = split_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class DaemonUrlError(ValueError):
    """A daemon address that cannot be used (a usage error, not an unreachable daemon)."""


def daemon_url(value: str, source: str = "--url") -> str:
    """The base URL for ``value``: ``http(s)://HOST[:PORT][/PATH]`` or a bare ``HOST:PORT``.

    A bare address is written the way ``http.listen`` is (``127.0.0.1:9731``,
    ``[::1]:9731``; ``0.0.0.0`` and ``::`` mean this machine) and must name its port.
    A URL with a scheme must be http or https and name a host; without a port it uses
    the scheme's (80, 443), as behind a reverse proxy.
    """
    text = value.strip()
    hint = "expected http(s)://HOST:PORT or HOST:PORT, e.g. http://127.0.0.1:9731"
    if "://" not in text:
        try:
            return url_from_listen(text)
        except ValueError:
            what = "invalid address" if ":" in text else "no port"
            raise DaemonUrlError(f"{source} {value!r}: {what}; {hint}") from None
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise DaemonUrlError(f"{source} {value!r}: not an http(s) URL; {hint}")
    try:
        _ = parts.port  # raises ValueError for a port that is not a number (or > 65535)
    except ValueError:
        raise DaemonUrlError(f"{source} {value!r}: invalid port; {hint}") from None
    if not parts.hostname:
        raise DaemonUrlError(f"{source} {value!r}: no host; {hint}")
    return text


class ApiClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise DaemonUnreachableError(
                f"cannot reach the stocksched daemon at {self.base_url}: "
                f"{exc or type(exc).__name__}"
            ) from None
        if resp.is_success:
            try:
                return resp.json()
            except ValueError:
                raise ApiError(
                    resp.status_code, "the answer is not JSON; is this URL a stocksched daemon?"
                ) from None
        raise ApiError(resp.status_code, _error_message(resp), _error_body(resp))

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", "/scheduler/status")
        return data

    def jobs(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._request("GET", "/scheduler/jobs")
        return data

    def runs(self, job_id: str, limit: int = 20) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._request(
            "GET", f"/scheduler/jobs/{_seg(job_id)}/runs", params={"limit": limit}
        )
        return data

    def trigger(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self._request("POST", f"/scheduler/jobs/{_seg(job_id)}/trigger")
        return data

    def pause(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self._request("POST", f"/scheduler/jobs/{_seg(job_id)}/pause")
        return data

    def resume(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self._request("POST", f"/scheduler/jobs/{_seg(job_id)}/resume")
        return data

    def wait_for_run(
        self, job_id: str, run_id: str, timeout: float, max_poll_s: float = 1.0
    ) -> dict[str, Any] | None:
        """The run's history entry once it has finished; None if ``timeout`` passes first.

        Polls quickly at first (most runs are short), then backs off to ``max_poll_s``.
        """
        deadline = time.monotonic() + timeout
        poll = 0.05
        while True:
            for run in self.runs(job_id, limit=50):
                if run.get("run_id") == run_id:
                    return run
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
            poll = min(poll * 1.5, max_poll_s)


def _seg(job_id: str) -> str:
    return quote(job_id, safe="")


def _error_body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return resp.reason_phrase or "error"
