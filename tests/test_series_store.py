"""SeriesStore against a real redis-server: upsert semantics, atomicity, fencing, layout."""

from __future__ import annotations

import threading
from datetime import date

import numpy as np
import pandas as pd
import pytest
import redis
from redis.crc import key_slot

from stocksched.sources.demo import DemoFetcher
from stocksched.storage import keys, seriescodec
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.fence import Fence, FenceLostError
from stocksched.storage.series import SeriesId, SeriesStore, SeriesWrite

TZ = "America/New_York"
SERIES = SeriesId("p", "AAA", "1d")


def demo(start: str, end: str, ticker: str = "AAA") -> pd.DataFrame:
    fetch = DemoFetcher().fetch_from_source
    return fetch(ticker, date.fromisoformat(start), date.fromisoformat(end), "1d")


def write(store: SeriesStore, frame: pd.DataFrame, **kw: object) -> int:
    bars = seriescodec.bars_from_frame(frame)
    return store.write(SeriesWrite(SERIES, bars, TZ, **kw))  # type: ignore[arg-type]


def stored_chunks(r: redis.Redis) -> dict[str, str]:
    """Chunk start -> the blob its pointer names (``seriesscripts``' layout)."""
    fields = r.hgetall(SERIES.key("bars"))
    return {k: fields[f"{k}.{v}"] for k, v in fields.items() if "." not in k}


def read_all(store: SeriesStore) -> pd.DataFrame:
    got = store.read(SERIES, None, None)
    return seriescodec.frame_of(got.rows, got.actions, got.meta["tz"])


def test_the_same_bars_twice_change_nothing_and_ranges_read_back(
    real_redis: redis.Redis,
) -> None:
    store = SeriesStore(RedisAdapter(real_redis))
    ten_years = demo("2015-01-01", "2024-12-31")
    write(store, ten_years)
    before = stored_chunks(real_redis)
    write(store, ten_years)
    assert stored_chunks(real_redis) == before
    assert real_redis.hlen(SERIES.key("bars")) == 2 * len(before)  # a pointer and a blob each
    assert real_redis.hget(SERIES.key("meta"), "bars") == str(len(ten_years))
    pd.testing.assert_frame_equal(read_all(store), ten_years, check_freq=False)
    start = int(pd.Timestamp("2020-03-02", tz=TZ).timestamp())
    end = int(pd.Timestamp("2020-03-31", tz=TZ).timestamp())
    got = store.read(SERIES, start, end)
    assert [d.isoformat() for d in pd.to_datetime(got.rows["ts"], unit="s").date][:1] == [
        "2020-03-02"
    ]
    assert len(got.rows) == 22  # the weekdays of March 2020


def test_overlapping_writes_upsert_by_timestamp(real_redis: redis.Redis) -> None:
    store = SeriesStore(RedisAdapter(real_redis))
    write(store, demo("2024-01-01", "2024-06-30"))
    revised = demo("2024-06-01", "2025-02-28")
    revised["Volume"] = 7
    write(store, revised)
    stored = read_all(store)
    assert stored.index.is_unique and stored.index.is_monotonic_increasing
    assert (stored.loc["2024-06-03":, "Volume"] == 7).all()
    assert (stored.loc[:"2024-05-31", "Volume"] != 7).all()
    assert real_redis.hget(SERIES.key("meta"), "bars") == str(len(stored))
    first = pd.Timestamp("2024-01-01", tz=TZ).timestamp()
    assert real_redis.hget(SERIES.key("meta"), "first") == str(int(first))


def test_concurrent_writers_of_one_series_lose_no_bars(real_redis: redis.Redis) -> None:
    store = SeriesStore(RedisAdapter(real_redis))
    months = [(f"2024-{m:02d}-01", f"2024-{m:02d}-28") for m in range(1, 7)]
    failures: list[BaseException] = []

    def writer(frame: pd.DataFrame) -> None:
        try:
            write(store, frame)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(demo(a, b),)) for a, b in months]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    expected = pd.concat([demo(a, b) for a, b in months])
    pd.testing.assert_frame_equal(read_all(store), expected, check_freq=False)
    assert real_redis.hget(SERIES.key("meta"), "bars") == str(len(expected))
    # the losers' staged chunks are gone: one pointer and one blob per chunk
    assert real_redis.hlen(SERIES.key("bars")) == 2 * len(stored_chunks(real_redis))


def test_a_write_fenced_by_a_lost_lease_writes_nothing(real_redis: redis.Redis) -> None:
    store = SeriesStore(RedisAdapter(real_redis))
    fence = Fence("job", "job:1", "token-1")
    real_redis.hset(fence.lease_key, mapping={"owner": "someone-else", "run_id": "job:2"})
    with pytest.raises(FenceLostError):
        write(store, demo("2024-01-01", "2024-01-31"), fence=fence)
    assert not real_redis.exists(SERIES.key("bars"), SERIES.key("meta"))
    real_redis.hset(fence.lease_key, "owner", "token-1")
    write(store, demo("2024-01-01", "2024-01-31"), fence=fence)
    assert len(read_all(store)) == 23


