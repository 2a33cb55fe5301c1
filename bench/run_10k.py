"""`stocksched run` as users run it, 10,000 jobs, next to APScheduler 3.x (issue 11, goals 1, 2, 5).

The daemon is the installed console script on a jobs.yaml on disk and a private
redis-server, exactly as deployed (default settings: pool 4, ticker concurrency 4). The
file holds ``--jobs`` jobs, each a one-ticker demo job (synthetic bars, stored in Redis:
everything a run does but the network), six-field cron in UTC. ``--rate`` of them fall
due every second of a ``--window`` s window (job ``i`` at ``window_start + i % window``);
the others are due daily twelve hours away, so they are held, not run.

Figures for stocksched come from what it stored, as a user would read them: a run's
lateness is ``started_at - scheduled_for`` of its history entry (``started_at`` is taken
when the run's body starts). Commands per run are Redis' ``INFO commandstats`` over the
window (reset just before it) divided by the runs; note that commandstats also counts
the commands a script runs inside Redis, so the top-level calls are given apart
(``EVALSHA`` is the bookkeeping; the demo's bar writes are the rest). CPU per run is the
daemon's CPU over the window divided by the runs; RSS is read before the window (10,000
jobs loaded), after it, and after one ``GET /metrics`` (gzip, as Prometheus asks), which
fills the per-series line cache of the per-job families.

The baseline in the same run: APScheduler 3.x ``BackgroundScheduler`` (memory store,
thread pool of 10) holding the same triggers, its job function noting ``time.time()``.

    python bench/run_10k.py [--jobs 10000] [--rate 20] [--window 60] [--pool-size N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    clean_env,
    command_stats,
    free_port,
    percentile,
    private_redis,
    proc_cpu_seconds,
    proc_rss_bytes,
    ready,
    run_command,
)

LEAD_S = 40.0  # spawn to the window: the daemon loads 10,000 jobs meanwhile
HELD_OFFSET_S = 12 * 3600
# Top-level commands a run sends (commandstats also counts what scripts run inside).
TOP_LEVEL = ("evalsha", "watch", "multi", "exec", "get", "hget", "set", "mget")


def due_at(i: int, start: int, args: argparse.Namespace) -> int | None:
    """Unix second job ``i`` is due in the window, or None for a held job."""
    due = args.rate * args.window
    return start + i % args.window if i < due else None


def cron(ts: int) -> str:
    t = datetime.fromtimestamp(ts, UTC)
    return f"{t.second} {t.minute} {t.hour} * * *"


def jobs_yaml(args: argparse.Namespace, start: int) -> str:
    lines = ["jobs:"]
    for i in range(args.jobs):
        slot = due_at(i, start, args)
        when = slot if slot is not None else start + HELD_OFFSET_S + i % 3600
        lines += [
            f"  - id: job-{i:05d}",
            f"    tickers: [T{i:05d}]",
            f'    schedule: "{cron(when)}"',
            "    timezone: UTC",
            "    source: demo",
            "    window: 5d",
            "    ttl: 1h",
        ]
    return "\n".join(lines) + "\n"


def sleep_until(ts: float) -> None:
    while (left := ts - time.time()) > 0:
        time.sleep(min(left, 0.5))


# ----------------------------------------------------------------------------- stocksched


def run_stocksched(args: argparse.Namespace) -> dict[str, Any]:
    with private_redis() as server, tempfile.TemporaryDirectory(prefix="bench-run10k-") as d:
        cwd = Path(d)
        t0 = time.time()
        start = int(t0 + LEAD_S)
        (cwd / "jobs.yaml").write_text(jobs_yaml(args, start))
        port = free_port()
        cmd = run_command(cwd / "jobs.yaml", server.url, port, "ERROR")
        env = clean_env(cwd / "home")
        if args.pool_size:
            env["STOCKSCHED_POOL_SIZE"] = str(args.pool_size)
        log = (cwd / "daemon.log").open("w")
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=log)
        out: dict[str, Any] = {}
        try:
            while not ready(port):
                if proc.poll() is not None or time.time() > start - 2:
                    raise RuntimeError(f"daemon not ready in time:\n{_tail(cwd / 'daemon.log')}")
                time.sleep(0.02)
            out["ready_s"] = time.time() - t0
            sleep_until(start - 1.0)
            client = server.client()
            out["rss_loaded_mb"] = proc_rss_bytes(proc.pid) / 2**20
            client.config_resetstat()
            cpu0, rcpu0 = proc_cpu_seconds(proc.pid), proc_cpu_seconds(server.proc.pid)
            due = [i for i in range(args.jobs) if due_at(i, start, args) is not None]
            sleep_until(start + args.window + 2.0)
            _drain(client, due, time.time() + 30)
            out["cpu_s"] = proc_cpu_seconds(proc.pid) - cpu0
            out["redis_cpu_s"] = proc_cpu_seconds(server.proc.pid) - rcpu0
            out["stats"] = command_stats(client)
            out["rss_after_mb"] = proc_rss_bytes(proc.pid) / 2**20
            out["start"], out["statuses"] = _lateness(client, due)
            out["scrape_bytes"] = _scrape(port)  # as Prometheus does: the line cache fills
            out["rss_scraped_mb"] = proc_rss_bytes(proc.pid) / 2**20
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        return out


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-20:])


def _scrape(port: int) -> int:
    """GET /metrics once, gzip accepted (as Prometheus asks for it); the body's size."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        return len(conn.getresponse().read())
    finally:
        conn.close()


