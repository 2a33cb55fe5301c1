"""Who may call what: the API token, the bind check and the routes' access policy."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from stocksched.secretfile import SecretFileError, read_secret_file


class ApiConfigError(ValueError):
    """The API cannot be started safely with these settings (the daemon must not start)."""


class NotAuthenticatedError(Exception):
    """A request to a protected route without the configured bearer token."""


def load_token(path: Path) -> str:
    """The API token in ``path`` (stripped); ApiConfigError if unreadable or empty."""
    try:
        return read_secret_file(path, "API token")
    except SecretFileError as exc:
        raise ApiConfigError(str(exc)) from None


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_bind(listen_host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token."""
    if token is None and not is_loopback(listen_host):
        raise ApiConfigError(
            f"refusing to listen on {listen_host!r} without an API token: set http.token_file "
            "(or STOCKSCHED_TOKEN_FILE) or listen on 127.0.0.1"
        )


@dataclass(frozen=True)
class Access:
    """Which routes need the bearer token: the API's whole access policy, decided once.

    POSTs change state, so they need the token whenever one is configured. Reads need it
    when the daemon listens beyond loopback (the host's own users may read; a network may
    not). The probes never do (orchestrators call them without credentials); ``/metrics``
    only when the operator asks, since Prometheus can send a token but often is not set up
    to.
    """

    token: str | None = None
    reads: bool = False
    metrics: bool = False

    @classmethod
    def for_listen(cls, host: str, token: str | None, *, protect_metrics: bool) -> Access:
        """The policy for a daemon on ``host``; ApiConfigError for settings that cannot hold."""
        check_bind(host, token)
        if protect_metrics and token is None:
            raise ApiConfigError(
                "http.protect_metrics needs an API token: set http.token_file "
                "(or STOCKSCHED_TOKEN_FILE)"
            )
        protected = token is not None and not is_loopback(host)
        return cls(token, reads=protected, metrics=protect_metrics)


_BEARER = HTTPBearer(auto_error=False, description="The daemon's API token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


def bearer_check(token: str | None) -> Callable[..., None]:
    """A FastAPI dependency: raises NotAuthenticatedError unless the request sends ``token``."""
    expected = token.encode() if token is not None else None

    def check(creds: Credentials) -> None:
        if expected is None:
            return
        if creds is None:
            raise NotAuthenticatedError("missing 'Authorization: Bearer <token>' header")
        if not hmac.compare_digest(creds.credentials.encode(), expected):
            raise NotAuthenticatedError("invalid token")

    return check
