"""/healthz and /metrics under wrk while a 500-ticker demo job runs, vs an idle daemon (issue 3).

Starts ``stocksched run`` (a subprocess, default settings: pool 4, ticker concurrency 4)
on a private redis-server, twice in the same benchmark run:

1. baseline: the same jobs.yaml with the job ``enabled: false`` (no job running);
2. loaded: one demo job, 500 tickers (T0001..T0500), ``@every 5s``.

Each time it drives ``/healthz`` then ``/metrics`` with ``wrk -t2 -c16 -d10s --latency``
and prints requests/s, p50/p99 latency, errors and the daemon's CPU use during the
wrk window; for the loaded daemon also the job runs finished meanwhile.

wrk is Debian's ``wrk`` package (``apt-get install -y wrk``). Everything is on 127.0.0.1.

    python bench/http_load.py [--duration 10] [--connections 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    PrivateRedis,
    clean_env,
    free_port,
    private_redis,
    proc_cpu_seconds,
    proc_rss_bytes,
)
from stocksched.storage import keys

JOB_ID = "demo-500"
TICKERS = [f"T{i:04d}" for i in range(1, 501)]


def jobs_yaml(enabled: bool) -> str:
    return (
        "\n".join(
            [
                "version: 1",
                "jobs:",
                f"  - id: {JOB_ID}",
                f"    tickers: [{', '.join(TICKERS)}]",
                '    schedule: "@every 5s"',
                "    source: demo",
                "    window: 30d",
                "    ttl: 1h",
                f"    enabled: {'true' if enabled else 'false'}",
            ]
        )
        + "\n"
    )


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: str
    cpu_s: float
    seconds: float


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> tuple[float, float, float, int, str]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = []
    sock = re.search(r"Socket errors:.*", out)
    if sock:
        errors.append(sock.group(0).strip())
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        errors.append(f"non-2xx: {non2xx.group(1)}")
    return rps, p50, p99, total, "; ".join(errors) or "none"


def run_wrk(url: str, pid: int, args: argparse.Namespace) -> WrkResult:
    cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
    out = subprocess.run(
        [
            "wrk",
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=args.duration + 60,
        check=True,
    ).stdout
    cpu, secs = proc_cpu_seconds(pid) - cpu0, time.monotonic() - t0
    rps, p50, p99, total, errors = parse_wrk(out)
    return WrkResult(rps, p50, p99, total, errors, cpu, secs)


def wait_ready(base: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"daemon exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    sys.exit("daemon not ready in time")


class Daemon:
    """``stocksched run`` as a subprocess; its output is drained to a log file."""

    def __init__(self, workdir: Path, redis: PrivateRedis) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"daemon-{self.port}.log"
        self._fh = self.log.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stocksched",
                "run",
                "--jobs",
                str(workdir / "jobs.yaml"),
                "--redis-url",
                redis.url,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--shutdown-grace",
                "10",
                "--log-level",
                "WARNING",
            ],
            cwd=workdir,
            env=clean_env(workdir / "home"),
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
        return self.proc.returncode


def runs_between(client: Any, t0_ms: int, t1_ms: int) -> list[dict[str, str]]:
    entries = client.xrange(keys.runs_key(JOB_ID), min=f"{t0_ms}-0", max=f"{t1_ms}-0")
    return [dict(f) for _id, f in entries]


def measure(
    label: str, workdir: Path, redis: PrivateRedis, enabled: bool, args: argparse.Namespace
) -> dict[str, Any]:
    client = redis.client()
    client.flushall()
    (workdir / "jobs.yaml").write_text(jobs_yaml(enabled), encoding="utf-8")
    daemon = Daemon(workdir, redis)
    out: dict[str, Any] = {"label": label}
    try:
        wait_ready(daemon.base, daemon.proc)
        if enabled:  # wait until the job has run once and is running again: steady state
            deadline = time.monotonic() + 60
            while client.xlen(keys.runs_key(JOB_ID)) < 1:
                if time.monotonic() > deadline:
                    sys.exit("the 500-ticker job did not finish a run within 60 s")
                time.sleep(0.2)
        else:
            time.sleep(2)
        out["rss_mb"] = proc_rss_bytes(daemon.proc.pid) / 2**20
        # The same window length without HTTP load: the daemon's own CPU and job runs.
        idle_cpu0, t0_ms = proc_cpu_seconds(daemon.proc.pid), int(time.time() * 1000)
        time.sleep(args.duration)
        out["cpu_no_http"] = (proc_cpu_seconds(daemon.proc.pid) - idle_cpu0) / args.duration
        out["runs_no_http"] = runs_between(client, t0_ms, int(time.time() * 1000))
        out["metrics_bytes"] = len(
            urllib.request.urlopen(daemon.base + "/metrics", timeout=5).read()
        )
        for path in ("/healthz", "/metrics"):
            t0_ms = int(time.time() * 1000)
            res = run_wrk(daemon.base + path, daemon.proc.pid, args)
            runs = runs_between(client, t0_ms, int(time.time() * 1000))
            out[path] = (res, runs)
        rc = daemon.stop()
        if rc != 0:
            print(f"  warning: {label}: daemon exited with {rc}")
    finally:
        daemon.stop()
    log_text = daemon.log.read_text(encoding="utf-8")
    # Logging at WARNING: every line the daemon wrote is a warning, an error or a trace.
    out["log_problems"] = [ln for ln in log_text.splitlines() if ln.strip()]
    return out


def describe_runs(runs: list[dict[str, str]]) -> str:
    if not runs:
        return ""
    ok = sum(1 for r in runs if r.get("status") == "success")
    durations = [float(r["duration_s"]) for r in runs if r.get("duration_s")]
    mean = sum(durations) / len(durations) if durations else float("nan")
    return f"; job runs finished meanwhile: {len(runs)} ({ok} success, mean {mean:.1f} s each)"


def report(result: dict[str, Any], duration: int) -> None:
    print(
        f"{result['label']}: daemon RSS {result['rss_mb']:.0f} MiB, /metrics body "
        f"{result['metrics_bytes']} bytes"
    )
    print(
        f"  no HTTP load ({duration} s): daemon CPU {result['cpu_no_http']:.2f} cores"
        f"{describe_runs(result['runs_no_http'])}"
    )
    for path in ("/healthz", "/metrics"):
        res, runs = result[path]
        print(
            f"  {path:9s} {res.rps:8.0f} req/s  p50 {res.p50_ms:6.1f} ms  p99 "
            f"{res.p99_ms:6.1f} ms  ({res.requests} requests, errors: {res.errors}; "
            f"daemon CPU {res.cpu_s / res.seconds:.2f} cores){describe_runs(runs)}"
        )
    problems = result["log_problems"]
    print(
        f"  daemon log: {len(problems)} warnings/errors"
        + (f", first: {problems[0][:200]}" if problems else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="wrk seconds per endpoint")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    print(f"http_load: wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency")
    with private_redis() as redis, tempfile.TemporaryDirectory(prefix="bench-http-") as d:
        workdir = Path(d)
        results = [
            measure("baseline (idle daemon, job disabled)", workdir, redis, False, args),
            measure("loaded (500-ticker demo job @every 5s)", workdir, redis, True, args),
        ]
        for result in results:
            report(result, args.duration)


if __name__ == "__main__":
    main()
