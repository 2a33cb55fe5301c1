"""The bar series store (issue 12): write speed, incremental fetching, read speed, memory.

Every figure is printed next to its baseline from the same run, on a private redis-server:

(a) store path: 2,000 tickers x 252 daily bars, encoded and written with
    ``SeriesStore.write_many`` (the reads it merges against, the upsert scripts), against a
    raw pipelined ``SET`` of the same encoded bytes to the same Redis; ``--rounds`` times,
    interleaved, medians. Goal: >= 30% of raw.
(b) incremental fetching: a 500-ticker, 1-year daily job run through the ``JobExecutor``
    and yfinance's own parser against the local fake Yahoo (``bench/fake_yahoo.py``, no
    delay, no limit), then run again one session later: bytes of chart answers and run time
    of the second run against the first. Goal: >= 20x fewer bytes.
(c) reading 10 years of daily bars (2,520) into the yfinance-shaped DataFrame
    (``SeriesStore.read`` + ``seriescodec.frame_of``, what ``read_bars`` does), median of
    50, against GET + ``json.loads`` of the same bars stored as one JSON string. Goal:
    <= 10 ms.
(d) Redis memory per daily bar (``MEMORY USAGE`` of a 10-year series' keys), against the
    original design's window JSON of the same bars. Goal: <= 100 bytes.

    python bench/series_store.py [--tickers 2000] [--job-tickers 500] [--rounds 5] [--only abcd]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import private_redis

NY = ZoneInfo("America/New_York")


def demo_frame(ticker: str, start: date, end: date) -> Any:
    from stocksched.sources.demo import DemoFetcher

    return DemoFetcher().fetch_from_source(ticker, start, end, "1d")


def store_path(client: Any, n: int, rounds: int) -> dict[str, float]:
    """(a): our write of n tickers x 252 bars against raw SETs of the same bytes, ``rounds``
    times interleaved on an emptied Redis (medians: the shared machine is noisy)."""
    from stocksched.storage import seriescodec
    from stocksched.storage.adapter import RedisAdapter
    from stocksched.storage.series import SeriesId, SeriesStore, SeriesWrite

    base = demo_frame("BASE", date(2024, 1, 1), date(2024, 12, 31)).iloc[:252]
    frames = [base * (1 + i / 1e4) for i in range(n)]
    for f in frames:
        f["Volume"] = base["Volume"]
    store = SeriesStore(RedisAdapter(client))
    ours, raws = [], []
    for _ in range(rounds):
        client.flushdb()
        t0 = time.perf_counter()
        writes = [
            SeriesWrite(
                SeriesId("bench", f"T{i:04d}", "1d"), seriescodec.bars_from_frame(f), str(NY)
            )
            for i, f in enumerate(frames)
        ]
        for at in range(0, n, 500):
            store.write_many(writes[at : at + 500])
        ours.append(time.perf_counter() - t0)
        blobs = [seriescodec.encode_chunk(w.bars.rows) for w in writes]
        t0 = time.perf_counter()
        with client.pipeline(transaction=False) as pipe:
            for i, blob in enumerate(blobs):
                pipe.set(f"raw:T{i:04d}", blob)
            pipe.execute()
        raws.append(time.perf_counter() - t0)
    client.flushdb()
    windows = _window_path(client, frames)
    client.flushdb()
    ours_s, raw_s = statistics.median(ours), statistics.median(raws)
    return {"ours_s": ours_s, "raw_s": raw_s, "share": raw_s / ours_s, "windows_s": windows}


def _window_path(client: Any, frames: list[Any]) -> float:
    """The original design's path for the same bars: one window record per ticker."""
    from stocksched.storage.adapter import RedisAdapter
    from stocksched.storage.butler import WINDOW_COLUMNS, DataIOButler

    butler = DataIOButler(RedisAdapter(client))
    t0 = time.perf_counter()
    for i, f in enumerate(frames):
        butler.save_data(
            f[list(WINDOW_COLUMNS)], "bench_w", f"T{i:04d}", "2024-01-01", "2024-12-31"
        )
    return time.perf_counter() - t0


def read_and_memory(client: Any) -> dict[str, float]:
    """(c) and (d) over one 10-year series."""
    from stocksched.storage import seriescodec
    from stocksched.storage.adapter import RedisAdapter
    from stocksched.storage.butler import WINDOW_COLUMNS, encode_frame
    from stocksched.storage.series import SeriesId, SeriesStore, SeriesWrite

    frame = demo_frame("TENY", date(2015, 1, 1), date(2025, 12, 31)).iloc[:2520]
    series = SeriesId("bench", "TENY", "1d")
    store = SeriesStore(RedisAdapter(client))
    store.write(SeriesWrite(series, seriescodec.bars_from_frame(frame), str(NY)))
    client.set("raw:json", encode_frame(frame[list(WINDOW_COLUMNS)]))
    ours, base = [], []
    for _ in range(50):
        t0 = time.perf_counter()
        got = store.read(series, None, None)
        out = seriescodec.frame_of(got.rows, got.actions, got.meta["tz"])
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        records = json.loads(client.get("raw:json"))
        base.append(time.perf_counter() - t0)
    assert len(out) == len(records) == 2520
    used = sum(client.memory_usage(series.key(p), samples=0) or 0 for p in ("bars", "meta"))
    used += client.memory_usage(series.key("actions"), samples=0) or 0
    window = client.memory_usage("raw:json", samples=0) or 0
    return {
        "read_ms": statistics.median(ours) * 1000,
        "json_ms": statistics.median(base) * 1000,
        "bytes_per_bar": used / 2520,
        "window_bytes_per_bar": window / 2520,
    }


