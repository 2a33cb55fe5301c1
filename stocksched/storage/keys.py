"""Every Redis key stocksched reads or writes is built here, and only here.

Redis Cluster hash tags: the keys one job's run touches together (record, state hash, run
history, slot claims, running lease, in-flight hash, tombstone) carry the job id in braces,
``scheduler:job:{daily-tech}``, so they share one hash slot and one script or MULTI can
update them; the keys of one ticker's series carry the ticker (``series_key``). The global
keys (job index, paused set, runtime projection, in-flight index, replica index, series
index) have no tag: each lives in its own slot, and is written in a command apart from
the per-job keys whenever the store is a cluster (see ``stocksched.storage.cluster``). A
single Redis ignores the braces. ``stocksched.storage.layout`` renames keys of the
untagged layout of earlier versions on start.
"""

from __future__ import annotations

JOB_PREFIX = "scheduler:job:"
JOB_INDEX = "scheduler:job_index"
RUNS_PREFIX = "scheduler:runs:"


def job_tag(job_id: str) -> str:
    """The hash tag of every key of one job: ``{daily-tech}`` (job ids have no braces)."""
    return f"{{{job_id}}}"


def job_key(job_id: str) -> str:
    """JSON record of one ScheduledJob: ``scheduler:job:{daily-tech}`` (the original
    design's ``scheduler:job:<id>``, the id now in braces as the job's hash tag)."""
    return f"{JOB_PREFIX}{job_tag(job_id)}"


def job_index_key() -> str:
    """Set of job ids in the current config (original design: ``scheduler:job_index``)."""
    return JOB_INDEX


JOB_STATE_PREFIX = "scheduler:job_state:"


def job_state_key(job_id: str) -> str:
    """Hash of one job's runtime fields: ``status``, ``next_run``, ``last_run``,
    ``last_success`` (ISO 8601, "" for none) and ``last_result`` (JSON).

    Next to the record so a run's two scripts update them without rewriting the spec
    JSON; ``JobRecords`` reads the two keys as one ScheduledJob.
    """
    return f"{JOB_STATE_PREFIX}{job_tag(job_id)}"


PAUSED_INDEX = "scheduler:paused"
JOB_RUNTIME = "scheduler:job_runtime"


def paused_index_key() -> str:
    """Set of paused job ids: the pause override every replica's slot claim checks.

    Written in the same transaction as the record's ``paused`` field, so the two agree (on
    a cluster: just after it, repaired at reconcile; the claim reads the record there).
    """
    return PAUSED_INDEX


def job_runtime_key() -> str:
    """Hash job id -> compact JSON of the record's run times and status (last_run, ...).

    A projection of the job records, written in the same transaction as each record
    update (on a cluster: just after it), so every replica exports job-level gauges with
    one HGETALL.
    """
    return JOB_RUNTIME


LAYOUT = "scheduler:layout"
LAYOUT_LOCK = "scheduler:layout_lock"


def layout_key() -> str:
    """The key layout's version (``storage.layout``): absent before hash tags."""
    return LAYOUT


def layout_lock_key() -> str:
    """Held (``SET NX PX``) by the one replica renaming keys to the current layout."""
    return LAYOUT_LOCK


REMOVED_PREFIX = "scheduler:removed:"
REMOVED_TTL_S = 24 * 3600


def removed_job_key(job_id: str) -> str:
    """Tombstone of a job removed from the config: its last record, kept ``REMOVED_TTL_S``
    (one day), so a job re-added within that time gets its runtime state back."""
    return f"{REMOVED_PREFIX}{job_tag(job_id)}"


def runs_key(job_id: str) -> str:
    """Capped stream of run-history entries for one job."""
    return f"{RUNS_PREFIX}{job_tag(job_id)}"


#: The bar interval whose keys carry no interval part (the original design's keys).
DAILY_INTERVAL = "1d"
LATEST = "latest"


def data_key(
    prefix: str, ticker: str, start: str, end: str, *, interval: str = DAILY_INTERVAL
) -> str:
    """Stored bars of one fetch window.

    Daily bars keep the original design's ``{prefix}:{TICKER}:{start}:{end}``; every other
    interval puts itself after the ticker, ``{prefix}:{TICKER}:{interval}:{start}:{end}``
    (``...:AAPL:1h:2025-10-14:2025-10-21``), so jobs that differ only in their interval never
    overwrite each other's windows.
    """
    return f"{_series(prefix, ticker, interval)}:{start}:{end}"


def latest_key(prefix: str, ticker: str, *, interval: str = DAILY_INTERVAL) -> str:
    """Name of the newest window key of a ticker at one interval, so consumers need not know
    dates: ``{prefix}:{TICKER}:latest`` for daily bars, ``{prefix}:{TICKER}:{interval}:latest``
    for any other interval."""
    return f"{_series(prefix, ticker, interval)}:{LATEST}"


