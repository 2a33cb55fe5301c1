"""SeriesStore: one bar series per (prefix, ticker, interval) in Redis, upserted atomically.

Keys (``keys.series_key``; one ticker's keys share the hash tag ``{TICKER}``):

- ``{prefix}:{TICKER}:{interval}:bars`` -- sorted set of chunks (``seriescodec``), scored by
  the chunk's start (epoch seconds). A range read is one ``ZRANGE ... BYSCORE``:
  O(log n + k) in the number of chunks, never a scan of the series.
- ``...:actions`` -- hash bar ts -> ``dividend,split`` (``seriescodec.encode_action``).
- ``...:meta`` -- hash: ``version`` (bumped by every write), ``tz``, ``first``/``last``
  (epoch seconds of the first and last bar), ``bars`` (count), and what the updater keeps
  (``fetched``, ``exchange``, ``covered_from``, ``missing``, ...: ``SeriesUpdater``).
- ``keys.series_index_key()`` -- set of ``"prefix TICKER interval"``: every stored series,
  for listing without SCAN (kept beside the series, since it is global).

A write reads the chunks it touches, merges in Python (numpy), and sends one script that
applies the new chunks, actions and meta only if ``version`` is still the one read (else
it re-reads and merges again) and, for a run, only while the run holds its lease. So a
reader, who reads meta and chunks in one MULTI, never sees half of a write, and two
writers of one series never lose each other's bars. Many series are written in two
round trips in all (``write_many``): one pipeline of reads, one of scripts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stocksched.storage import keys, seriescodec
from stocksched.storage.adapter import RedisAdapter, StorageError, storage_errors
from stocksched.storage.fence import Fence, FenceLostError
from stocksched.storage.scripts import Call, evalsha_many

if TYPE_CHECKING:
    import numpy as np

#: Conflicting writers of one series tolerated before a write gives up (each conflict
#: means another write landed in between, so a handful of writers always get through).
MAX_ATTEMPTS = 16

# KEYS: bars, meta, actions[, lease]
# ARGV: expected version, token, mode (merge | replace),
#       n chunks, (start, blob ("" deletes))..., n actions, (ts, value)..., n meta, (f, v)...
UPSERT = """
local version = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
if version ~= tonumber(ARGV[1]) then return {0, version} end
if KEYS[4] and redis.call('HGET', KEYS[4], 'owner') ~= ARGV[2] then return {-1, version} end
if ARGV[3] == 'replace' then redis.call('DEL', KEYS[1], KEYS[3]) end
local i = 4
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i])
  if ARGV[i + 1] ~= '' then redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
  i = i + 2
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2
end
n = tonumber(ARGV[i]); i = i + 1
local meta = {'version', version + 1}
for _ = 1, n do
  meta[#meta + 1] = ARGV[i]; meta[#meta + 1] = ARGV[i + 1]; i = i + 2
end
redis.call('HSET', KEYS[2], unpack(meta))
return {1, version + 1}
"""


@dataclass(frozen=True, order=True)
class SeriesId:
    """Which series: storage prefix, ticker (upper case) and bar interval."""

    prefix: str
    ticker: str
    interval: str

    def key(self, part: str) -> str:
        return keys.series_key(self.prefix, self.ticker, self.interval, part)

    @property
    def member(self) -> str:
        return f"{self.prefix} {self.ticker} {self.interval}"

    @classmethod
    def from_member(cls, member: str) -> SeriesId:
        prefix, ticker, interval = member.split(" ")
        return cls(prefix, ticker, interval)


@dataclass
class SeriesWrite:
    """One series' write: bars to upsert (or, with ``replace``, the whole new series),
    the actions among them, extra meta fields and the run's fence."""

    series: SeriesId
    bars: seriescodec.Bars
    tz: str
    meta: Mapping[str, str] = field(default_factory=dict)
    replace: bool = False
    fence: Fence | None = None


@dataclass(frozen=True)
class Stored:
    """A series as read: its meta fields (all text), bars in range and their actions."""

    meta: Mapping[str, str]
    rows: np.ndarray
    actions: Mapping[int, tuple[float, float]]

    @property
    def exists(self) -> bool:
        return bool(self.meta)


class SeriesStore:
    def __init__(self, adapter: RedisAdapter) -> None:
        self._adapter = adapter

    def read(self, series: SeriesId, start_ts: int | None, end_ts: int | None) -> Stored:
        """Meta, bars with ``start_ts <= ts <= end_ts`` (None: unbounded) and actions, as one
        consistent snapshot (MULTI: a concurrent write is seen whole or not at all)."""
        lo = "-inf" if start_ts is None else seriescodec.chunk_start(start_ts, series.interval)
        hi = "+inf" if end_ts is None else end_ts
        client = self._adapter.client
        with (
            storage_errors("read series", series.key("bars")),
            client.pipeline(transaction=True) as pipe,
        ):
            pipe.hgetall(series.key("meta"))
            pipe.zrangebyscore(series.key("bars"), lo, hi)
            pipe.hgetall(series.key("actions"))
            meta, blobs, actions = pipe.execute()
        rows = self._decode(series, blobs)
        if len(rows) and (start_ts is not None or end_ts is not None):
            ts = rows["ts"]
            keep = (ts >= (start_ts if start_ts is not None else ts[0])) & (
                ts <= (end_ts if end_ts is not None else ts[-1])
            )
            rows = rows[keep]
        return Stored(_text(meta), rows, seriescodec.decode_actions(actions))

    def meta_many(self, series: Sequence[SeriesId]) -> list[dict[str, str]]:
        """Each series' meta hash ({} for a series not stored), in one round trip."""
        client = self._adapter.client
        with (
            storage_errors("read series meta", "(many)"),
            client.pipeline(transaction=False) as pipe,
        ):
            for s in series:
                pipe.hgetall(s.key("meta"))
            return [_text(m) for m in pipe.execute()]

    def listed(self) -> list[SeriesId]:
        """Every series in the index, sorted."""
        with storage_errors("SMEMBERS", keys.series_index_key()):
            members = self._adapter.client.smembers(keys.series_index_key())
        return sorted(SeriesId.from_member(_str(m)) for m in members)

    def write(self, write: SeriesWrite) -> int:
        """Apply one write; its new version. FenceLostError when the run lost its lease."""
        return self.write_many([write])[0]

    def write_many(self, writes: Sequence[SeriesWrite]) -> list[int]:
        """Apply every write (each atomic on its own), in two round trips when nobody else
        writes the same series; a conflict re-reads and re-merges that series only.

        Raises FenceLostError for a fenced write whose run lost its lease (the others are
        applied), StorageError when Redis fails or conflicts never settle.
        """
        versions: dict[int, int] = {}
        todo = list(range(len(writes)))
        for _ in range(MAX_ATTEMPTS):
            if not todo:
                break
            calls, fresh = self._prepare([writes[i] for i in todo])
            with storage_errors("EVALSHA upsert", writes[todo[0]].series.key("bars")):
                replies = evalsha_many(self._adapter.client, UPSERT, calls)
            retry, lost = [], None
            for i, reply, new in zip(todo, replies, fresh, strict=True):
                status, version = int(reply[0]), int(reply[1])
                if status == 1:
                    versions[i] = version
                    if new:
                        self._index(writes[i].series)
                elif status == 0:
                    retry.append(i)
                else:
                    fence = writes[i].fence
                    assert fence is not None
                    lost = FenceLostError(fence.job_id, fence.run_id)
            if lost is not None:
                raise lost
            todo = retry
        if todo:
            key = writes[todo[0]].series.key("bars")
            raise StorageError("upsert", key, "other writers kept changing the series")
        return [versions[i] for i in range(len(writes))]

    def _prepare(self, writes: Sequence[SeriesWrite]) -> tuple[list[Call], list[bool]]:
        """Read what each write touches (one pipeline) and build its script call."""
        client = self._adapter.client
        with (
            storage_errors("read series", writes[0].series.key("bars")),
            client.pipeline(transaction=False) as pipe,
        ):
            for w in writes:
                pipe.hmget(w.series.key("meta"), "version", "bars", "first", "last")
                lo, hi = _touched(w)
                pipe.zrangebyscore(w.series.key("bars"), lo, hi, withscores=True)
            replies = pipe.execute()
        calls, fresh = [], []
        for n, w in enumerate(writes):
            (version, count, first, last), old = replies[2 * n], replies[2 * n + 1]
            bounds = (first, last) if first is not None and last is not None else None
            calls.append(self._call(w, int(version or 0), int(count or 0), bounds, old))
            fresh.append(version is None)
        return calls, fresh

    def _call(
        self,
        w: SeriesWrite,
        version: int,
        count: int,
        bounds: tuple[Any, Any] | None,
        old: list[Any],
    ) -> Call:
        interval = w.series.interval
        old_rows = self._decode(w.series, [blob for blob, _ in old])
        merged = w.bars.rows if w.replace else seriescodec.merge(old_rows, w.bars.rows)
        chunks = seriescodec.split_chunks(merged, interval)
        total = len(merged) if w.replace else count - len(old_rows) + len(merged)
        chunk_args: list[str | int] = []
        if not w.replace:  # chunks read but left empty (none can be): delete them
            for _, score in old:
                if int(score) not in chunks:
                    chunk_args += [int(score), ""]
        for start, rows in chunks.items():
            chunk_args += [start, seriescodec.encode_chunk(rows)]
        action_args: list[str | int] = []
        for ts, (dividend, split) in sorted(w.bars.actions.items()):
            action_args += [ts, seriescodec.encode_action(dividend, split)]
        meta: dict[str, str] = {"tz": w.tz, "bars": str(total), **w.meta}
        if len(merged):
            first, last = int(merged["ts"][0]), int(merged["ts"][-1])
            if bounds is not None and not w.replace:
                first, last = min(first, int(bounds[0])), max(last, int(bounds[1]))
            meta["first"], meta["last"] = str(first), str(last)
        meta_args: list[str | int] = [x for kv in meta.items() for x in kv]
        call_keys: list[str | int] = [w.series.key(p) for p in ("bars", "meta", "actions")]
        token = ""
        if w.fence is not None:
            call_keys.append(w.fence.lease_key)
            token = w.fence.token
        args: list[str | int] = [version, token, "replace" if w.replace else "merge"]
        args += [len(chunk_args) // 2, *chunk_args]
        args += [len(action_args) // 2, *action_args, len(meta_args) // 2, *meta_args]
        return {"keys": call_keys, "args": args}

    def _index(self, series: SeriesId) -> None:
        with storage_errors("SADD", keys.series_index_key()):
            self._adapter.client.sadd(keys.series_index_key(), series.member)

    @staticmethod
    def _decode(series: SeriesId, blobs: Sequence[Any]) -> np.ndarray:
        try:
            return seriescodec.decode_chunks(blobs)
        except ValueError as exc:
            raise StorageError("decode", series.key("bars"), str(exc)) from exc


def _touched(w: SeriesWrite) -> tuple[int | str, int | str]:
    """Score range of the chunks a write must read to merge (none for a replace)."""
    if w.replace or not len(w.bars):
        return 1, 0  # an empty range: ZRANGE reads nothing
    interval = w.series.interval
    return seriescodec.chunk_start(w.bars.first_ts, interval), w.bars.last_ts


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in raw.items()}
