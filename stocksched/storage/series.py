"""SeriesStore: one bar series per (prefix, ticker, interval) in Redis, upserted atomically.

Keys (``keys.series_key``; one ticker's keys share the hash tag ``{TICKER}``):

- ``{prefix}:{TICKER}:{interval}:bars`` -- hash of two fields per chunk: the pointer
  ``{start}`` -> ``tag`` and the blob ``{start}.{tag}`` -> chunk (``seriescodec``), where
  ``start`` is epoch seconds, a multiple of the interval's span
  (``seriescodec.chunk_span_s``), and ``tag`` names the write that stored it
  (``seriesscripts``: a write stages its blobs, then one script switches the pointers).
  Chunk starts are computed, not searched, so a range read fetches exactly the chunks of
  the range (``READ``, one script): O(k), never a scan of the series. A pointer holding
  a blob itself (written before pointers) is read as that blob.
- ``...:actions`` -- hash bar ts -> ``dividend,split`` (``seriescodec.encode_action``).
- ``...:meta`` -- hash: ``version`` (bumped by every write), ``chunks`` (pointers),
  ``tz``, ``first``/``last`` (epoch seconds of the first and last bar), ``bars`` (count),
  and what the updater keeps
  (``fetched``, ``exchange``, ``covered_from``, ``missing``, ...: ``SeriesUpdater``).
- ``keys.series_index_key()`` -- set of ``"prefix TICKER interval"``: every stored series,
  for listing without SCAN (kept beside the series, since it is global).

A write merges its bars into the chunks it touches in Python (numpy), against the
snapshot its caller read or, for a writer that read nothing, an assumed new series,
stages the new chunks and sends one script that points at them and writes the actions
and meta only if ``version`` is still the one merged against (else the chunks are read
again and merged again) and, for a run, only while the run holds its lease. So a reader
(one script too) never sees half of a write, and two writers of one series never lose
each other's bars. Many series are written in one pipeline (``write_many``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from stocksched.storage import keys, seriescodec
from stocksched.storage.adapter import RedisAdapter, StorageError, storage_errors
from stocksched.storage.cluster import is_cluster
from stocksched.storage.fence import Fence, FenceLostError, check_apart
from stocksched.storage.scripts import Call, evalsha_many
from stocksched.storage.seriesscripts import READ, Upsert, next_tag, run_upserts

if TYPE_CHECKING:
    import numpy as np

#: Conflicting writers of one series tolerated before a write gives up (each conflict
#: means another write landed in between, so a handful of writers always get through).
MAX_ATTEMPTS = 16


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
    #: The whole-series snapshot the caller read (``read(series, None, None)``): merged
    #: against without reading again, unless the series changed since.
    base: Stored | None = None


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
        consistent snapshot (one script: a concurrent write is seen whole or not at all)."""
        span = seriescodec.chunk_span_s(series.interval)
        call: Call = {
            "keys": [series.key(p) for p in _PARTS],
            "args": ["" if start_ts is None else start_ts, "" if end_ts is None else end_ts, span],
        }
        with storage_errors("read series", series.key("bars")):
            ((meta, blobs, actions),) = evalsha_many(self._adapter.client, READ, [call])
        rows = _decode(series, blobs)
        if len(rows) and (start_ts is not None or end_ts is not None):
            ts = rows["ts"]
            lo = start_ts if start_ts is not None else int(ts[0])
            hi = end_ts if end_ts is not None else int(ts[-1])
            rows = rows[(ts >= lo) & (ts <= hi)]
        return Stored(_pairs(meta), rows, seriescodec.decode_actions(_pairs(actions)))

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
        """Apply every write (each atomic on its own); their new versions.

        The first attempt merges against each write's ``base`` (the snapshot its caller
        read) or, without one, assumes a new series: one round trip when that holds. A
        series that changed in between (or exists, unknown to the writer) is re-read and
        merged again, that series only.

        Raises FenceLostError for a fenced write whose run lost its lease (the others are
        applied), StorageError when Redis fails or conflicts never settle.
        """
        if is_cluster(self._adapter.client):  # lease and series in different slots
            check_apart(self._adapter.client, [w.fence for w in writes if w.fence is not None])
            writes = [replace(w, fence=None) for w in writes]
        versions: dict[int, int] = {}
        todo = list(range(len(writes)))
        bases = [_Base.of(w.base, w) if w.base is not None else _Base() for w in writes]
        for attempt in range(MAX_ATTEMPTS):
            if not todo:
                break
            if attempt:
                for i, base in zip(todo, self._read_bases([writes[i] for i in todo]), strict=True):
                    bases[i] = base
            calls = [_upsert(writes[i], bases[i]) for i in todo]
            with storage_errors("EVALSHA upsert", writes[todo[0]].series.key("bars")):
                replies = run_upserts(self._adapter, calls)
            retry, lost, new = [], None, []
            for i, reply in zip(todo, replies, strict=True):
                status, version = int(reply[0]), int(reply[1])
                if status == 1:
                    versions[i] = version
                    if version == 1:  # the series' first write: list it
                        new.append(writes[i].series)
                elif status == 0:
                    retry.append(i)
                else:
                    fence = writes[i].fence
                    assert fence is not None
                    lost = FenceLostError(fence.job_id, fence.run_id)
            self._index(new)
            if lost is not None:
                raise lost
            todo = retry
        if todo:
            key = writes[todo[0]].series.key("bars")
            raise StorageError("upsert", key, "other writers kept changing the series")
        return [versions[i] for i in range(len(writes))]

    def _read_bases(self, writes: Sequence[SeriesWrite]) -> list[_Base]:
        """What each write merges against, read now (one pipeline of ``READ`` scripts over
        the span of the chunks each write touches)."""
        calls: list[Call] = []
        for w in writes:
            span = seriescodec.chunk_span_s(w.series.interval)
            starts = _touched(w)
            lo, hi = (min(starts), max(starts) + span - 1) if starts else (0, -1)
            calls.append({"keys": [w.series.key(p) for p in _PARTS], "args": [lo, hi, span]})
        with storage_errors("read series", writes[0].series.key("bars")):
            replies = evalsha_many(self._adapter.client, READ, calls)
        bases = []
        for w, (meta, blobs, _) in zip(writes, replies, strict=True):
            stored = Stored(_pairs(meta), _decode(w.series, blobs), {})
            bases.append(_Base.of(stored, w))
        return bases

    def _index(self, series: Sequence[SeriesId]) -> None:
        """List new series in the index (one SADD; after their writes, so a listed series
        exists; the index is global, outside any one ticker's hash slot)."""
        if series:
            with storage_errors("SADD", keys.series_index_key()):
                self._adapter.client.sadd(keys.series_index_key(), *(s.member for s in series))


