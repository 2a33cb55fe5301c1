"""/metrics from the per-job tables: the series users rely on, their values, removal, and
promtool's lint (issue 11.4)."""

from __future__ import annotations

import gzip
import shutil
import subprocess

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stocksched.metrics import Metrics, exposition


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
    rendered = _samples(m.render().decode())
    collected = _samples(generate_latest(m.registry).decode())
    # process_* values (CPU seconds, RSS) move between the two renders: compare names only
    assert {k for k in rendered if k[0].startswith("process_")} == {
        k for k in collected if k[0].startswith("process_")
    }
    assert {k: v for k, v in rendered.items() if not k[0].startswith("process_")} == {
        k: v for k, v in collected.items() if not k[0].startswith("process_")
    }
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


@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [
        ("gzip", True),  # Prometheus' scraper
        ("gzip, deflate, br", True),  # a browser, curl --compressed
        ("deflate, GZIP;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=0.0, identity", False),
        ("identity", False),
        ("", False),
        (None, False),  # curl without --compressed sends no header
    ],
)
def test_gzip_is_served_only_when_the_client_accepts_it(header: str | None, gzip_ok: bool) -> None:
    m = Metrics("test")
    _ran(m, "a", 2.5, 1_760_000_000.25)
    body = m.render()
    served, headers = exposition(body, header)
    assert headers["Vary"] == "Accept-Encoding"
    if gzip_ok:
        assert headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(served) == body
    else:
        assert "Content-Encoding" not in headers
        assert served == body


def test_the_served_gzip_body_of_many_jobs_is_small_and_promtool_clean() -> None:
    m = Metrics("test")
    for i in range(2000):
        _ran(m, f"job-{i:04d}", i / 3, 1_760_000_000 + i / 7)
    body = m.render()
    served, _ = exposition(body, "gzip")
    assert len(served) * 8 < len(body)  # the text repeats names and labels on every line
    text = gzip.decompress(served)
    assert _samples(text.decode()) == _samples(body.decode())
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found; install the Debian package `prometheus`")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert result.returncode == 0 and result.stdout + result.stderr == b"", result


def test_the_standard_process_series_describe_this_process() -> None:
    import os

    got = _samples(Metrics("test").render().decode())
    with open(f"/proc/{os.getpid()}/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert 0.5 * rss < got["process_resident_memory_bytes", ()] < 2 * rss
    assert abs(got["process_open_fds", ()] - len(os.listdir(f"/proc/{os.getpid()}/fd"))) <= 2
    assert got["process_cpu_seconds_total", ()] > 0
    assert got["process_start_time_seconds", ()] > 1_700_000_000
