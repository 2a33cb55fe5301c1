"""/metrics from the per-job tables: the series users rely on, their values, removal, and
promtool's lint (issue 11.4)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stocksched.metrics import Metrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _ran(m: Metrics, job: str, duration: float, ts: float) -> None:
    m.observe_run(job, "success", "schedule", duration)
    m.ticker_fetches.labels(job=job, result="success").inc()
    m.rows_stored.labels(job=job).inc(5)
    m.job_next_run.labels(job=job).set(ts + 60)
    m.job_paused.labels(job=job).set(0)
    m.set_job_runtime(job, ts, ts, running=False)


def test_series_after_runs_have_their_values() -> None:
    m = Metrics("test")
    _ran(m, "a", 2.5, 1_760_000_000.25)
    _ran(m, "b", 0.5, 1_760_000_001.0)
    m.observe_run("a", "failed", "manual", 7.0)
    m.set_job_runtime("a", 1_760_000_100.0, 1_760_000_000.25, running=True)
    got = _samples(m.render().decode())
    a = (("job", "a"),)
    assert (
        got["stocksched_job_runs_total", (*a, ("status", "success"), ("trigger", "schedule"))] == 1
    )
    assert got["stocksched_job_runs_total", (*a, ("status", "failed"), ("trigger", "manual"))] == 1
    assert got["stocksched_job_last_run_duration_seconds", a] == 7.0
    assert got["stocksched_job_last_run_timestamp_seconds", a] == 1_760_000_100.0
    assert got["stocksched_job_last_success_timestamp_seconds", a] == 1_760_000_000.25
    assert got["stocksched_job_next_run_timestamp_seconds", a] == 1_760_000_060.25
    assert got["stocksched_job_running", a] == 1
    assert got["stocksched_job_running", (("job", "b"),)] == 0
    assert got["stocksched_job_paused", a] == 0
    assert got["stocksched_ticker_fetches_total", (*a, ("result", "success"))] == 1
    assert got["stocksched_rows_stored_total", a] == 5
    # One histogram over all jobs' runs, no job label.
    assert got["stocksched_job_run_duration_seconds_count", ()] == 3
    assert got["stocksched_job_run_duration_seconds_sum", ()] == 10.0
    assert got["stocksched_job_run_duration_seconds_bucket", (("le", "5.0"),)] == 2


def test_render_matches_the_registry_collect_path() -> None:
    """The cached text says what prometheus_client renders from the same collectors."""
    m = Metrics("test")
    for i in range(20):
        _ran(m, f"job-{i}", i / 3, 1_760_000_000 + i / 7)
    m.bars_dropped.labels(job="job-3", reason="bad_price").inc(2)
    m.job_missed_runs.labels(job="job-4").inc(3)
    assert _samples(m.render().decode()) == _samples(generate_latest(m.registry).decode())
    assert m.registry.get_sample_value("stocksched_job_missed_runs_total", {"job": "job-4"}) == 3


def test_a_removed_job_loses_every_series() -> None:
    m = Metrics("test")
    _ran(m, "gone", 1.0, 1_760_000_000.0)
    _ran(m, "kept", 1.0, 1_760_000_000.0)
    m.bars_dropped.labels(job="gone", reason="bad_price").inc()
    m.job_missed_runs.labels(job="gone").inc()
    text = m.render().decode()
    m.remove_job("gone")
    after = m.render().decode()
    assert 'job="gone"' in text
    assert 'job="gone"' not in after
    assert (
        _samples(after)["stocksched_job_last_run_timestamp_seconds", (("job", "kept"),)] == 1.76e9
    )
    assert generate_latest(m.registry).decode().count('job="gone"') == 0


def test_a_changed_value_is_rendered_again() -> None:
    m = Metrics("test")
    m.job_next_run.labels(job="a").set(100)
    assert 'stocksched_job_next_run_timestamp_seconds{job="a"} 100.0\n' in m.render().decode()
    m.job_next_run.labels(job="a").set(160.5)
    assert 'stocksched_job_next_run_timestamp_seconds{job="a"} 160.5\n' in m.render().decode()


def test_promtool_check_metrics_passes() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found; install the Debian package `prometheus`")
    m = Metrics("test")
    for i in range(50):
        _ran(m, f"job-{i:02d}", i / 3, 1_760_000_000 + i / 7)
    m.bars_dropped.labels(job="job-01", reason="bad_price").inc(2)
    m.job_missed_runs.labels(job="job-02").inc()
    result = subprocess.run(
        [promtool, "check", "metrics"], input=m.render(), capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == b""
