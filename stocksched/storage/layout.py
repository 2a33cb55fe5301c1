"""The key layout, and the one-time rename of the keys written before hash tags.

Before Redis Cluster support a job's keys had no hash tag
(``scheduler:job:daily-tech``); now they carry the job id in braces
(``scheduler:job:{daily-tech}``, ``stocksched.storage.keys``), which a single Redis
ignores and a Redis Cluster needs. ``migrate`` runs before a process first reads the job
index (``JobRecords.ids``: a daemon's first load, a ``run-job``): it takes a lock (``SET
NX PX``), renames every per-job key of the old layout to its new name (``RENAME`` keeps
a key's expiry), and marks the layout done (``scheduler:layout``), so later starts cost
one GET. Replicas starting meanwhile wait for the mark. Its SCANs (one per old prefix)
walk the keyspace of that Redis, market data included, once; stop every replica of the
old version first, since an old replica would go on writing the old names. A cluster is
new to stocksched, so it is only marked.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter, storage_errors
from stocksched.storage.cluster import is_cluster

log = logging.getLogger(__name__)

LAYOUT_VERSION = "2"  # 1 (implicit): no hash tags; 2: the job id as every per-job key's tag
LOCK_MS = 120_000
WAIT_POLL_S = 0.2

#: Old key prefix -> the builder of the new key from what followed the prefix.
RENAMES: dict[str, Callable[[str], str]] = {
    keys.JOB_PREFIX: keys.job_key,
    keys.JOB_STATE_PREFIX: keys.job_state_key,
    keys.RUNS_PREFIX: keys.runs_key,
    keys.REMOVED_PREFIX: keys.removed_job_key,
    keys.SLOT_PREFIX: keys.slot_key,
    keys.RUNNING_PREFIX: keys.running_key,
    keys.INFLIGHT_PREFIX: keys.inflight_key,
}


def migrate(adapter: RedisAdapter) -> int:
    """Bring this Redis to the current key layout; the number of keys renamed (0 when it
    was already, or another replica did it). Raises StorageError."""
    client = adapter.client
    with storage_errors("GET", keys.layout_key()):
        if client.get(keys.layout_key()) == LAYOUT_VERSION:
            return 0
        token = secrets.token_hex(8)
        if not client.set(keys.layout_lock_key(), token, nx=True, px=LOCK_MS):
            _wait_for_mark(adapter)
            return 0
    try:
        renamed = 0 if is_cluster(client) else _rename_all(adapter)
        with storage_errors("SET", keys.layout_key()):
            client.set(keys.layout_key(), LAYOUT_VERSION)
    finally:
        with storage_errors("DEL", keys.layout_lock_key()):
            client.delete(keys.layout_lock_key())
    if renamed:
        log.warning("renamed %d key(s) to the hash-tagged key layout (once)", renamed)
    return renamed


def _rename_all(adapter: RedisAdapter) -> int:
    client = adapter.client
    renamed = 0
    for prefix, new_key in RENAMES.items():
        with storage_errors("SCAN/RENAME", prefix + "*"):
            for old in list(client.scan_iter(match=prefix + "*", count=1000)):
                rest = str(old)[len(prefix) :]
                if "{" in rest:
                    continue  # already the new layout
                client.execute_command("RENAME", old, new_key(rest))
                renamed += 1
    return renamed


def _wait_for_mark(adapter: RedisAdapter) -> None:
    """Another replica is renaming: wait until it marks the layout done or its lock lapses."""
    client = adapter.client
    deadline = time.monotonic() + LOCK_MS / 1000
    while time.monotonic() < deadline:
        if client.get(keys.layout_key()) == LAYOUT_VERSION or not client.exists(
            keys.layout_lock_key()
        ):
            return
        time.sleep(WAIT_POLL_S)
