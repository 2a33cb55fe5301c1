"""Every Prometheus metric stocksched exports, defined in one place.

Labels are bounded: job id, status, trigger, result, state, reason. Never tickers or free
text, so cardinality grows with the config, not with traffic. A ``Metrics`` instance owns its
own CollectorRegistry (no global state), and lives as long as the daemon, so counters
survive config reloads.
"""

from __future__ import annotations

import contextlib

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Per-job histogram: few buckets, since with 10,000 jobs every bucket is 10,000 series.
RUN_BUCKETS = (1, 5, 15, 60, 300, 900, 3600)
FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

JOB_STATES = ("pending", "running", "completed", "failed", "paused")
#: Why bars were dropped before storing (stocksched.sources.quality.DROP_REASONS).
DROP_REASONS = ("out_of_window", "bad_price", "inconsistent_range")


class Metrics:
    def __init__(self, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._define_job_series(r)
        self._define_run_series(r)
        self._define_daemon_series(r, version)

    def _define_job_series(self, r: CollectorRegistry) -> None:
        """Per job: runs, their duration, last/next times, running and paused."""
        self.job_runs = Counter(
            "stocksched_job_runs",
            "Finished job runs by result status and trigger.",
            ["job", "status", "trigger"],
            registry=r,
        )
        self.job_run_duration = Histogram(
            "stocksched_job_run_duration_seconds",
            "Wall time of one job run.",
            ["job"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.job_last_run = Gauge(
            "stocksched_job_last_run_timestamp_seconds",
            "Unix time the job's last run finished.",
            ["job"],
            registry=r,
        )
        self.job_last_success = Gauge(
            "stocksched_job_last_success_timestamp_seconds",
            "Unix time the job's last fully or partially successful run finished.",
            ["job"],
            registry=r,
        )
        self.job_next_run = Gauge(
            "stocksched_job_next_run_timestamp_seconds",
            "Unix time of the job's next scheduled slot.",
            ["job"],
            registry=r,
        )
        self.job_running = Gauge(
            "stocksched_job_running",
            "1 while a run of the job is in progress.",
            ["job"],
            registry=r,
        )
        self.job_paused = Gauge(
            "stocksched_job_paused",
            "1 while the job is paused (API or enabled: false).",
            ["job"],
            registry=r,
        )

    def _define_run_series(self, r: CollectorRegistry) -> None:
        """What slots and runs do: missed slots, ticker fetches, bars stored and dropped,
        fetch time, lateness."""
        self.job_missed_runs = Counter(
            "stocksched_job_missed_runs",
            "Slots that did not run (downtime beyond catch-up, overlap skips, closed market).",
            ["job"],
            registry=r,
        )
        self.ticker_fetches = Counter(
            "stocksched_ticker_fetches",
            "Ticker fetch-and-store attempts by result.",
            ["job", "result"],
            registry=r,
        )
        self.rows_stored = Counter(
            "stocksched_rows_stored", "Bars written to storage.", ["job"], registry=r
        )
        self.bars_dropped = Counter(
            "stocksched_bars_dropped",
            "Bars a source returned that were not stored, by reason (data-quality checks).",
            ["job", "reason"],
            registry=r,
        )
        self.fetch_duration = Histogram(
            "stocksched_fetch_duration_seconds",
            "Time to fetch one ticker from its source.",
            buckets=FETCH_BUCKETS,
            registry=r,
        )
        self.schedule_lateness = Histogram(
            "stocksched_schedule_lateness_seconds",
            "Delay from a slot's due time to its dispatch.",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )

    def _define_daemon_series(self, r: CollectorRegistry, version: str) -> None:
        """The daemon itself: reloads, jobs by state, Redis errors, build info."""
        self.config_reloads = Counter(
            "stocksched_config_reloads", "Config reload attempts by result.", ["result"], registry=r
        )
        self.config_last_reload_ok = Gauge(
            "stocksched_config_last_reload_successful",
            "1 if the last config load or reload succeeded.",
            registry=r,
        )
        self.config_last_reload_success = Gauge(
            "stocksched_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
            registry=r,
        )
        self.jobs = Gauge("stocksched_jobs", "Configured jobs by state.", ["state"], registry=r)
        self.redis_errors = Counter(
            "stocksched_redis_errors", "Redis operations that failed.", registry=r
        )
        self.build_info = Gauge(
            "stocksched_build_info",
            "Always 1; the version label tells the build.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=version).set(1)
        for state in JOB_STATES:
            self.jobs.labels(state=state).set(0)
        for result in ("success", "failure"):
            self.config_reloads.labels(result=result)

    def set_job_runtime(
        self, job_id: str, last_run: float | None, last_success: float | None, running: bool
    ) -> None:
        """Job-level gauges, from the job record every replica updates (not this process's runs).

        A job that never ran or never succeeded exports 0, as the alert rules expect.
        """
        self.job_last_run.labels(job=job_id).set(last_run or 0)
        self.job_last_success.labels(job=job_id).set(last_success or 0)
        self.job_running.labels(job=job_id).set(1 if running else 0)

    def remove_job(self, job_id: str) -> None:
        """Drop every series of a job that left the config."""
        for metric in (
            self.job_run_duration,
            self.job_last_run,
            self.job_last_success,
            self.job_next_run,
            self.job_running,
            self.job_paused,
            self.job_missed_runs,
            self.rows_stored,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(job_id)
        for metric, label_sets in (
            (
                self.job_runs,
                [
                    (s, t)
                    for s in ("success", "partial_success", "failed")
                    for t in ("schedule", "manual")
                ],
            ),
            (self.ticker_fetches, [(r,) for r in ("success", "failure")]),
            (self.bars_dropped, [(r,) for r in DROP_REASONS]),
        ):
            for labels in label_sets:
                with contextlib.suppress(KeyError):
                    metric.remove(job_id, *labels)

    def render(self) -> bytes:
        return generate_latest(self.registry)