@dataclass(frozen=True)
class _Base:
    """What a write merges against: the series' version, bar count and bounds, and its
    stored bars in the chunks the write touches."""

    version: int = 0
    count: int = 0
    bounds: tuple[int, int] | None = None
    rows: np.ndarray | None = None

    @classmethod
    def of(cls, snapshot: Stored, w: SeriesWrite) -> _Base:
        """From a whole-series snapshot (``SeriesStore.read(series, None, None)``)."""
        import numpy as np

        meta = snapshot.meta
        first, last = meta.get("first"), meta.get("last")
        rows = snapshot.rows
        starts = rows["ts"] - rows["ts"] % seriescodec.chunk_span_s(w.series.interval)
        touched = rows[np.isin(starts, list(_touched(w)))]
        return cls(
            version=int(meta.get("version") or 0),
            count=int(meta.get("bars") or 0),
            bounds=(int(first), int(last)) if first and last else None,
            rows=touched,
        )


def _upsert(w: SeriesWrite, base: _Base) -> Upsert:
    """The staged chunks and the script call that apply ``w`` on top of ``base``."""
    old = base.rows if base.rows is not None else seriescodec.empty_rows()
    merged = w.bars.rows if w.replace else seriescodec.merge(old, w.bars.rows)
    chunks = seriescodec.split_chunks(merged, w.series.interval)
    total = len(merged) if w.replace else base.count - len(old) + len(merged)
    tag = next_tag()  # this attempt's: a retry stages under a new one
    staged: dict[str | bytes, bytes] = {
        f"{start}.{tag}": seriescodec.encode_chunk(rows) for start, rows in chunks.items()
    }
    action_args: list[str | int] = []
    for ts, (dividend, split) in sorted(w.bars.actions.items()):
        action_args += [ts, seriescodec.encode_action(dividend, split)]
    meta: dict[str, str] = {"tz": w.tz, "bars": str(total), **w.meta}
    if len(merged):
        first, last = int(merged["ts"][0]), int(merged["ts"][-1])
        if base.bounds is not None and not w.replace:
            first, last = min(first, base.bounds[0]), max(last, base.bounds[1])
        meta["first"], meta["last"] = str(first), str(last)
    call_keys = [w.series.key(p) for p in _PARTS]
    token = ""
    if w.fence is not None:
        call_keys.append(w.fence.lease_key)
        token = w.fence.token
    args: list[str | int | bytes] = [base.version, token, "replace" if w.replace else "merge"]
    args += [tag, len(chunks), len(action_args) // 2, len(meta), *chunks, *action_args]
    args += [x for kv in meta.items() for x in kv]
    return Upsert(call_keys[0], staged, call_keys, args)


_PARTS = ("bars", "meta", "actions")


def _decode(series: SeriesId, blobs: Sequence[Any]) -> np.ndarray:
    try:
        return seriescodec.decode_chunks(blobs)
    except ValueError as exc:
        raise StorageError("decode", series.key("bars"), str(exc)) from exc


def _touched(w: SeriesWrite) -> set[int]:
    """The chunks a write changes and so must merge with (none to read for a replace)."""
    if w.replace or not len(w.bars):
        return set()
    return set(seriescodec.split_chunks(w.bars.rows, w.series.interval))


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in raw.items()}


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    """A flat [field, value, ...] reply (HGETALL inside a script) as a dict of text."""
    return {_str(flat[i]): _str(flat[i + 1]) for i in range(0, len(flat), 2)}