def data_key_window(
    key: str, prefix: str, ticker: str, *, interval: str = DAILY_INTERVAL
) -> tuple[str, str] | None:
    """(start, end) of ``key`` if it is a ``data_key`` of this prefix, ticker and interval.

    None for anything else, including a window of the same ticker at another interval.
    """
    head = window_head(prefix, ticker, interval=interval)
    if not key.startswith(head):
        return None
    parts = key[len(head) :].split(":")
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def window_head(prefix: str, ticker: str, *, interval: str = DAILY_INTERVAL) -> str:
    """What every window key of (prefix, ticker, interval) starts with, up to its dates."""
    return f"{_series(prefix, ticker, interval)}:"


def _series(prefix: str, ticker: str, interval: str) -> str:
    """The part every key of one ticker's bars at one interval starts with."""
    if interval == DAILY_INTERVAL:
        return f"{prefix}:{ticker}"
    return f"{prefix}:{ticker}:{interval}"


SERIES_PARTS = frozenset({"bars", "meta", "actions"})
SERIES_INDEX = "scheduler:series_index"


def series_key(prefix: str, ticker: str, interval: str, part: str) -> str:
    """One part of the bar series of (prefix, ticker, interval): ``bars`` (sorted set of
    chunks), ``meta`` (hash) or ``actions`` (hash), e.g.
    ``scheduled_stock_data:{AAPL}:1d:bars`` (see ``storage.series``).

    The ticker is the Redis Cluster hash tag: every key of one ticker's series lives in
    one slot, so a series, its meta and its actions are updated by one script.
    """
    if part not in SERIES_PARTS:
        raise ValueError(f"no series part {part!r}")
    return f"{prefix}:{{{ticker}}}:{interval}:{part}"


def series_index_key() -> str:
    """Set of ``"prefix TICKER interval"``, one member per stored series."""
    return SERIES_INDEX


RATELIMIT_PREFIX = "scheduler:ratelimit:"


def ratelimit_key(name: str) -> str:
    """State of one shared request limiter (e.g. ``yahoo``), common to every replica."""
    return f"{RATELIMIT_PREFIX}{name}"


# -- coordination between replicas (storage.leases, .inflight, .replicas) ----------

SLOT_PREFIX = "scheduler:slot:"
RUNNING_PREFIX = "scheduler:running:"
INFLIGHT_PREFIX = "scheduler:inflight:"
INFLIGHT_INDEX = "scheduler:inflight_index"
REPLICA_PREFIX = "scheduler:replica:"
REPLICA_INDEX = "scheduler:replica_index"


def slot_key(run_id: str) -> str:
    """Claim marker of one run id (``job:unix_ms``, ``stocksched.runids``); outlives the run
    so it never reruns. The job part is the hash tag: ``scheduler:slot:{job}:1700000000000``."""
    job_id, sep, rest = run_id.partition(":")
    return f"{SLOT_PREFIX}{job_tag(job_id)}{sep}{rest}"


def running_key(job_id: str) -> str:
    """Per-job running lease (hash: owner token, run id) with a PX expiry the owner extends."""
    return f"{RUNNING_PREFIX}{job_tag(job_id)}"


def inflight_key(job_id: str) -> str:
    """Hash run id -> JSON of the job's runs in progress; a field left behind is a crash."""
    return f"{INFLIGHT_PREFIX}{job_tag(job_id)}"


def inflight_index_key() -> str:
    """Set of job ids with in-flight records, so the crash scan never SCANs the keyspace
    (on a cluster a superset: the crash scan drops the ids whose hash is gone)."""
    return INFLIGHT_INDEX


def replica_key(replica_id: str) -> str:
    """One live replica's heartbeat (JSON, expires unless beaten)."""
    return f"{REPLICA_PREFIX}{replica_id}"


def replica_index_key() -> str:
    """Sorted set replica id -> heartbeat expiry (server ms), pruned on read."""
    return REPLICA_INDEX


# -- fan-out of one run's tickers (storage.fanout) ------------------------------------

FANOUT_PREFIX = "scheduler:fanout:"
FANOUT_INDEX = "scheduler:fanout_index"
FANOUT_PARTS = ("meta", "tickers", "done", "dead")


def fanout_key(job_id: str, run_id: str, part: str) -> str:
    """One part of a fanned-out run, all under the job's hash tag (one Cluster slot, so
    each step on them is one transaction or script): ``meta`` (hash: the job's spec,
    window, deadline, owner and fence token), ``tickers`` (stream, one entry per ticker,
    read by the consumer group of every replica), ``done`` (hash ticker -> outcome JSON)
    and ``dead`` (hash ticker -> why it was dead-lettered)."""
    if part not in FANOUT_PARTS:
        raise ValueError(f"no fan-out part {part!r}")
    return f"{FANOUT_PREFIX}{{{job_id}}}:{run_id}:{part}"


def fanout_index_key() -> str:
    """Sorted set ``"JOB_ID RUN_ID"`` -> when the run's keys expire (Unix ms): the fanned-out
    runs in progress, which every replica polls. Global (no hash tag), so it is written
    apart from the run's keys: added after them, removed before them; a member whose
    ``meta`` is gone is stale and dropped by the reader that finds it."""
    return FANOUT_INDEX
