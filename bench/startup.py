"""Cold start (issue 11, goals 5 and 6): `stocksched validate` and `stocksched run` to ready.

In one run, each measured ``--repeat`` times (medians printed, after one untimed warm-up
of each so the page cache is equally warm for all):

- the baseline: ``python -c 'import pandas'``;
- ``stocksched validate jobs.yaml`` on the example jobs file (the installed console
  script next to this interpreter, else ``python -m stocksched``);
- ``stocksched run`` on the example jobs file with a private redis-server on a free port:
  from the spawn until ``GET /readyz`` answers 200 (polled every 5 ms); then the daemon's
  RSS, 1 s after ready, and which heavy libraries it has mapped (from /proc/PID/maps).

Every interpreter runs from bytecode, as an installed package does (pip byte-compiles at
install; an editable install writes ``__pycache__`` on first import): the bytecode of
stocksched, its libraries and pandas is written by the warm-up runs under the temp
directory (``PYTHONPYCACHEPREFIX``), even when ``PYTHONDONTWRITEBYTECODE`` is set.
``--no-bytecode`` sets ``PYTHONDONTWRITEBYTECODE=1`` instead, as the environment this
benchmark first ran in did: stocksched's own modules (no ``__pycache__`` in a fresh
checkout) are then compiled from source at every start, while pandas and the other
installed libraries still load the bytecode pip wrote.

Asserts nothing about speed. Only 127.0.0.1 is used; every process started here is
stopped here.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    REPO,
    clean_env,
    free_port,
    private_redis,
    proc_rss_bytes,
    ready,
    run_command,
    stocksched_command,
)

EXAMPLE_JOBS = REPO / "jobs.yaml"
POLL_S = 0.005
READY_TIMEOUT_S = 30.0
# Shared objects whose presence in /proc/PID/maps shows a library was imported.
MARKERS = {
    "pandas": "/pandas/_libs/",
    "numpy": "/numpy/_core/",
    "curl_cffi (yfinance)": "/curl_cffi/",
    "fakeredis (lupa)": "/lupa/",
}


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - t0


def mapped(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    return [name for name, marker in MARKERS.items() if marker in text]


def run_daemon(
    redis_url: str, env: dict[str, str], cwd: Path, settle: bool
) -> tuple[float, int, list[str]]:
    """Seconds from spawn to /readyz 200; RSS and mapped libraries 1 s later (if settle)."""
    port = free_port()
    cmd = run_command(cwd / "jobs.yaml", redis_url, port, "WARNING")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while not ready(port):
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {proc.returncode}")
            if time.perf_counter() - t0 > READY_TIMEOUT_S:
                raise RuntimeError("the daemon was not ready in time")
            time.sleep(POLL_S)
        elapsed = time.perf_counter() - t0
        rss, libs = 0, []
        if settle:
            time.sleep(1.0)
            rss, libs = proc_rss_bytes(proc.pid), mapped(proc.pid)
        return elapsed, rss, libs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="timed runs of each (default 7)")
    ap.add_argument(
        "--no-bytecode",
        action="store_true",
        help="PYTHONDONTWRITEBYTECODE=1: stocksched compiled from source (the old measurement)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="stocksched-bench-startup-") as d:
        cwd = Path(d)
        shutil.copy(EXAMPLE_JOBS, cwd / "jobs.yaml")
        env = clean_env(cwd / "home")
        # As an installed package runs: from bytecode. The warm-up runs below write it,
        # for the baseline's modules and ours alike, under the temp dir (not the tree).
        if args.no_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(cwd / "pycache")
        baseline_cmd = [sys.executable, "-c", "import pandas"]
        validate_cmd = [*stocksched_command(), "validate", "jobs.yaml"]
        pandas_s: list[float] = []
        validate_s: list[float] = []
        run_s: list[float] = []
        rss: list[int] = []
        libs: list[str] = []
        with private_redis() as r:
            timed(baseline_cmd, env, cwd)  # warm-up, untimed
            timed(validate_cmd, env, cwd)
            run_daemon(r.url, env, cwd, settle=False)
            for _ in range(args.repeat):  # interleaved: drift hits all three alike
                pandas_s.append(timed(baseline_cmd, env, cwd))
                validate_s.append(timed(validate_cmd, env, cwd))
                r.client().flushall()
                elapsed, size, libs = run_daemon(r.url, env, cwd, settle=True)
                run_s.append(elapsed)
                rss.append(size)
    base = statistics.median(pandas_s)
    run = statistics.median(run_s)
    rows = [
        ("baseline: python -c 'import pandas'", f"{base * 1000:.0f} ms"),
        ("stocksched validate jobs.yaml", f"{statistics.median(validate_s) * 1000:.0f} ms"),
        ("stocksched run -> /readyz 200", f"{run * 1000:.0f} ms ({run / base:.2f}x baseline)"),
        ("daemon RSS 1 s after ready", f"{statistics.median(rss) / 2**20:.1f} MiB"),
        ("heavy libraries the daemon mapped", ", ".join(libs) or "none"),
    ]
    how = "compiled from source" if args.no_bytecode else "from bytecode"
    print(
        f"stocksched startup, medians of {args.repeat} (Python {sys.version.split()[0]}; "
        f"stocksched {how})"
    )
    for name, value in rows:
        print(f"  {name:<38} {value}")
    print(
        "  all runs (ms): import pandas "
        + " ".join(f"{x * 1000:.0f}" for x in pandas_s)
        + " | validate "
        + " ".join(f"{x * 1000:.0f}" for x in validate_s)
        + " | run "
        + " ".join(f"{x * 1000:.0f}" for x in run_s)
    )


if __name__ == "__main__":
    main()
