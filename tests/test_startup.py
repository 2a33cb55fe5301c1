"""Start-up imports only what the work needs (issue 11, goals 5 and 6): no timings here.

Each check runs in a fresh interpreter (a subprocess) and reads its ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import redis

import stocksched
from tests.daemons import Launch, wait_for, wait_ready
from tests.servers import RedisServer

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("yfinance", "curl_cffi", "fakeredis", "pandas", "numpy", "fastapi", "uvicorn")
# What `validate` needs none of either: the store, the HTTP client and server, the
# metrics, the settings model (pydantic models of their own).
NOT_FOR_VALIDATE = (
    *HEAVY,
    "redis",
    "httpx",
    "prometheus_client",
    "stocksched.settings",
    "stocksched.http",
    "stocksched.daemon",
)


def loaded_after(code: str, *args: str, modules: tuple[str, ...] = HEAVY) -> dict[str, bool]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    probe = (
        code
        + f"\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {modules!r}}}))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=True,
    ).stdout
    result: dict[str, bool] = json.loads(out.strip().splitlines()[-1])
    return result


def test_version_is_the_installed_distributions() -> None:
    assert stocksched.__version__ == version("stocksched")


def test_version_is_written_once_and_read_by_pyproject() -> None:
    from stocksched._version import __version__

    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in text
    assert 'version = {attr = "stocksched._version.__version__"}' in text
    assert stocksched.__version__ == __version__


def test_validate_imports_no_source_store_server_or_settings_library() -> None:
    loaded = loaded_after(
        "import sys\nfrom stocksched.cli import main\nassert main(['validate', sys.argv[1]]) == 0",
        str(REPO / "jobs.yaml"),
        modules=NOT_FOR_VALIDATE,
    )
    assert loaded == dict.fromkeys(NOT_FOR_VALIDATE, False)


def test_the_console_script_leaves_the_collector_running_after_its_imports() -> None:
    """The console script imports a command's modules with the cyclic collector paused
    and freezes them: the command itself (the daemon) must run with it enabled again."""
    code = (
        "import gc, json, sys\n"
        "from stocksched.cli import commands, runjob\n"
        "def daemon(_args):  # stands in for the daemon: how it would find the collector\n"
        "    print(json.dumps([gc.isenabled(), gc.get_freeze_count() > 0]))\n"
        "    return 0\n"
        "runjob.cmd_run = daemon\n"
        "sys.exit(commands.main(['run'], settle_gc=True))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert json.loads(out) == [True, True]


def test_daemon_on_real_redis_with_demo_jobs_never_imports_yfinance_or_fakeredis(
    redis_server: RedisServer, real_redis: redis.Redis, demo_jobs: Path
) -> None:
    """The daemon's wiring (Components, the HTTP server) imports neither pandas nor a source
    library; a demo run then imports pandas, and still neither yfinance nor fakeredis."""
    code = (
        "import sys\n"
        "from stocksched.daemon import Components\n"
        "from stocksched.jobs import load_jobs_file\n"
        "from stocksched.settings import Settings\n"
        "c = Components(Settings(redis_url=sys.argv[1], jobs=sys.argv[2]))\n"
        "import stocksched.http.server\n"
        "early = [m for m in ('pandas', 'numpy', 'yfinance', 'fakeredis') if m in sys.modules]\n"
        "assert not early, f'imported before the first run: {early}'\n"
        "spec = load_jobs_file(sys.argv[2]).jobs[0]\n"
        "assert spec.source == 'demo'\n"
        "result = c.executor.execute_job(spec, run_id='r1')\n"
        "assert result.status.value == 'success', result\n"
    )
    loaded = loaded_after(code, redis_server.url, str(demo_jobs))
    assert not loaded["yfinance"]
    assert not loaded["curl_cffi"]
    assert not loaded["fakeredis"]
    assert loaded["pandas"]


def test_embedded_store_imports_fakeredis() -> None:
    code = (
        "from stocksched.storage.adapter import connect, is_embedded\n"
        "assert is_embedded(connect('memory://'))\n"
    )
    assert loaded_after(code)["fakeredis"]


def test_yahoo_fetcher_is_built_on_its_first_fetch() -> None:
    from datetime import date

    from stocksched.sources import DemoFetcher, Fetcher, LazyFetcher, lazy_fetchers

    built: list[Fetcher] = []

    def build() -> Fetcher:
        built.append(DemoFetcher())
        return built[-1]

    yahoo = lazy_fetchers(build)["yahoo"]
    assert isinstance(yahoo, LazyFetcher)
    assert not yahoo.built and not built
    for _ in range(2):
        frame = yahoo.fetch_from_source("DEMO", date(2026, 3, 2), date(2026, 3, 6), "1d")
        assert len(frame) == 5
    assert yahoo.built and len(built) == 1
    assert yahoo.fetcher() is built[0]


def test_the_http_server_answers_once_started_and_never_imports_websockets() -> None:
    """No route is a WebSocket: uvicorn must not import the websockets package (yfinance
    installs it) at start, and ``start()`` returns only once requests are answered."""
    code = (
        "import sys, urllib.request\n"
        "from fastapi import FastAPI\n"
        "from stocksched.http.server import ApiServer\n"
        "app = FastAPI()\n"
        "app.get('/ping')(lambda: 'pong')\n"
        "server = ApiServer(app, '127.0.0.1', 0, log_level='warning')\n"
        "server.start()\n"
        "assert urllib.request.urlopen(server.url + '/ping', timeout=5).read() == b'\"pong\"'\n"
        "server.stop()\n"
        "assert 'websockets' not in sys.modules, 'websockets imported'\n"
    )
    assert loaded_after(code)["uvicorn"]


def _mapped(pid: int, name: str) -> bool:
    """Whether the process has a shared library of package ``name`` mapped."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return f"/{name}/" in maps or f"/{name}." in maps


def test_the_ready_daemon_warms_up_pandas_for_its_first_run_but_leaves_yahoo_lazy(
    tmp_path: Path, launch: Launch
) -> None:
    """A daemon with a Yahoo job not due for hours: once ready it imports pandas and numpy
    in the background (the first slot must not wait ~0.3 s for them), but not yfinance and
    curl_cffi (~27 MiB), which only a Yahoo run needs."""
    (tmp_path / "jobs.yaml").write_text(
        "jobs:\n"
        "  - id: nightly\n"
        "    tickers: [AAPL]\n"
        '    schedule: "0 3 * * *"\n'
        "    timezone: UTC\n"
        "    window: 5d\n"
    )
    daemon = launch("warm")
    wait_ready(daemon)
    pid = daemon.proc.pid
    wait_for(lambda: _mapped(pid, "numpy"), 30, alive=[daemon])
    assert not _mapped(pid, "curl_cffi")
    daemon.stop()
