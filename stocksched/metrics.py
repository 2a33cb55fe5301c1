"""Every Prometheus metric stocksched exports, defined in one place.

Labels are bounded: job id, status, trigger, result, state, reason. Never tickers or free
text, so cardinality grows with the config, not with traffic. A ``Metrics`` instance owns its
own CollectorRegistry (no global state), and lives as long as the daemon, so counters
survive config reloads.

Per-job series live in tables (``JobSeries``), not in labelled prometheus_client children
(80 MiB and over a second of CPU per scrape with 10,000 jobs), registered in ``registry``
as an ordinary collector; ``render`` joins their cached lines after the other metrics.

The body is served gzip-compressed to a scraper that sends ``Accept-Encoding: gzip``
(Prometheus always does), as prometheus-client's own exposition does, but at zlib level 1
(``GZIP_LEVEL``): with 10,000 jobs that all ran, about 15 ms of CPU turns a 6 MB body into
0.4 MB on the wire, where prometheus-client's default level 9 would cost ten times the CPU
for 12% less. Any other client (curl without ``--compressed``, a browser tab asking for no
gzip) gets the same text uncompressed. Nothing is dropped or rounded: every series of the
uncompressed body is in the compressed one (``exposition``).
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from typing import Any, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# One histogram over all jobs' runs (the per-job figure is the last-duration gauge).
RUN_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)
FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

JOB_STATES = ("pending", "running", "completed", "failed", "paused")
#: Why bars were dropped before storing (stocksched.sources.quality.DROP_REASONS).
DROP_REASONS = ("out_of_window", "bad_price", "inconsistent_range")


#: zlib level of a gzip /metrics body: level 1 compresses this repetitive text ~16x.
GZIP_LEVEL = 1


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True if an ``Accept-Encoding`` header value allows gzip (``gzip;q=0`` refuses it)."""
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = params.strip().lower()
        if not q.startswith("q="):
            return True
        try:
            return float(q[2:]) > 0
        except ValueError:
            return False
    return False


def exposition(body: bytes, accept_encoding: str | None) -> tuple[bytes, dict[str, str]]:
    """The /metrics body and headers as served: gzip when the client accepts it."""
    headers = {"Vary": "Accept-Encoding"}
    if not accepts_gzip(accept_encoding):
        return body, headers
    headers["Content-Encoding"] = "gzip"
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0), headers


