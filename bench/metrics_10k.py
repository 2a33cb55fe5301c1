"""/metrics with 10,000 jobs that have all run: CPU per render and body size (issue 11.4).

In-process, no Redis: builds a ``Metrics`` the way the daemon fills it after every one of
``--jobs`` jobs ran once (a scheduled success with one ticker fetched and some bars stored,
its next slot armed, its runtime gauges set from the job record as ``render_metrics`` does),
then times ``Metrics.render()`` (process CPU, median of ``--repeat``) and measures the body,
both uncompressed (what curl without ``--compressed`` gets) and as served to a Prometheus
scraper (``Accept-Encoding: gzip``, through ``stocksched.metrics.exposition``), with the CPU
of the compression added to the scrape.

Baseline in the same run: ``prometheus_client.generate_latest`` over a plain
``CollectorRegistry`` holding issue 11's starting layout (labelled ``Counter``/``Gauge``/
``Histogram`` children, the per-job histogram included) filled with the same runs. The memory
figure is what ``tracemalloc`` sees allocated while filling each one. The baseline's
served size is what prometheus-client's own exposition (``make_wsgi_app`` and friends)
sends a gzip scraper: ``gzip.compress`` at its default level 9.

    python bench/metrics_10k.py [--jobs 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from stocksched.metrics import Metrics, exposition

NOW = 1_760_000_000.0
BASELINE = "baseline: generate_latest, plain registry, issue-11 layout"


def job_ids(n: int) -> list[str]:
    return [f"job-{i:05d}" for i in range(n)]


def fill_daemon(m: Metrics, ids: list[str]) -> None:
    """What the executor, timetable and render_metrics leave behind after one run each."""
    for i, job in enumerate(ids):
        duration = 0.05 + (i % 97) / 10
        m.observe_run(job, "success", "schedule", duration)
        m.ticker_fetches.labels(job=job, result="success").inc()
        m.rows_stored.labels(job=job).inc(5)
        m.job_next_run.labels(job=job).set(NOW + 86_400 + i)
        m.job_paused.labels(job=job).set(0)
        m.job_running.labels(job=job).set(0)
        m.set_job_runtime(job, NOW + i / 7, NOW + i / 7, running=False)


def plain_registry(ids: list[str]) -> CollectorRegistry:
    """Issue 11's starting layout in labelled children, filled with the same runs."""
    r = CollectorRegistry()
    runs = Counter("stocksched_job_runs", "d", ["job", "status", "trigger"], registry=r)
    hist = Histogram(
        "stocksched_job_run_duration_seconds",
        "d",
        ["job"],
        buckets=(1, 5, 15, 60, 300, 900, 3600),
        registry=r,
    )
    gauges = [
        Gauge(f"stocksched_job_{name}", "d", ["job"], registry=r)
        for name in (
            "last_run_timestamp_seconds",
            "last_success_timestamp_seconds",
            "next_run_timestamp_seconds",
            "running",
            "paused",
        )
    ]
    fetches = Counter("stocksched_ticker_fetches", "d", ["job", "result"], registry=r)
    rows = Counter("stocksched_rows_stored", "d", ["job"], registry=r)
    for i, job in enumerate(ids):
        runs.labels(job, "success", "schedule").inc()
        hist.labels(job).observe(0.05 + (i % 97) / 10)
        for g, v in zip(gauges, (NOW + i / 7, NOW + i / 7, NOW + 86_400 + i, 0, 0), strict=True):
            g.labels(job).set(v)
        fetches.labels(job, "success").inc()
        rows.labels(job).inc(5)
    return r


def allocated_mib(build: Callable[[], object]) -> tuple[object, float]:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    built = build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return built, (after - before) / 2**20


def cpu_ms(render: Callable[[], bytes], repeat: int) -> tuple[float, bytes]:
    times, body = [], b""
    for _ in range(repeat):
        t = time.process_time()
        body = render()
        times.append((time.process_time() - t) * 1000)
    return statistics.median(times), body


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    prometheus_client.disable_created_metrics()  # as the daemon does
    ids = job_ids(args.jobs)

    def build_ours() -> Metrics:
        m = Metrics("bench")
        fill_daemon(m, ids)
        return m

    ours, ours_mib = allocated_mib(build_ours)
    assert isinstance(ours, Metrics)
    plain, plain_mib = allocated_mib(lambda: plain_registry(ids))
    assert isinstance(plain, CollectorRegistry)
    base_ms, base_body = cpu_ms(lambda: generate_latest(plain), args.repeat)
    ours_ms, ours_body = cpu_ms(ours.render, args.repeat)

    def scrape() -> bytes:  # render_metrics less its HGETALL: the runtime gauges, then render
        for i, job in enumerate(ids):
            ours.set_job_runtime(job, NOW + i / 7, NOW + i / 7, running=False)
        return ours.render()

    def served() -> bytes:  # the /metrics route's work for a Prometheus scrape
        return exposition(scrape(), "gzip")[0]

    scrape_ms, _ = cpu_ms(scrape, args.repeat)
    served_ms, ours_gz = cpu_ms(served, args.repeat)
    base_gz_ms, base_gz = cpu_ms(lambda: gzip.compress(generate_latest(plain)), args.repeat)
    print(f"{args.jobs} jobs, each run once; CPU is the median of {args.repeat}")
    print(
        "| | CPU per render | body uncompressed | lines | served to Prometheus (gzip) "
        "| CPU per gzip scrape | series memory |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, ms, body, gz, gz_ms, mib in (
        (BASELINE, base_ms, base_body, base_gz, base_gz_ms, plain_mib),
        ("stocksched Metrics.render()", ours_ms, ours_body, ours_gz, served_ms, ours_mib),
    ):
        lines = body.count(b"\n")
        print(
            f"| {label} | {ms:.0f} ms | {len(body) / 1e6:.2f} MB | {lines} "
            f"| {len(gz) / 1e6:.2f} MB | {gz_ms:.0f} ms | {mib:.1f} MiB |"
        )
    print(f"stocksched scrape (set_job_runtime for every job, then render): {scrape_ms:.0f} ms")
    print(f"stocksched gzip scrape (the same, then exposition(..., 'gzip')): {served_ms:.0f} ms")


if __name__ == "__main__":
    main()