def _drain(client: Any, due: list[int], deadline: float) -> None:
    """Wait until every due job's run is in its history (or the deadline)."""
    while time.time() < deadline:
        pipe = client.pipeline(transaction=False)
        for i in due:
            pipe.xlen(f"scheduler:runs:job-{i:05d}")
        if all(n >= 1 for n in pipe.execute()):
            return
        time.sleep(0.5)


def _lateness(client: Any, due: list[int]) -> tuple[list[float], dict[str, int]]:
    pipe = client.pipeline(transaction=False)
    for i in due:
        pipe.xrange(f"scheduler:runs:job-{i:05d}")
    late: list[float] = []
    statuses: dict[str, int] = {}
    for entries in pipe.execute():
        for _id, f in entries:
            statuses[f["status"]] = statuses.get(f["status"], 0) + 1
            if f.get("scheduled_for") and f.get("status") in ("success", "partial_success"):
                started = datetime.fromisoformat(f["started_at"])
                late.append((started - datetime.fromisoformat(f["scheduled_for"])).total_seconds())
    return late, statuses


# ----------------------------------------------------------------------------- APScheduler


def child_apscheduler(args: argparse.Namespace) -> dict[str, Any]:
    import resource

    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    logging.basicConfig(level=logging.ERROR)
    t0 = time.time()
    start = int(t0 + args.lead)
    late: list[float] = []

    def job(slot: int) -> None:
        late.append(time.time() - slot)

    sched = BackgroundScheduler(timezone=UTC)
    for i in range(args.jobs):
        slot = due_at(i, start, args)
        when = slot if slot is not None else start + HELD_OFFSET_S + i % 3600
        t = datetime.fromtimestamp(when, UTC)
        sched.add_job(
            job,
            CronTrigger(second=t.second, minute=t.minute, hour=t.hour, timezone=UTC),
            args=[when],
            id=f"job-{i:05d}",
        )
    sched.start()
    out: dict[str, Any] = {"ready_s": time.time() - t0}
    sleep_until(start - 1.0)
    pid = int(Path("/proc/self/stat").read_text().split()[0])
    out["rss_loaded_mb"] = proc_rss_bytes(pid) / 2**20
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    sleep_until(start + args.window + 2.0)
    out["cpu_s"] = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0
    out["rss_after_mb"] = proc_rss_bytes(pid) / 2**20
    sched.shutdown(wait=True)
    out["start"] = late
    return out


def run_apscheduler(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--jobs", str(args.jobs)]
    cmd += ["--rate", str(args.rate), "--window", str(args.window), "--lead", "15"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.window + 120)
    if proc.returncode != 0:
        sys.exit(f"APScheduler child failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ----------------------------------------------------------------------------- report


def report(name: str, r: dict[str, Any], runs_expected: int) -> None:
    s = r["start"]
    print(f"{name}:")
    print(f"  ready after {r['ready_s']:.1f} s; runs {len(s)} of {runs_expected}")
    if s:
        print(
            f"  start lateness (slot -> run body): p50 {percentile(s, 50) * 1e3:.1f} ms  "
            f"p99 {percentile(s, 99) * 1e3:.1f} ms  max {max(s) * 1e3:.1f} ms"
        )
        print(f"  CPU over the window: {r['cpu_s']:.2f} s, {r['cpu_s'] / len(s) * 1e3:.2f} ms/run")
    print(
        f"  RSS: {r['rss_loaded_mb']:.0f} MiB with the jobs loaded, "
        f"{r['rss_after_mb']:.0f} MiB after the window"
        + (
            f", {r['rss_scraped_mb']:.0f} MiB after one /metrics scrape "
            f"({r['scrape_bytes'] / 1e6:.1f} MB gzip)"
            if "rss_scraped_mb" in r
            else ""
        )
    )
    if "stats" in r:
        stats, n = r["stats"], max(1, len(s))
        top = {c: stats.get(c, 0) for c in TOP_LEVEL if stats.get(c)}
        print(
            f"  Redis: {sum(stats.values()) / n:.1f} commands per run counting those "
            f"scripts run inside; EVALSHA {stats.get('evalsha', 0) / n:.2f} per run; "
            f"redis-server CPU {r['redis_cpu_s']:.2f} s"
        )
        print(f"  top-level calls over the window: {top}; statuses {r['statuses']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--rate", type=int, default=20, help="jobs due per second")
    ap.add_argument("--window", type=int, default=60, help="seconds")
    ap.add_argument(
        "--pool-size", type=int, default=0, help="the daemon's pool_size (default: its own, 4)"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--lead", type=float, default=15.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_apscheduler(args)))
        return
    import apscheduler

    due = args.rate * args.window
    print(
        f"run_10k: {args.jobs} jobs held, {args.rate} due per second for {args.window} s "
        f"({due} runs); pool_size {args.pool_size or 'default'}; "
        f"APScheduler {apscheduler.__version__}"
    )
    ours = run_stocksched(args)
    theirs = run_apscheduler(args)
    report("stocksched run (console script, jobs.yaml, redis-server; demo ticker)", ours, due)
    report("APScheduler BackgroundScheduler (same triggers, no-op job)", theirs, due)


if __name__ == "__main__":
    main()
