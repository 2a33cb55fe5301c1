"""Cold start (issue 11, goals 5 and 6): `stocksched validate` and `stocksched run` to ready.

In one run, each measured ``--repeat`` times (medians printed, after one untimed warm-up
of each so the page cache is equally warm for all):

- the baseline: ``python -c 'import pandas'``;
- ``stocksched validate jobs.yaml`` on the example jobs file (the installed console
  script next to this interpreter, else ``python -m stocksched``);
- ``stocksched run`` on the example jobs file with a private redis-server on a free port:
  from the spawn until ``GET /readyz`` answers 200 (polled every 5 ms); then the daemon's
  RSS, 1 s after ready, and which heavy libraries it has mapped (from /proc/PID/maps).

Each figure is printed as wall time and CPU time (user + system of the child; for the
daemon, all its threads until ready, from /proc/PID/stat, in 10 ms ticks):
on a shared machine the wall times carry the other processes' load, the CPU times much
less of it, so both are compared with the baseline's.

Every interpreter runs from bytecode, as an installed package does (pip byte-compiles at
install; an editable install writes ``__pycache__`` on first import): the bytecode of
stocksched, its libraries and pandas is written by the warm-up runs under the temp
directory (``PYTHONPYCACHEPREFIX``), even when ``PYTHONDONTWRITEBYTECODE`` is set.
``--no-bytecode`` sets ``PYTHONDONTWRITEBYTECODE=1`` instead, as the environment this
benchmark first ran in did: stocksched's own modules (no ``__pycache__`` in a fresh
checkout) are then compiled from source at every start, while pandas and the other
installed libraries still load the bytecode pip wrote.

``--before DIR`` measures a second source tree's stocksched (for example an older commit:
``git archive COMMIT | tar -x -C DIR``) in the same run, each of its runs next to this
tree's, against the same baseline runs: before and after from one run.

Asserts nothing about speed. Only 127.0.0.1 is used; every process started here is
stopped here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    REPO,
    clean_env,
    free_port,
    private_redis,
    proc_cpu_seconds,
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


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, from the child's rusage) of one run of ``cmd``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def mapped(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    return [name for name, marker in MARKERS.items() if marker in text]


def run_daemon(
    redis_url: str, env: dict[str, str], cwd: Path, settle: bool
) -> tuple[float, float, int, list[str]]:
    """Seconds from spawn to /readyz 200 (wall, and the daemon's CPU); RSS and mapped
    libraries 1 s later (if settle)."""
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
        cpu = proc_cpu_seconds(proc.pid)
        rss, libs = 0, []
        if settle:
            time.sleep(1.0)
            rss, libs = proc_rss_bytes(proc.pid), mapped(proc.pid)
        return elapsed, cpu, rss, libs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


Sample = tuple[float, float]  # wall seconds, CPU seconds
KINDS = ("validate", "run")


def measure(repeat: int, envs: dict[str, dict[str, str]], cwd: Path) -> dict[str, Any]:
    """``repeat`` interleaved runs of the baseline, and of validate and run for each tree
    in ``envs`` (its label: its environment), after one untimed warm-up of each."""
    baseline_cmd = [sys.executable, "-c", "import pandas"]
    validate_cmd = [*stocksched_command(), "validate", "jobs.yaml"]
    out: dict[str, Any] = {"pandas": [], "rss": [], "libs": []}
    for label in envs:
        out[f"validate{label}"], out[f"run{label}"] = [], []
    first = next(iter(envs.values()))
    with private_redis() as r:
        timed(baseline_cmd, first, cwd)
        for env in envs.values():
            timed(validate_cmd, env, cwd)
            run_daemon(r.url, env, cwd, settle=False)
        for _ in range(repeat):  # interleaved: drift hits every figure alike
            out["pandas"].append(timed(baseline_cmd, first, cwd))
            for label, env in envs.items():
                out[f"validate{label}"].append(timed(validate_cmd, env, cwd))
                r.client().flushall()
                wall, cpu, size, libs = run_daemon(r.url, env, cwd, settle=not label)
                out[f"run{label}"].append((wall, cpu))
                if not label:
                    out["rss"].append(size)
                    out["libs"] = libs
    return out


def medians(samples: list[Sample]) -> Sample:
    return statistics.median(w for w, _ in samples), statistics.median(c for _, c in samples)


def figure(samples: list[Sample], base: Sample | None = None) -> str:
    """``wall ms (CPU ms)``, and each as a multiple of the baseline's."""
    wall, cpu = medians(samples)
    text = f"{wall * 1000:.0f} ms (CPU {cpu * 1000:.0f} ms)"
    if base is not None:
        text += f"; {wall / base[0]:.2f}x baseline (CPU {cpu / base[1]:.2f}x)"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="timed runs of each (default 7)")
    ap.add_argument(
        "--no-bytecode",
        action="store_true",
        help="PYTHONDONTWRITEBYTECODE=1: stocksched compiled from source (the old measurement)",
    )
    ap.add_argument(
        "--before",
        metavar="DIR",
        type=Path,
        help="also measure the stocksched of this source tree (e.g. `git archive COMMIT | "
        "tar -x -C DIR`), interleaved with this one's, against the same baseline runs",
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
        envs = {"": env}
        if args.before is not None:  # clean_env put this tree first on PYTHONPATH
            envs[" (before)"] = {**env, "PYTHONPATH": str(args.before.resolve())}
        m = measure(args.repeat, envs, cwd)
    report(m, list(envs), args.repeat, "compiled from source" if args.no_bytecode else "")


def report(m: dict[str, Any], labels: list[str], repeat: int, how: str) -> None:
    base = medians(m["pandas"])
    rows = [("baseline: python -c 'import pandas'", figure(m["pandas"]))]
    for label in reversed(labels):
        rows += [
            (f"stocksched validate jobs.yaml{label}", figure(m[f"validate{label}"], base)),
            (f"stocksched run -> /readyz 200{label}", figure(m[f"run{label}"], base)),
        ]
    rows += [
        ("daemon RSS 1 s after ready", f"{statistics.median(m['rss']) / 2**20:.1f} MiB"),
        ("heavy libraries the daemon mapped", ", ".join(m["libs"]) or "none"),
    ]
    print(
        f"stocksched startup, medians of {repeat} (Python {sys.version.split()[0]}; "
        f"stocksched {how or 'from bytecode'})"
    )
    for name, value in rows:
        print(f"  {name:<38} {value}")
    series = ["pandas", *(f"{kind}{label}" for label in reversed(labels) for kind in KINDS)]
    for i, unit in enumerate(("wall", "CPU")):
        print(
            f"  all runs, {unit} (ms): "
            + " | ".join(
                f"{key.replace('pandas', 'import pandas')} "
                + " ".join(f"{x[i] * 1000:.0f}" for x in m[key])
                for key in series
            )
        )


if __name__ == "__main__":
    main()
