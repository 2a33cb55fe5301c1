"""One 1,000-ticker run fanned out over 1, 2 and 3 replicas, each with its own address (issue 14).

The fake Yahoo (``bench/fake_yahoo.py``, its own process) answers every request after
100 ms and allows 20 requests per second PER CLIENT ADDRESS (GCRA, burst 5), as Yahoo
limits per address; beyond that it answers 429 with ``Retry-After``. Replica i is a
daemon process (``Daemon(Components(settings))``, the same as ``stocksched run``, with
only its Yahoo session injected: ``local_session`` pointed at the fake) sending from
its own loopback address 127.0.0.(i+2) and spending its own budget of
``max_requests_per_second: 20`` (``rate_limit_scope: host``, ``egress_id`` = its
address). One job of 1,000 tickers (T0001..T1000, 30-day window, daily bars,
``fanout: true``, ``retries: 5``, ``retry_backoff: 1s``) is triggered once on replica 1;
the replicas share the run through its stream. yfinance's time-zone cache is pre-filled
in each replica (the steady state, as in ``fetch_throughput.py``).

Printed for 1, 2 and 3 replicas, in the same benchmark run, each on a fresh Redis
database and a fresh fake: the run's wall time (its history entry), tickers stored per
second, lost tickers (not stored after the run; must be 0), tickers fetched by each
replica, requests and 429s per address at the fake, the speed-up over one replica, and
the CPU each replica used with the machine's load (all replicas share this machine's
cores, which real hosts would not: past what the cores give, more replicas add nothing).

    python bench/fanout_scale.py [--tickers 1000] [--rate 20] [--replicas 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    REPO,
    FakeYahooProcess,
    clean_env,
    free_port,
    private_redis,
    proc_cpu_seconds,
    ready,
)

JOB_ID = "fanout-1000"
PREFIX = "bench_fanout"


def tickers(n: int) -> list[str]:
    return [f"T{i:04d}" for i in range(1, n + 1)]


def jobs_yaml(n: int, retries: int) -> str:
    return (
        "version: 1\njobs:\n"
        f"  - id: {JOB_ID}\n"
        f"    tickers: [{', '.join(tickers(n))}]\n"
        '    schedule: "@every 1h"\n'
        "    source: yahoo\n"
        "    timezone: America/New_York\n"
        "    window: 30d\n"
        f"    prefix: {PREFIX}\n"
        "    ttl: 1h\n"
        f"    retries: {retries}\n"
        "    retry_backoff: 1s\n"
        "    fanout: true\n"
        "    timeout: 10m\n"
    )


# ----------------------------------------------------------------------------- child


def child(args: argparse.Namespace) -> int:
    """One replica: the daemon, its Yahoo session sending from ``args.addr`` to the fake."""
    import yfinance.cache as yf_cache

    from bench.fake_yahoo import local_session
    from stocksched.daemon import Components, Daemon, rate_limiter
    from stocksched.logs import configure_logging
    from stocksched.settings import HttpSettings, Settings
    from stocksched.sources import build_fetchers, configure_yfinance
    from stocksched.storage.adapter import RedisAdapter, connect

    state = Path(args.state)
    settings = Settings(
        redis_url=args.redis_url,
        jobs=Path(args.jobs),
        max_requests_per_second=args.rate,
        egress_id=args.addr,
        replica_id=args.name,
        state_dir=state,
        log_level="WARNING",
        http=HttpSettings(listen=f"127.0.0.1:{args.http_port}"),
    )
    configure_logging(settings.log_level, settings.log_format)
    limiter = rate_limiter(settings, RedisAdapter(connect(settings.redis_url)))
    session = local_session(args.port, limiter=limiter, interface=args.addr)
    configure_yfinance(state / "yfinance", session=session)
    tz = yf_cache.get_tz_cache()
    for name in tickers(args.tickers):
        tz.store(name, "America/New_York")
    return Daemon(Components(settings, fetchers=build_fetchers(session=session))).run()


# ----------------------------------------------------------------------------- parent


def _wait(pred: Any, timeout: float, what: str, procs: list[subprocess.Popen[bytes]]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if any(p.poll() is not None for p in procs):
            sys.exit(f"a replica exited while waiting for {what}")
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def _result(client: Any, run_id: str) -> Any:
    from stocksched.model import RunResult
    from stocksched.storage import keys

    for _id, fields in client.xrange(keys.runs_key(JOB_ID)):
        if fields.get("run_id") == run_id:
            return RunResult.from_fields(JOB_ID, fields)
    return None


def _trigger(port: int) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/scheduler/jobs/{JOB_ID}/trigger", method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(json.loads(resp.read())["run_id"])


def run_replicas(n: int, args: argparse.Namespace, server: Any, tmp: Path) -> dict[str, Any]:
    from stocksched.storage import keys

    server.client().flushall()
    (tmp / "jobs.yaml").write_text(jobs_yaml(args.tickers, args.retries))
    fake = FakeYahooProcess(args.delay, args.rate, tmp / "home", per_address=True)
    procs: list[subprocess.Popen[bytes]] = []
    ports = [free_port() for _ in range(n)]
    try:
        for i, port in enumerate(ports):
            addr = f"127.0.0.{i + 2}"
            cmd = [sys.executable, __file__, "--child", "--port", str(fake.port)]
            cmd += ["--redis-url", server.url, "--jobs", str(tmp / "jobs.yaml")]
            cmd += ["--addr", addr, "--name", f"replica-{i + 1}", "--http-port", str(port)]
            cmd += ["--state", str(tmp / f"state-{n}-{i}"), "--rate", str(args.rate)]
            cmd += ["--tickers", str(args.tickers)]
            log = (tmp / f"replica-{n}-{i}.log").open("wb")
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=clean_env(tmp / "home"), stderr=log))
        for port in ports:
            _wait(lambda p=port: ready(p), 60, "replicas ready", procs)
        time.sleep(0.5)  # every fan-out worker polling
        run_id = _trigger(ports[0])
        client = server.client()
        result = _wait(lambda: _result(client, run_id), 900, "the run's result", procs)
        names = tickers(args.tickers)
        stored = [t for t in names if client.exists(keys.latest_key(PREFIX, t))]
        stats = fake.stats()
        cpu = [proc_cpu_seconds(p.pid) for p in procs]
        fake_cpu = proc_cpu_seconds(fake.proc.pid)
        load = os.getloadavg()[0]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        fake.stop()
    return {
        "replicas": n,
        "wall_s": result.duration_s,
        "status": str(result.status),
        "stored": len(stored),
        "lost": len(set(names) - set(stored)),
        "fetched_by": result.fetched_by,
        "errors": sorted(set(result.errors.values()))[:3],
        "by_address": {k[8:]: v for k, v in stats.items() if k.startswith("address:")},
        "rate_limited": stats.get("rate_limited", 0),
        "cpu_s": cpu,
        "fake_cpu_s": fake_cpu,
        "load": load,
    }


def report(r: dict[str, Any], single: dict[str, Any]) -> None:
    rate = r["stored"] / r["wall_s"]
    base = single["stored"] / single["wall_s"]
    print(
        f"{r['replicas']} replica(s): {r['stored']} stored in {r['wall_s']:.1f} s = "
        f"{rate:.2f} tickers/s ({rate / base:.2f}x one replica); lost {r['lost']}; "
        f"status {r['status']}"
    )
    print(f"  fetched by: {json.dumps(r['fetched_by'], sort_keys=True)}")
    print(
        f"  requests per address: {json.dumps(r['by_address'], sort_keys=True)}; "
        f"429s: {r['rate_limited']}" + (f"; errors: {r['errors']}" if r["errors"] else "")
    )
    cpu = ", ".join(f"{c:.1f}" for c in r["cpu_s"])
    print(
        f"  CPU s per replica (start-up included): {cpu}; fake Yahoo {r['fake_cpu_s']:.1f}; "
        f"1-min load average at the end {r['load']:.1f} ({os.cpu_count()} CPUs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="per-address limit, and ours")
    parser.add_argument("--delay", type=float, default=0.1, help="fake's answer delay")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=3, help="measure 1..this many")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--jobs", default="")
    parser.add_argument("--addr", default="127.0.0.2")
    parser.add_argument("--name", default="replica-1")
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--state", default="")
    args = parser.parse_args()
    if args.child:
        sys.exit(child(args))
    print(
        f"fanout_scale: {args.tickers} tickers, fake Yahoo {args.delay * 1000:.0f} ms per "
        f"answer, limit {args.rate:g} req/s per address; each replica its own address and "
        f"budget; ticker concurrency 4, retries {args.retries}, backoff 1s; tz cache warm"
    )
    results = []
    with private_redis() as server, tempfile.TemporaryDirectory(prefix="bench-fanout-") as d:
        for n in range(1, args.replicas + 1):
            results.append(run_replicas(n, args, server, Path(d)))
            report(results[-1], results[0])


if __name__ == "__main__":
    main()