def _escape(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


#: Values most per-job series hold (counts, 0/1 flags): one float object for them all.
_SMALL = {float(i): float(i) for i in range(1025)}

Key = tuple[str, tuple[str, ...]]  # (job, the other label values) of a labelled family


class JobSeries:
    """One per-job metric family as a table: job (and other label values) -> value.

    ``labels(...)`` returns a handle with ``inc``/``set`` like a prometheus_client child.
    Flat values, not a dict per job (224 bytes each, 17 MiB for 10,000 jobs that ran once,
    issue 11): job -> float, or ``(job, rest)`` -> float with ``rest`` shared by all jobs.
    Each series' line of text is cached until its value changes.
    """

    def __init__(
        self, name: str, doc: str, kind: Literal["counter", "gauge"], labelnames: tuple[str, ...]
    ) -> None:
        self.name, self.doc, self.kind = name, doc, kind
        self.labelnames = ("job", *labelnames)
        self._sample = name + "_total" if kind == "counter" else name
        self._values: dict[str, float] = {}  # labelled by job alone
        self._labelled: dict[Key, float] = {}  # with more labels
        self._rests: dict[tuple[str, ...], tuple[str, ...]] = {}  # each ``rest`` seen, once
        self._text: dict[str | Key, str] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str, **named: str) -> _Series:
        key = values if values else tuple(named[n] for n in self.labelnames)
        return _Series(self, key[0], key[1:])

    def _where(self, job: str, rest: tuple[str, ...]) -> tuple[dict[Any, float], str | Key]:
        """The dict that holds the series and its key there."""
        if rest:
            return self._labelled, (job, self._rests.setdefault(rest, rest))
        return self._values, job

    def add(self, job: str, rest: tuple[str, ...], amount: float) -> None:
        with self._lock:
            values, key = self._where(job, rest)
            self._store(values, key, values.get(key, 0.0) + amount)

    def put(self, job: str, rest: tuple[str, ...], value: float) -> None:
        with self._lock:
            values, key = self._where(job, rest)
            self._store(values, key, float(value))

    def _store(self, values: dict[Any, float], key: str | Key, value: float) -> None:
        if values.get(key) != value:
            values[key] = _SMALL.get(value, value)
            self._text.pop(key, None)

    def value(self, job: str, *rest: str) -> float | None:
        values, key = self._where(job, rest)
        return values.get(key)

    def remove(self, job: str, *rest: str) -> None:
        """Drop one series (KeyError if absent), like a labelled metric's ``remove``."""
        with self._lock:
            values, key = self._where(job, rest)
            del values[key]
            self._text.pop(key, None)

    def remove_job(self, job: str) -> None:
        with self._lock:
            self._values.pop(job, None)
            self._text.pop(job, None)
            for rest in self._rests:
                self._labelled.pop((job, rest), None)
                self._text.pop((job, rest), None)

    def _series(self) -> Iterator[tuple[str | Key, float]]:
        """(key, value) of every series; its label values only when needed (``_labels``)."""
        yield from self._values.items()
        yield from self._labelled.items()

    def _line(self, key: str | Key, v: float) -> str:
        pairs = zip(self.labelnames, _labels(key), strict=True)
        labels = ",".join(f'{k}="{_escape(lv)}"' for k, lv in pairs)
        return f"{self._sample}{{{labels}}} {floatToGoString(v)}\n"

    def lines(self, out: list[str]) -> None:
        """Append the family in the text exposition format to ``out``, the cached lines."""
        with self._lock:
            out.append(f"# HELP {self._sample} {self.doc}\n# TYPE {self._sample} {self.kind}\n")
            for key, v in self._series():
                line = self._text.get(key)
                if line is None:
                    line = self._text[key] = self._line(key, v)
                out.append(line)

    def family(self) -> Metric:
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        fam = cls(self.name, self.doc, labels=self.labelnames)
        with self._lock:
            rows = [(_labels(key), v) for key, v in self._series()]
        for labels, v in rows:
            fam.add_metric(list(labels), v)
        return fam


def _labels(key: str | Key) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else (key[0], *key[1])


class _Series:
    """One series of a ``JobSeries``: what ``labels(...)`` returns."""

    __slots__ = ("_job", "_rest", "_table")

    def __init__(self, table: JobSeries, job: str, rest: tuple[str, ...]) -> None:
        self._table, self._job, self._rest = table, job, rest

    def inc(self, amount: float = 1) -> None:
        self._table.add(self._job, self._rest, amount)

    def set(self, value: float) -> None:
        self._table.put(self._job, self._rest, value)

    def get(self) -> float | None:
        return self._table.value(self._job, *self._rest)


class _Tables(Collector):
    def __init__(self, tables: list[JobSeries]) -> None:
        self.tables = tables

    def collect(self) -> Iterator[Metric]:
        for t in self.tables:
            yield t.family()


