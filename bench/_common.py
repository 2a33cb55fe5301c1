"""Helpers shared by the benchmarks: a private redis-server, free ports, percentiles.

Nothing here talks to anything but 127.0.0.1. Every process a benchmark starts is
ended by the same benchmark (context managers below), even when it fails.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/NAME.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

# Redis commands that modify data (what "Redis writes" counts). EXEC/MULTI/WATCH are
# transaction framing, listed separately; EVALSHA is the rate limiter's script (a write).
WRITE_COMMANDS = frozenset(
    {
        "set",
        "setex",
        "psetex",
        "setnx",
        "mset",
        "del",
        "unlink",
        "expire",
        "pexpire",
        "expireat",
        "pexpireat",
        "persist",
        "sadd",
        "srem",
        "hset",
        "hdel",
        "hmset",
        "hincrby",
        "incr",
        "incrby",
        "decr",
        "lpush",
        "rpush",
        "ltrim",
        "zadd",
        "zrem",
        "xadd",
        "xtrim",
        "xdel",
        "rename",
        "getdel",
        "getset",
        "evalsha",
        "eval",
        "flushall",
        "flushdb",
    }
)
TXN_COMMANDS = frozenset({"multi", "exec", "watch", "unwatch", "discard"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateRedis:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    """A redis-server of our own on a free loopback port, no persistence; stopped after."""
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed (apt-get install -y redis-server)")
    with tempfile.TemporaryDirectory(prefix="stocksched-bench-redis-") as d:
        port = free_port()
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                d,
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis(port=port, socket_timeout=0.5).ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.02)
            yield PrivateRedis(port, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def command_stats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (lower-case names)."""
    stats = client.info("commandstats")
    out: dict[str, int] = {}
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_").lower()
        out[name] = int(value["calls"])
    return out


def writes_in(stats: dict[str, int]) -> int:
    return sum(n for name, n in stats.items() if name in WRITE_COMMANDS)


def describe_commands(stats: dict[str, int]) -> str:
    """``set=3 sadd=1 | exec=2 | reads: get=1`` (CONFIG/INFO, ours, left out)."""
    ours = {"config|resetstat", "config", "info", "ping", "hello", "client|setinfo", "client"}
    w = [f"{k}={v}" for k, v in sorted(stats.items()) if k in WRITE_COMMANDS]
    t = [f"{k}={v}" for k, v in sorted(stats.items()) if k in TXN_COMMANDS]
    r = [
        f"{k}={v}"
        for k, v in sorted(stats.items())
        if k not in WRITE_COMMANDS and k not in TXN_COMMANDS and k not in ours
    ]
    return (
        f"writes: {' '.join(w) or 'none'} | transactions: {' '.join(t) or 'none'} | "
        f"reads: {' '.join(r) or 'none'}"
    )


def stocksched_command() -> list[str]:
    """The installed console script (beside this interpreter), as users run it."""
    script = Path(sys.executable).parent / "stocksched"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "stocksched"]


def run_command(jobs: Path, redis_url: str, port: int, log_level: str) -> list[str]:
    """``stocksched run`` on ``jobs`` and ``redis_url``, the API on 127.0.0.1:``port``."""
    return [
        *stocksched_command(),
        "run",
        "--jobs",
        str(jobs),
        "--redis-url",
        redis_url,
        "--listen",
        f"127.0.0.1:{port}",
        "--log-level",
        log_level,
    ]


def ready(port: int) -> bool:
    """Whether the daemon on ``port`` answers ``GET /readyz`` with 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def clean_env(home: Path) -> dict[str, str]:
    """The environment for a daemon subprocess: no STOCKSCHED_* leaking in, private HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSCHED_")}
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all threads), from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def rebuild_scheduler(c: Any, **overrides: Any) -> Callable[[float], None]:
    """Rebuild ``Components``' scheduler (its arguments, plus ``overrides``) with a
    bookkeeping thread of our own, and the reloader and watcher over it; returns a
    function that waits (up to a timeout) for the bookkeeping writes queued so far."""
    from stocksched.reload import JobsReloader
    from stocksched.scheduling.scheduler import MAX_SLEEP_S, JobScheduler
    from stocksched.watch import JobsWatcher

    book = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bookkeeping")
    kw: dict[str, Any] = {
        "pool_size": c.settings.pool_size,
        "metrics": c.metrics,
        "health": c.health,
        "leases": c.leases,
        "max_sleep": c.watchdog.max_sleep(MAX_SLEEP_S),
        "on_loop": c.watchdog.ping,
        "bookkeeping": book,
    }
    kw.update(overrides)
    executor = kw.pop("executor", c.executor)
    c.scheduler = JobScheduler(c.registry, executor, c.clock, **kw)
    c.reloader = JobsReloader(c.settings.jobs, c.registry, c.scheduler, c.clock, c.metrics)
    c.watcher = JobsWatcher(c.reloader)

    def flush(timeout: float) -> None:
        book.submit(lambda: None).result(timeout)

    return flush


class FakeYahooProcess:
    """``python -m bench.fake_yahoo`` in its own process (its GIL is not ours): ``delay``
    seconds a request, ``rate`` requests a second (GCRA), per client address with
    ``per_address``; ``stats`` reads its counters."""

    def __init__(self, delay: float, rate: float, home: Path, per_address: bool = False) -> None:
        cmd = [sys.executable, "-m", "bench.fake_yahoo", "--delay", str(delay)]
        cmd += ["--rate", str(rate), *(["--per-address"] if per_address else [])]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=clean_env(home), stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "fake Yahoo on http://127.0.0.1:PORT ..."
        if "127.0.0.1:" not in line:
            self.stop()
            sys.exit(f"fake Yahoo did not start: {line!r}")
        self.port = int(line.split("127.0.0.1:")[1].split()[0])

    def stats(self) -> dict[str, int]:
        from bench.fake_yahoo import STATS_PATH

        url = f"http://127.0.0.1:{self.port}{STATS_PATH}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