def incremental(client: Any, n: int) -> dict[str, float]:
    """(b): the same job run twice, one session apart, against the fake Yahoo."""
    from bench.fake_yahoo import local_session, serve
    from stocksched.executor import JobExecutor
    from stocksched.jobs.spec import JobSpec
    from stocksched.metrics import Metrics
    from stocksched.sources import build_fetchers, configure_yfinance
    from stocksched.storage.adapter import RedisAdapter
    from stocksched.storage.butler import DataIOButler

    server, port = serve(delay_s=0.0, rate=None)
    session = local_session(port)
    clock = _Clock()
    spec = JobSpec.model_validate(
        {
            "id": "year",
            "tickers": [f"Y{i:04d}" for i in range(n)],
            "schedule": "@daily",
            "source": "yahoo",
            "timezone": "America/New_York",
            "window": "365d",
            "prefix": "bench_year",
            "calendar": "XNYS",
        }
    )
    last, before = _two_sessions()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-yf-") as cache:
        configure_yfinance(Path(cache), session=session)
        executor = JobExecutor(
            build_fetchers(session=session),
            DataIOButler(RedisAdapter(client)),
            clock,
            4,
            Metrics("b"),
        )
        for name, day in (("first", before), ("second", last)):
            clock.at = datetime.combine(day, dtime(20, 0), tzinfo=NY).astimezone(UTC)
            before_stats = server.stats()
            t0 = time.perf_counter()
            result = executor.execute_job(spec)
            out[f"{name}_s"] = time.perf_counter() - t0
            after_stats = server.stats()
            for kind in ("bytes", "wire_bytes", "chart"):
                out[f"{name}_{kind}"] = after_stats.get(kind, 0) - before_stats.get(kind, 0)
            out[f"{name}_rows"] = result.rows_stored
            assert not result.failed_stocks, result.errors
    server.stop()
    return out


class _Clock:
    at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return time.monotonic()


def _two_sessions() -> tuple[date, date]:
    """The latest XNYS session before today that the fake serves, and the one before it."""
    from stocksched.calendars import MarketCalendars

    cal = MarketCalendars().calendar("XNYS")
    today = datetime.now(NY).date()
    days = [d.date() for d in cal.sessions_in_range(str(today - timedelta(days=14)), str(today))]
    days = [d for d in days if d < today]
    return days[-1], days[-2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickers", type=int, default=2000)
    parser.add_argument("--job-tickers", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5, help="(a) repeats, medians")
    parser.add_argument(
        "--only", default="abcd", help="which figures to measure, e.g. 'a' or 'bd' (default all)"
    )
    args = parser.parse_args()
    with private_redis() as r:
        client = r.client()
        if "a" in args.only:
            _print_a(store_path(client, args.tickers, args.rounds), args.tickers)
        if "b" in args.only:
            _print_b(incremental(client, args.job_tickers), args.job_tickers)
        if "c" in args.only or "d" in args.only:
            _print_cd(read_and_memory(client))


def _print_a(a: dict[str, float], tickers: int) -> None:
    print(
        f"(a) store {tickers} x 252 bars: {a['ours_s'] * 1000:.0f} ms (median); raw pipelined SET "
        f"of the same bytes {a['raw_s'] * 1000:.0f} ms: {a['share'] * 100:.0f}% of raw; the "
        f"window records of the same bars {a['windows_s'] * 1000:.0f} ms "
        f"({a['raw_s'] / a['windows_s'] * 100:.1f}% of raw)"
    )


def _print_b(b: dict[str, float], tickers: int) -> None:
    print(
        f"(b) {tickers} tickers x 1 year: first run {b['first_bytes'] / 1e6:.2f} MB "
        f"of JSON, {b['first_wire_bytes'] / 1e6:.2f} MB gzip on the wire, in "
        f"{b['first_s']:.2f} s ({b['first_rows']:.0f} bars, {b['first_chart']:.0f} requests); "
        f"second run one session later {b['second_bytes'] / 1e6:.3f} MB of JSON, "
        f"{b['second_wire_bytes'] / 1e6:.3f} MB gzip, in {b['second_s']:.2f} s "
        f"({b['second_rows']:.0f} bars, {b['second_chart']:.0f} requests): "
        f"{b['first_bytes'] / max(1, b['second_bytes']):.1f}x fewer JSON bytes, "
        f"{b['first_wire_bytes'] / max(1, b['second_wire_bytes']):.1f}x fewer wire bytes, "
        f"{b['first_s'] / b['second_s']:.1f}x faster"
    )


def _print_cd(cd: dict[str, float]) -> None:
    print(
        f"(c) read 2,520 daily bars: {cd['read_ms']:.2f} ms median; GET + json.loads of the "
        f"same bars as one JSON string {cd['json_ms']:.2f} ms"
    )
    print(
        f"(d) Redis memory per daily bar: {cd['bytes_per_bar']:.1f} B (10-year series); the "
        f"window JSON of the same bars {cd['window_bytes_per_bar']:.1f} B per bar per window"
    )


if __name__ == "__main__":
    main()
