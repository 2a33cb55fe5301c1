"""Daemon settings: one typed model that documents every default.

Precedence, lowest first: built-in defaults, the settings file (``config/stocksched.yaml``
or ``--config``), ``STOCKSCHED_*`` environment variables, command-line flags.
Relative paths are taken relative to the working directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from stocksched.settings_errors import Origins, explain, file_origins, flag_name

DEFAULT_CONFIG_PATH = Path("config/stocksched.yaml")
DEFAULT_LISTEN = "127.0.0.1:9731"


class SettingsError(Exception):
    """Settings that cannot be used; the message is one or more readable lines."""


class HttpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    listen: str = DEFAULT_LISTEN
    token_file: Path | None = None
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # /metrics needs the token too (it names every job); off by default, since Prometheus
    # must then be given the token (`authorization: credentials_file:` in its scrape config).
    protect_metrics: bool = False
    # Open HTTP connections at most, lowered at startup to stay below the file-descriptor
    # limit; past it the connection idle the longest is closed (stocksched.http.connections).
    max_connections: int = Field(default=512, ge=1, le=100_000)
    # Seconds a connection may wait without a complete request (after connecting or after
    # its previous response) before it is closed.
    idle_timeout: float = Field(default=5.0, ge=0.1, le=300)

    @field_validator("listen")
    @classmethod
    def _listen_host_port(cls, v: str) -> str:
        split_listen(v)
        return v


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) to (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None or "memory://": embedded in-process store (nothing persisted).
    redis_url: str | None = None
    redis_password_file: Path | None = None
    jobs: Path = Path("jobs.yaml")
    pool_size: int = Field(default=4, ge=1, le=256)
    ticker_concurrency: int = Field(default=4, ge=1, le=64)
    shutdown_grace: float = Field(default=30.0, ge=0, le=3600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # yfinance's caches go here; default: $STATE_DIRECTORY (systemd), else a temp dir.
    state_dir: Path | None = None
    run_history: int = Field(default=1000, ge=10, le=1_000_000)
    max_requests_per_second: float | None = Field(default=None, gt=0)
    # Whose budget max_requests_per_second is: each host's (Yahoo limits per client
    # address), or one shared by every replica (the behaviour before issue 14).
    rate_limit_scope: Literal["host", "shared"] = "host"
    # This host's egress identity, naming its budget; default the hostname. Set it when
    # replicas on one host send from different addresses (each then has its own budget).
    egress_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,100}$")
    # Seconds a fanned-out run's ticker may stay taken and unfinished before another
    # replica takes it over (the one that took it is presumed dead); longer than one
    # ticker's fetch with its retries, or a slow ticker is fetched twice (harmlessly).
    fanout_reclaim_idle: float = Field(default=30.0, ge=0.1, le=3600)
    # Replicas: a stable id lets a restarted daemon recognise its own crashed runs at
    # once; by default it is hostname-pid-random (crashes then surface after lease_ttl).
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,100}$")
    lease_ttl: float = Field(default=30.0, ge=1, le=3600)
    replica_ttl: float = Field(default=15.0, ge=1, le=3600)
    # A Redis whose maxmemory-policy may evict keys loses job records, leases and slot
    # claims silently; refused at startup unless this is set (then warned once).
    allow_evicting_redis: bool = False
    http: HttpSettings = HttpSettings()
    # Where these settings were read from (not a setting: load_settings records it).
    _config_file: Path | None = PrivateAttr(default=None)

    @property
    def config_file(self) -> Path | None:
        """The settings file these settings came from; None when no file was read."""
        return self._config_file

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


MASK = "***"
_PASSWORD_QUERY = re.compile(r"(?i)([?&](?:sentinel_)?password=)[^&#]*")


def mask_url(url: str) -> str:
    """``url`` safe to log: the password replaced by ``***``, the rest as written.

    ``redis://:pw@host:6379/0`` gives ``redis://:***@host:6379/0``, ``rediss://user:pw@host``
    ``rediss://user:***@host``. A lone user-info part (``redis://secret@host``) is masked
    whole, since some clients read it as the password; so is a ``?password=`` parameter
    (and a ``redis+sentinel`` URL's ``?sentinel_password=``).
    Everything up to the *last* ``@`` counts as user info, so a password with an unescaped
    ``@``, ``/``, ``?`` or ``#`` in it is still hidden (at worst too much is masked).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return MASK  # not a URL we would have connected to; show nothing of it
    userinfo, at, host = rest.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        rest = f"{user}:{MASK}@{host}" if colon and "/" not in user else f"{MASK}@{host}"
    return _PASSWORD_QUERY.sub(rf"\g<1>{MASK}", f"{scheme}://{rest}")


def describe_redis(settings: Settings) -> str:
    """The store in use, for the startup log: masked URL, or that it is the embedded one."""
    from stocksched.storage.adapter import EMBEDDED_URLS  # keep client commands light

    url = (settings.redis_url or "").strip()
    if url in EMBEDDED_URLS:
        return "embedded (memory://), not persisted"
    if settings.redis_password_file is not None:
        return f"{mask_url(url)} (password from {settings.redis_password_file})"
    return mask_url(url)


def startup_summary(settings: Settings, replica_id: str) -> str:
    """What this daemon runs with, in one line: settings file, jobs file, Redis, replica, listen."""
    source = str(settings.config_file.absolute()) if settings.config_file else "none, defaults"
    listen = settings.http.listen if settings.http.enabled else "none (HTTP API disabled)"
    return (
        f"settings file {source}; jobs file {settings.jobs.absolute()}; "
        f"redis {describe_redis(settings)}; replica id {replica_id}; listen {listen}"
    )


# Environment variable -> dotted settings path.
ENV_VARS: dict[str, str] = {
    "STOCKSCHED_REDIS_URL": "redis_url",
    "STOCKSCHED_REDIS_PASSWORD_FILE": "redis_password_file",
    "STOCKSCHED_JOBS": "jobs",
    "STOCKSCHED_POOL_SIZE": "pool_size",
    "STOCKSCHED_TICKER_CONCURRENCY": "ticker_concurrency",
    "STOCKSCHED_SHUTDOWN_GRACE": "shutdown_grace",
    "STOCKSCHED_LOG_LEVEL": "log_level",
    "STOCKSCHED_LOG_FORMAT": "log_format",
    "STOCKSCHED_STATE_DIR": "state_dir",
    "STOCKSCHED_MAX_REQUESTS_PER_SECOND": "max_requests_per_second",
    "STOCKSCHED_RATE_LIMIT_SCOPE": "rate_limit_scope",
    "STOCKSCHED_EGRESS_ID": "egress_id",
    "STOCKSCHED_FANOUT_RECLAIM_IDLE": "fanout_reclaim_idle",
    "STOCKSCHED_REPLICA_ID": "replica_id",
    "STOCKSCHED_LEASE_TTL": "lease_ttl",
    "STOCKSCHED_ALLOW_EVICTING_REDIS": "allow_evicting_redis",
    "STOCKSCHED_LISTEN": "http.listen",
    "STOCKSCHED_TOKEN_FILE": "http.token_file",
    "STOCKSCHED_PROTECT_METRICS": "http.protect_metrics",
    "STOCKSCHED_HTTP_MAX_CONNECTIONS": "http.max_connections",
    "STOCKSCHED_HTTP_IDLE_TIMEOUT": "http.idle_timeout",
}


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise SettingsError(f"{p}: expected a mapping")
    d[leaf] = value


def resolve_config_path(flag: str | None, env: Mapping[str, str]) -> Path | None:
    """Explicit --config or $STOCKSCHED_CONFIG must exist; the default file is optional."""
    explicit = flag or env.get("STOCKSCHED_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise SettingsError(f"{path}: settings file not found")
        return path
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def read_settings_file(path: Path, origins: Origins | None = None) -> dict[str, Any]:
    """The settings file as a mapping; ``origins`` (if given) gets each key's FILE:LINE."""
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}: " if mark else ""
        raise SettingsError(f"{path}:{where}invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping of settings")
    if origins is not None:
        origins.update(file_origins(path, text))
    return data


def load_settings(
    config_path: Path | None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge file, environment and flag overrides (dotted keys) into validated Settings."""
    env = os.environ if env is None else env
    origins: Origins = {}
    data: dict[str, Any] = read_settings_file(config_path, origins) if config_path else {}
    for var, dotted in ENV_VARS.items():
        if env.get(var):
            _set_dotted(data, dotted, env[var])
            origins[dotted] = var
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
            origins[dotted] = flag_name(dotted)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        fallback = str(config_path) if config_path else "settings"
        raise SettingsError("\n".join(explain(exc, Settings, origins, fallback))) from None
    settings._config_file = config_path
    return settings
