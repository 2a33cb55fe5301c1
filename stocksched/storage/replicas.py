"""Replica heartbeats: which daemons share this Redis.

``scheduler:replica:{id}`` (JSON, ``PX`` expiry) plus a sorted set
``scheduler:replica_index`` scored by expiry in Redis server time, pruned on read:
listing costs O(live replicas) and needs no agreement between replicas' clocks. The
thread that beats is ``stocksched.coordination.ReplicaHeartbeat``. On a Redis Cluster the
heartbeat key and the index are in different hash slots: a beat is a SET, then a script on
the index alone (every score still comes from one clock, the index's node's).
"""

from __future__ import annotations

import json
from typing import Any

from stocksched.storage import keys, scripts
from stocksched.storage.adapter import RedisAdapter, storage_errors
from stocksched.storage.cluster import is_cluster, mget

# Server time in ms, so replicas with skewed clocks agree on expiry.
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: replica, replica index. ARGV: json, ttl_ms, replica_id
_BEAT = (
    _NOW_MS
    + """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], string.format('%d', now + tonumber(ARGV[2])), ARGV[3])
return 1
"""
)

# KEYS: replica index. ARGV: ttl_ms, replica_id (a cluster's beat: the index alone)
_BEAT_INDEX = (
    _NOW_MS
    + """
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[1])), ARGV[2])
return 1
"""
)

# KEYS: replica index. Returns the ids whose heartbeat has not expired yet.
_PRUNE = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)


class ReplicaRecords:
    """The replica keys and their index; every method raises StorageError."""

    def __init__(self, adapter: RedisAdapter) -> None:
        self._r = adapter.client
        self._cluster = is_cluster(self._r)
        self._beat = self._r.register_script(_BEAT)
        self._prune = self._r.register_script(_PRUNE)

    def beat(self, replica_id: str, body: str, ttl_ms: int) -> None:
        """Announce ``replica_id`` (heartbeat body ``body``) for another ``ttl_ms``."""
        key = keys.replica_key(replica_id)
        with storage_errors("EVALSHA beat", key):
            if not self._cluster:
                self._beat(keys=[key, keys.replica_index_key()], args=[body, ttl_ms, replica_id])
                return
            self._r.set(key, body, px=ttl_ms)
            call: scripts.Call = {"keys": [keys.replica_index_key()], "args": [ttl_ms, replica_id]}
            scripts.evalsha_many(self._r, _BEAT_INDEX, [call])

    def present(self, replica_id: str) -> bool:
        """Whether the replica's heartbeat key exists (gone: expired, or Redis lost it)."""
        key = keys.replica_key(replica_id)
        with storage_errors("EXISTS", key):
            return bool(self._r.exists(key))

    def withdraw(self, replica_id: str) -> None:
        """Drop the replica's key and index entry at once (others need not wait out the ttl)."""
        key = keys.replica_key(replica_id)
        with (
            storage_errors("MULTI DEL", key),
            self._r.pipeline(transaction=not self._cluster) as pipe,
        ):
            pipe.delete(key)
            pipe.zrem(keys.replica_index_key(), replica_id)
            pipe.execute()

    def live(self) -> list[dict[str, Any]]:
        """Live replicas' heartbeat bodies, sorted by replica id."""
        with storage_errors("EVALSHA prune", keys.replica_index_key()):
            ids = [str(i) for i in self._prune(keys=[keys.replica_index_key()])]
        if not ids:
            return []
        with storage_errors("MGET", keys.REPLICA_PREFIX + "*"):
            raws = mget(self._r, [keys.replica_key(i) for i in ids])
        out: list[dict[str, Any]] = []
        for replica_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue  # expired between the two reads
            try:
                out.append(dict(json.loads(str(raw))))
            except ValueError:
                out.append({"replica_id": replica_id, "error": "unreadable heartbeat"})
        return sorted(out, key=lambda d: str(d.get("replica_id", "")))


def list_replicas(adapter: RedisAdapter) -> list[dict[str, Any]]:
    """Live replicas' heartbeat bodies, sorted by replica id; raises StorageError."""
    return ReplicaRecords(adapter).live()