class Metrics:
    def __init__(self, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._plain = CollectorRegistry()  # what render() gives generate_latest
        self._tables: list[JobSeries] = []
        r = self._plain
        self._define_job_series()
        self._define_run_series(r)
        self._define_data_series()
        self._define_daemon_series(r, version)
        for collector in (*self._plain_collectors(), _Tables(self._tables)):
            self.registry.register(collector)

    def _table(
        self, name: str, doc: str, kind: Literal["counter", "gauge"], labels: tuple[str, ...] = ()
    ) -> JobSeries:
        t = JobSeries(name, doc, kind, labels)
        self._tables.append(t)
        return t

    def _define_job_series(self) -> None:
        """Per job: runs, last run's duration, last/next times, running and paused."""
        self.job_runs = self._table(
            "stocksched_job_runs",
            "Finished job runs by result status and trigger.",
            "counter",
            ("status", "trigger"),
        )
        self.job_last_run_duration = self._table(
            "stocksched_job_last_run_duration_seconds",
            "Wall time of the job's last run finished by this replica.",
            "gauge",
        )
        self.job_last_run = self._table(
            "stocksched_job_last_run_timestamp_seconds",
            "Unix time the job's last run finished.",
            "gauge",
        )
        self.job_last_success = self._table(
            "stocksched_job_last_success_timestamp_seconds",
            "Unix time the job's last fully or partially successful run finished.",
            "gauge",
        )
        self.job_next_run = self._table(
            "stocksched_job_next_run_timestamp_seconds",
            "Unix time of the job's next scheduled slot.",
            "gauge",
        )
        self.job_running = self._table(
            "stocksched_job_running", "1 while a run of the job is in progress.", "gauge"
        )
        self.job_paused = self._table(
            "stocksched_job_paused", "1 while the job is paused (API or enabled: false).", "gauge"
        )

    def _define_run_series(self, r: CollectorRegistry) -> None:
        """What slots and runs do: missed slots, ticker fetches, bars stored and dropped,
        run and fetch time, lateness."""
        self.job_missed_runs = self._table(
            "stocksched_job_missed_runs",
            "Slots that did not run (downtime beyond catch-up, overlap skips, closed market).",
            "counter",
        )
        self.ticker_fetches = self._table(
            "stocksched_ticker_fetches",
            "Ticker fetch-and-store attempts by result (fresh: nothing new to ask Yahoo for).",
            "counter",
            ("result",),
        )
        self.rows_stored = self._table(
            "stocksched_rows_stored", "Bars written to storage.", "counter"
        )
        self.bars_dropped = self._table(
            "stocksched_bars_dropped",
            "Bars a source returned that were not stored, by reason (data-quality checks).",
            "counter",
            ("reason",),
        )
        self.job_run_duration = Histogram(
            "stocksched_job_run_duration_seconds",
            "Wall time of job runs, all jobs together (per job: the last-duration gauge).",
            buckets=RUN_BUCKETS,
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
            "Delay from a slot's due time to the start of its run's body (scheduled runs).",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )

    def _define_data_series(self) -> None:
        """The state of the stored series, per job (never per ticker)."""
        self.missing_sessions = self._table(
            "stocksched_missing_sessions",
            "Exchange sessions missing from the job's stored series (all its tickers).",
            "gauge",
        )
        self.series_rebased = self._table(
            "stocksched_series_rebased",
            "Series re-fetched whole because a split or dividend changed Yahoo's price basis.",
            "counter",
        )

    def _define_daemon_series(self, r: CollectorRegistry, version: str) -> None:
        """The daemon itself: reloads, jobs by state, Redis errors, build info, and the
        standard ``process_*`` series (RSS, CPU seconds, open file descriptors, start
        time) every Prometheus client exports, from /proc."""
        self.process = ProcessCollector(registry=r)
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

    def _plain_collectors(self) -> list[Collector]:
        return [
            self.job_run_duration,
            self.fetch_duration,
            self.schedule_lateness,
            self.config_reloads,
            self.config_last_reload_ok,
            self.config_last_reload_success,
            self.jobs,
            self.redis_errors,
            self.build_info,
            self.process,
        ]

    def observe_run(self, job_id: str, status: str, trigger: str, duration_s: float) -> None:
        """A run this replica finished: counted, its duration kept and observed."""
        self.job_runs.add(job_id, (status, trigger), 1)
        self.job_last_run_duration.put(job_id, (), duration_s)
        self.job_run_duration.observe(duration_s)

    def set_job_runtime(
        self, job_id: str, last_run: float | None, last_success: float | None, running: bool
    ) -> None:
        """Job-level gauges, from the job record every replica updates (not this process's runs).

        A job that never ran or never succeeded exports 0, as the alert rules expect.
        """
        self.job_last_run.put(job_id, (), last_run or 0)
        self.job_last_success.put(job_id, (), last_success or 0)
        self.job_running.put(job_id, (), 1 if running else 0)

    def remove_job(self, job_id: str) -> None:
        """Drop every series of a job that left the config."""
        for table in self._tables:
            table.remove_job(job_id)

    def render(self) -> bytes:
        """The /metrics body: plain metrics and the tables' cached lines, joined once."""
        parts = [generate_latest(self._plain).decode()]
        for t in self._tables:
            t.lines(parts)
        return "".join(parts).encode()
