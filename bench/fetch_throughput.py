"""A 1,000-ticker job against a fake Yahoo limited to 20 req/s: stored/s, lost tickers (issue 5).

The fake Yahoo (``bench/fake_yahoo.py``, its own process) answers every request after
100 ms and allows 20 requests per second (GCRA, burst 5); beyond that it answers 429
with ``Retry-After``. One job of 1,000 tickers (T0001..T1000, 30-day window, daily
bars, ``retries: 5``, ``retry_backoff: 1s``) runs once through the daemon's
``JobExecutor`` (default ticker concurrency 4) and ``YFinanceFetcher`` — yfinance's own
request and parse code — over ``local_session`` (the daemon's ``YahooSession`` pointed
at the fake), storing into a private redis-server. Twice, in the same benchmark run,
each in a fresh process with a fresh fake:

1. ours: the shared ``RedisRateLimiter`` at ``max_requests_per_second: 20`` (what
   ``build_rate_limiter`` makes from the setting), plus retries;
2. baseline: no limiter (retries only).

Printed: tickers stored per second (stored / wall time of the run), lost tickers (not
stored in Redis after the run; must be 0 with our limiter), the 429s the fake served and
the requests it saw by kind.

yfinance looks up each symbol's time zone once (an extra request) and keeps it in its
on-disk cache; a daemon therefore pays it only on a symbol's first run. The benchmark
measures that steady state: the time-zone cache is pre-filled for the 1,000 symbols
(``--cold`` skips that, doubling the requests and the time).

    python bench/fetch_throughput.py [--tickers 1000] [--rate 20] [--retries 5] [--cold]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import REPO, FakeYahooProcess, clean_env, private_redis

JOB_ID = "fetch-1000"
PREFIX = "bench_fetch"


def tickers(n: int) -> list[str]:
    return [f"T{i:04d}" for i in range(1, n + 1)]


# ----------------------------------------------------------------------------- child


def child(args: argparse.Namespace) -> dict[str, Any]:
    import yfinance.cache as yf_cache

    from bench.fake_yahoo import local_session
    from stocksched.clock import SystemClock
    from stocksched.executor import JobExecutor
    from stocksched.jobs.spec import JobSpec
    from stocksched.metrics import Metrics
    from stocksched.settings import Settings
    from stocksched.sources import build_fetchers, configure_yfinance
    from stocksched.storage import keys
    from stocksched.storage.adapter import RedisAdapter, connect
    from stocksched.storage.butler import DataIOButler
    from stocksched.storage.ratelimit import build_rate_limiter

    names = tickers(args.tickers)
    settings = Settings(
        redis_url=args.redis_url,
        ticker_concurrency=args.concurrency,
        max_requests_per_second=args.rate if args.limit else None,
    )
    client = connect(settings.redis_url, None)
    limiter = build_rate_limiter(RedisAdapter(client), settings.max_requests_per_second)
    session = local_session(args.port, limiter=limiter)
    with tempfile.TemporaryDirectory(prefix="bench-yf-") as cache:
        configure_yfinance(Path(cache), session=session)
        if not args.cold:
            tz = yf_cache.get_tz_cache()
            for name in names:
                tz.store(name, "America/New_York")
        fetchers = build_fetchers(session=session)
        executor = JobExecutor(
            fetchers,
            DataIOButler(RedisAdapter(client)),
            SystemClock(),
            settings.ticker_concurrency,
            Metrics("bench"),
        )
        spec = JobSpec.model_validate(
            {
                "id": JOB_ID,
                "tickers": names,
                "schedule": "@every 1h",
                "source": "yahoo",
                "timezone": "America/New_York",
                "window": "30d",
                "prefix": PREFIX,
                "ttl": "1h",
                "retries": args.retries,
                "retry_backoff": "1s",
            }
        )
        t0 = time.monotonic()
        result = executor.execute_job(spec)
        wall = time.monotonic() - t0
    stored = [t for t in names if client.exists(keys.latest_key(PREFIX, t))]
    errors = Counter(e.split(" (")[0][:80] for e in result.errors.values())
    return {
        "wall_s": wall,
        "stored": len(stored),
        "lost": sorted(set(names) - set(stored)),
        "status": str(result.status),
        "failed": len(result.failed_stocks),
        "errors": dict(errors.most_common(5)),
        "rows": result.rows_stored,
        "concurrency": settings.ticker_concurrency,
    }


# ----------------------------------------------------------------------------- parent


def run_config(args: argparse.Namespace, redis_url: str, limit: bool) -> dict[str, Any]:
    fake = FakeYahooProcess(args.delay, args.rate, Path(tempfile.gettempdir()) / "bench-fake-home")
    try:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--port",
            str(fake.port),
            "--redis-url",
            redis_url,
            "--tickers",
            str(args.tickers),
            "--rate",
            str(args.rate),
            "--retries",
            str(args.retries),
            "--concurrency",
            str(args.concurrency),
        ]
        cmd += ["--limit"] if limit else []
        cmd += ["--cold"] if args.cold else []
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=900,
            cwd=REPO,
            env=clean_env(Path(tempfile.gettempdir()) / "bench-fetch-home"),
        )
        if proc.returncode != 0:
            sys.exit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        out = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
        out["fake"] = fake.stats()
        warnings = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        if warnings:
            print(f"  ({len(warnings)} log lines from the run, last: {warnings[-1][:200]})")
        return out
    finally:
        fake.stop()


def report(name: str, r: dict[str, Any], n: int) -> None:
    f = r["fake"]
    print(f"{name}:")
    print(
        f"  {r['stored']}/{n} tickers stored in {r['wall_s']:.1f} s = "
        f"{r['stored'] / r['wall_s']:.2f} tickers/s; lost tickers: {len(r['lost'])}"
        + (f" (e.g. {', '.join(r['lost'][:5])})" if r["lost"] else "")
    )
    print(
        f"  run status {r['status']}, failed {r['failed']}"
        + (f", errors: {r['errors']}" if r["errors"] else "")
    )
    kinds = " ".join(
        f"{k}={f[k]}" for k in ("chart", "tz_probe", "cookie", "crumb", "other") if f.get(k)
    )
    print(
        f"  fake Yahoo served {f.get('requests', 0)} requests ({kinds}), "
        f"429s: {f.get('rate_limited', 0)}; "
        f"{f.get('requests', 0) / r['wall_s']:.1f} req/s offered"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="fake's limit and ours")
    parser.add_argument("--delay", type=float, default=0.1, help="fake's answer delay")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="empty yfinance tz cache")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="ticker_concurrency (the setting's default is 4)"
    )
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--limit", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(
        f"fetch_throughput: {args.tickers} tickers, fake Yahoo {args.delay * 1000:.0f} ms per "
        f"answer, limit {args.rate:g} req/s; ticker concurrency {args.concurrency}, "
        f"job retries {args.retries}, backoff 1s; "
        f"tz cache {'cold' if args.cold else 'warm'}"
    )
    with private_redis() as server:
        ours = run_config(args, server.url, limit=True)
        server.client().flushall()
        base = run_config(args, server.url, limit=False)
    report(f"ours: RedisRateLimiter at {args.rate:g} req/s + retries", ours, args.tickers)
    report("baseline: no limiter, retries only", base, args.tickers)


if __name__ == "__main__":
    main()