def test_a_replace_drops_what_the_new_series_lacks(real_redis: redis.Redis) -> None:
    store = SeriesStore(RedisAdapter(real_redis))
    write(store, demo("2023-01-01", "2024-12-31"))
    write(store, demo("2024-06-01", "2024-12-31"), replace=True)
    pd.testing.assert_frame_equal(
        read_all(store), demo("2024-06-01", "2024-12-31"), check_freq=False
    )
    assert real_redis.hlen(SERIES.key("bars")) == 2 * len(stored_chunks(real_redis)) == 4


def test_chunks_staged_by_a_writer_that_died_are_dropped_by_the_next_write(
    real_redis: redis.Redis,
) -> None:
    store = SeriesStore(RedisAdapter(real_redis))
    write(store, demo("2024-01-01", "2024-03-31"))
    (start,) = stored_chunks(real_redis)
    # what a client leaves when it dies after staging, before its script runs
    real_redis.hset(SERIES.key("bars"), f"{start}.0123456789ab", "AAAA")
    pd.testing.assert_frame_equal(
        read_all(store), demo("2024-01-01", "2024-03-31"), check_freq=False
    )
    write(store, demo("2024-04-01", "2024-04-30"))
    assert real_redis.hlen(SERIES.key("bars")) == 2
    pd.testing.assert_frame_equal(
        read_all(store), demo("2024-01-01", "2024-04-30"), check_freq=False
    )


def test_a_series_stored_before_chunk_pointers_reads_back_and_is_rewritten(
    real_redis: redis.Redis,
) -> None:
    store = SeriesStore(RedisAdapter(real_redis))
    old = demo("2023-06-01", "2024-03-31")
    rows = seriescodec.bars_from_frame(old).rows
    chunks = seriescodec.split_chunks(rows, "1d").items()
    layout: dict[str | bytes, bytes] = {str(s): seriescodec.encode_chunk(r) for s, r in chunks}
    real_redis.hset(SERIES.key("bars"), mapping=layout)  # chunk start -> blob, no pointer
    first, last = int(rows["ts"][0]), int(rows["ts"][-1])
    meta: dict[str | bytes, str | int] = {
        "version": 3,
        "tz": TZ,
        "bars": len(rows),
        "first": first,
        "last": last,
    }
    real_redis.hset(SERIES.key("meta"), mapping=meta)
    pd.testing.assert_frame_equal(read_all(store), old, check_freq=False)
    write(store, demo("2024-03-01", "2024-04-30"))
    pd.testing.assert_frame_equal(
        read_all(store), demo("2023-06-01", "2024-04-30"), check_freq=False
    )
    # the chunk written is now a pointer and its blob; the untouched one stays as it was
    assert real_redis.hlen(SERIES.key("bars")) == 3
    assert real_redis.hget(SERIES.key("meta"), "chunks") == "2"


def test_keys_share_the_ticker_hash_tag_and_the_series_is_listed(
    real_redis: redis.Redis,
) -> None:
    store = SeriesStore(RedisAdapter(real_redis))
    write(store, demo("2024-01-01", "2024-01-31"))
    parts = [SERIES.key(p) for p in ("bars", "meta", "actions")]
    assert parts == ["p:{AAA}:1d:bars", "p:{AAA}:1d:meta", "p:{AAA}:1d:actions"]
    assert {key_slot(k.encode()) for k in parts} == {key_slot(b"AAA")}
    assert store.listed() == [SERIES]
    assert real_redis.smembers(keys.series_index_key()) == {"p AAA 1d"}


def test_actions_and_nan_prices_read_back_exactly(real_redis: redis.Redis) -> None:
    store = SeriesStore(RedisAdapter(real_redis))
    frame = demo("2024-01-01", "2024-01-31")
    frame.loc["2024-01-10", "Dividends"] = 0.24
    frame.loc["2024-01-17", "Stock Splits"] = 4.0
    frame.loc["2024-01-18", "Open"] = np.nan
    write(store, frame)
    pd.testing.assert_frame_equal(read_all(store), frame, check_freq=False)
    assert len(real_redis.hgetall(SERIES.key("actions"))) == 2


def test_a_write_after_redis_lost_its_scripts_loads_them_and_applies_once(
    real_redis: redis.Redis,
) -> None:
    store = SeriesStore(RedisAdapter(real_redis))
    write(store, demo("2024-01-01", "2024-01-31"))
    real_redis.script_flush()
    assert write(store, demo("2024-02-01", "2024-02-29")) == 2
    pd.testing.assert_frame_equal(
        read_all(store), demo("2024-01-01", "2024-02-29"), check_freq=False
    )
    assert real_redis.hlen(SERIES.key("bars")) == 2


def test_a_meta_only_write_sweeps_blobs_staged_before_any_pointer(
    real_redis: redis.Redis,
) -> None:
    store = SeriesStore(RedisAdapter(real_redis))
    # a first write whose client died after staging: blobs, no pointer, no meta
    real_redis.hset(SERIES.key("bars"), "1702944000.0123456789ab", "AAAA")
    nothing = seriescodec.Bars(seriescodec.empty_rows(), {})
    store.write(SeriesWrite(SERIES, nothing, TZ, {"covered_from": "2024-01-01"}))
    assert not real_redis.exists(SERIES.key("bars"))
    assert real_redis.hget(SERIES.key("meta"), "covered_from") == "2024-01-01"
