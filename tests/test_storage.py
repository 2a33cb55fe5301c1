"""Storage layer: connect() (the adapter contract is tests/test_adapter_contract.py),
and the butler's record format, ttl, latest pointer, atomicity and outage behaviour."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from pandas.testing import assert_frame_equal, assert_index_equal
from redis.exceptions import RedisClusterException

from stocksched.storage import (
    CorruptRecordError,
    DataIOButler,
    RedisAdapter,
    StorageError,
    connect,
    is_embedded,
    windows,
)
from stocksched.storage import butler as butler_mod
from stocksched.storage.adapter import RETRIES
from stocksched.storage.cluster import is_cluster

NY = "America/New_York"
PREFIX = "scheduled_stock_data"
COLUMNS = ["Open", "High", "Low", "Close", "Volume", "Dividends", "Stock Splits"]


# --- builders -----------------------------------------------------------------------------


def daily_frame() -> pd.DataFrame:
    """Five AAPL-like daily bars as yfinance returns them: exchange-local midnights, tz-aware,
    prices with float32-derived digits, a dividend on one day."""
    index = pd.DatetimeIndex(
        [
            pd.Timestamp(d, tz=NY)
            for d in ("2025-09-22", "2025-09-23", "2025-09-24", "2025-09-25", "2025-09-26")
        ],
        name="Date",
    )
    return pd.DataFrame(
        {
            "Open": [
                248.3000030517578,
                255.8800048828125,
                255.22000122070312,
                253.2100067138672,
                254.10000610351562,
            ],
            "High": [
                256.6400146484375,
                257.3399963378906,
                255.74000549316406,
                257.1700134277344,
                257.6000061035156,
            ],
            "Low": [
                248.1199951171875,
                253.5800018310547,
                251.0399932861328,
                251.7100067138672,
                253.77999877929688,
            ],
            "Close": [
                256.0799865722656,
                254.42999267578125,
                252.30999755859375,
                256.8699951171875,
                255.4600067138672,
            ],
            "Volume": [105517400, 60275200, 42303700, 55202100, 46076300],
            "Dividends": [0.0, 0.0, 0.0, 0.26, 0.0],
            "Stock Splits": [0.0, 0.0, 0.0, 0.0, 0.0],
        },
        index=index,
    )


def intraday_frame(day: str = "2025-10-21", periods: int = 4) -> pd.DataFrame:
    """5-minute bars from the open, indexed like yfinance's intraday history ("Datetime")."""
    start = pd.Timestamp(f"{day} 09:30", tz=NY)
    index = pd.DatetimeIndex(
        [start + pd.Timedelta(minutes=5 * i) for i in range(periods)], name="Datetime"
    )
    return pd.DataFrame(
        {
            "Open": [262.6499938964844 + i / 8 for i in range(periods)],
            "High": [263.1000061035156 + i / 8 for i in range(periods)],
            "Low": [262.1099853515625 + i / 8 for i in range(periods)],
            "Close": [262.7300109863281 + i / 8 for i in range(periods)],
            "Volume": [1841230 - 1000 * i for i in range(periods)],
            "Dividends": [0.0] * periods,
            "Stock Splits": [0.0] * periods,
        },
        index=index,
    )


def strict_json(raw: str) -> Any:
    """json.loads that rejects NaN/Infinity, i.e. what a non-Python consumer would accept."""

    def refuse(token: str) -> None:
        raise ValueError(f"invalid JSON constant {token}")

    return json.loads(raw, parse_constant=refuse)


@pytest.fixture
def adapter(any_redis: redis.Redis) -> RedisAdapter:
    return RedisAdapter(any_redis)


@pytest.fixture
def butler(adapter: RedisAdapter) -> DataIOButler:
    return DataIOButler(adapter)


@pytest.fixture
def real_butler(real_redis: redis.Redis) -> DataIOButler:
    return DataIOButler(RedisAdapter(real_redis))


# --- connect() ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, "", "memory://", "  memory://  "])
def test_connect_without_a_server_gives_the_embedded_store(url: str | None) -> None:
    client = connect(url)
    assert is_embedded(client)
    client.set("k", "v")
    assert client.get("k") == "v"  # decode_responses=True: str, not bytes


def test_each_embedded_store_is_separate() -> None:
    one, two = connect(None), connect("memory://")
    one.set("k", "v")
    assert two.get("k") is None


@pytest.mark.redis
def test_connect_real_url(redis_server: Any, real_redis: redis.Redis) -> None:
    client = connect(redis_server.url)
    assert not is_embedded(client)
    assert RedisAdapter(client).ping()
    client.set("k", "v")
    assert real_redis.get("k") == "v"
    kwargs = _connection_kwargs(client)
    assert kwargs["decode_responses"] is True
    assert kwargs["socket_timeout"] == 5.0
    assert kwargs["socket_connect_timeout"] == 2.0
    if is_cluster(client):  # the cluster client retries (its nodes' connections do not)
        assert client.retry.get_retries() == RETRIES  # type: ignore[attr-defined]
    else:
        assert kwargs["health_check_interval"] == 30
        assert kwargs["retry"].get_retries() == RETRIES
    client.close()


def _connection_kwargs(client: redis.Redis) -> dict[str, Any]:
    """What the client's connections are made with (a cluster's: its first node's)."""
    if is_cluster(client):
        node: Any = client.get_default_node()  # type: ignore[attr-defined]
        return dict(node.redis_connection.connection_pool.connection_kwargs)
    return dict(client.connection_pool.connection_kwargs)


@pytest.mark.redis
def test_url_query_options_override_the_defaults(redis_server: Any) -> None:
    client = connect(redis_server.url + "?socket_timeout=12")
    client.ping()
    assert _connection_kwargs(client)["socket_timeout"] == 12.0
    client.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost:6379", "unsupported Redis URL scheme 'http'"),
        ("localhost:6379", "unsupported Redis URL scheme 'localhost'"),
        ("postgres://u@h/db", "unsupported Redis URL scheme 'postgres'"),
        ("/var/run/redis.sock", "unsupported Redis URL scheme '(none)'"),
        ("memory://somewhere", "exactly 'memory://'"),
    ],
)
def test_connect_rejects_other_schemes(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        connect(url)


def test_the_embedded_store_without_fakeredis_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import subprocess
    import sys

    monkeypatch.setitem(sys.modules, "fakeredis", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install 'stocksched\[embedded\]'"):
        connect("memory://")
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("version: 1\njobs: []\n")
    daemon = (
        "import sys; sys.modules['fakeredis'] = None; from stocksched.cli.commands import main; "
        f"sys.exit(main(['run', '--redis-url', 'memory://', '--jobs', {str(jobs)!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", daemon], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 2 and "redis_url: the embedded store" in done.stderr
    assert "pip install 'stocksched[embedded]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_scheme_error_does_not_echo_a_password() -> None:
    with pytest.raises(ValueError) as info:
        connect("https://user:s3cret@redis.example:6379")
    assert "s3cret" not in str(info.value)


@pytest.mark.redis
@pytest.mark.single_redis("sets requirepass with CONFIG SET on the one server")
def test_password_from_a_file(redis_server: Any, real_redis: redis.Redis, tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text("correct horse\n")  # trailing newline as `echo` writes it
    real_redis.config_set("requirepass", "correct horse")
    try:
        started = time.monotonic()
        with pytest.raises(redis.AuthenticationError):
            connect(redis_server.url).ping()
        assert time.monotonic() - started < 0.5  # a wrong password is not retried
        client = connect(redis_server.url, password_file=secret)
        assert client.ping()
        client.close()
    finally:
        admin = redis.Redis.from_url(redis_server.url, password="correct horse")
        admin.config_set("requirepass", "")
        admin.close()


def test_password_file_errors_are_value_errors(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:1/0"
    with pytest.raises(ValueError, match="cannot read Redis password file"):
        connect(url, password_file=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        connect(url, password_file=empty)
    full = tmp_path / "pw"
    full.write_text("pw")
    with pytest.raises(ValueError, match="not both"):
        connect("redis://:inline@127.0.0.1:1/0", password_file=full)
    assert is_embedded(connect("memory://", password_file=full))  # no auth there: ignored


# --- butler: record format and round trips -------------------------------------------------


class TestRoundTrip:
    def test_daily_record_is_the_original_designs_format(self, butler: DataIOButler) -> None:
        key = butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        assert key == "scheduled_stock_data:AAPL:2025-09-21:2025-10-21"
        records = strict_json(butler._adapter.get_data(key) or "")
        assert len(records) == 5
        assert list(records[0]) == ["Date", *COLUMNS]  # all columns, in order
        assert records[0] == {
            "Date": "2025-09-22",
            "Open": 248.3000030517578,
            "High": 256.6400146484375,
            "Low": 248.1199951171875,
            "Close": 256.0799865722656,
            "Volume": 105517400,
            "Dividends": 0.0,
            "Stock Splits": 0.0,
        }
        assert isinstance(records[0]["Volume"], int)
        assert records[3]["Dividends"] == 0.26

    def test_daily_round_trip(self, butler: DataIOButler) -> None:
        frame = daily_frame()
        butler.save_data(frame, PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        out = butler.get_data(PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        assert out is not None
        # tz-naive midnights of the exchange dates, named Date
        assert out.index.tz is None
        assert out.index.name == "Date"
        assert [d.strftime("%Y-%m-%d") for d in out.index] == [
            "2025-09-22",
            "2025-09-23",
            "2025-09-24",
            "2025-09-25",
            "2025-09-26",
        ]
        assert list(out.columns) == COLUMNS
        assert out["Volume"].dtype == "int64"
        assert all(out[c].dtype == "float64" for c in COLUMNS if c != "Volume")
        assert_frame_equal(out, frame.tz_localize(None))  # values bit for bit

    def test_daily_round_trip_with_the_exchange_zone_is_exact(self, butler: DataIOButler) -> None:
        frame = daily_frame()
        butler.save_data(frame, PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        out = butler.get_data(PREFIX, "AAPL", "2025-09-21", "2025-10-21", tz=NY)
        assert_frame_equal(out, frame)

    def test_intraday_record_keeps_time_and_offset(self, butler: DataIOButler) -> None:
        key = butler.save_data(
            intraday_frame(), PREFIX, "AAPL", "2025-10-14", "2025-10-21", interval="5m"
        )
        assert key == "scheduled_stock_data:AAPL:5m:2025-10-14:2025-10-21"
        records = strict_json(butler._adapter.get_data(key) or "")
        assert [r["Date"] for r in records] == [
            "2025-10-21T09:30:00-04:00",
            "2025-10-21T09:35:00-04:00",
            "2025-10-21T09:40:00-04:00",
            "2025-10-21T09:45:00-04:00",
        ]

    def test_intraday_round_trip(self, butler: DataIOButler) -> None:
        frame = intraday_frame()
        butler.save_data(frame, PREFIX, "AAPL", "2025-10-14", "2025-10-21", interval="5m")
        assert butler.get_data(PREFIX, "AAPL", "2025-10-14", "2025-10-21") is None  # not daily
        out = butler.get_data(PREFIX, "AAPL", "2025-10-14", "2025-10-21", interval="5m")
        assert out is not None
        assert str(out.index.tz) == "UTC-04:00"  # the stored offset
        assert out.index[0].strftime("%H:%M") == "09:30"  # wall-clock time as stored
        expected = frame.rename_axis("Date")
        assert_index_equal(out.index.tz_convert(NY), expected.index)  # same instants
        exact = butler.get_data(PREFIX, "AAPL", "2025-10-14", "2025-10-21", tz=NY, interval="5m")
        assert_frame_equal(exact, expected)

    def test_intraday_window_across_dst_reads_back_in_utc(self, butler: DataIOButler) -> None:
        # last bar before and first bar after the 2025-03-09 spring-forward
        frame = pd.concat([intraday_frame("2025-03-07", 1), intraday_frame("2025-03-10", 1)])
        key = butler.save_data(frame, PREFIX, "AAPL", "2025-03-05", "2025-03-11", interval="5m")
        dates = [r["Date"] for r in strict_json(butler._adapter.get_data(key) or "")]
        assert dates == ["2025-03-07T09:30:00-05:00", "2025-03-10T09:30:00-04:00"]
        out = butler.get_data(PREFIX, "AAPL", "2025-03-05", "2025-03-11", interval="5m")
        assert out is not None
        assert str(out.index.tz) == "UTC"
        assert list(out.index) == list(frame.index)  # same instants
        exact = butler.get_data(PREFIX, "AAPL", "2025-03-05", "2025-03-11", tz=NY, interval="5m")
        assert_frame_equal(exact, frame.rename_axis("Date"))

    def test_bar_size_can_be_forced(self, butler: DataIOButler) -> None:
        key = butler.save_data(intraday_frame(periods=1), PREFIX, "AAPL", "a", "b", intraday=False)
        assert strict_json(butler._adapter.get_data(key) or "")[0]["Date"] == "2025-10-21"
        key = butler.save_data(daily_frame(), PREFIX, "AAPL", "c", "d", intraday=True)
        assert strict_json(butler._adapter.get_data(key) or "")[0]["Date"] == (
            "2025-09-22T00:00:00-04:00"
        )

    def test_floats_are_unchanged(self, butler: DataIOButler) -> None:
        awkward = [0.1 + 0.2, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0, 123456.78901234567]
        index = pd.DatetimeIndex(
            [pd.Timestamp(f"2025-01-{d:02d}") for d in range(2, 2 + len(awkward))], name="Date"
        )
        frame = pd.DataFrame({"Close": awkward}, index=index)
        butler.save_data(frame, PREFIX, "X", "a", "b")
        out = butler.get_data(PREFIX, "X", "a", "b")
        assert out is not None
        assert [v.hex() for v in out["Close"]] == [v.hex() for v in awkward]

    def test_nan_is_stored_as_null_and_reads_back_as_nan(self, butler: DataIOButler) -> None:
        frame = daily_frame()
        frame.loc[frame.index[1], "Open"] = math.nan
        frame["Volume"] = frame["Volume"].astype("float64")
        frame.loc[frame.index[2], "Volume"] = math.nan
        key = butler.save_data(frame, PREFIX, "AAPL", "a", "b")
        records = strict_json(butler._adapter.get_data(key) or "")  # valid JSON
        assert records[1]["Open"] is None
        assert records[2]["Volume"] is None
        assert records[0]["Volume"] == 105517400 and isinstance(records[0]["Volume"], int)
        out = butler.get_data(PREFIX, "AAPL", "a", "b")
        assert out is not None
        assert math.isnan(out["Open"].iloc[1])
        assert out["Volume"].dtype == "float64"  # int64 cannot hold a gap
        assert_frame_equal(out, frame.tz_localize(None))

    def test_float_volume_without_gaps_reads_back_as_int64(self, butler: DataIOButler) -> None:
        frame = daily_frame()
        frame["Volume"] = frame["Volume"].astype("float64")
        butler.save_data(frame, PREFIX, "AAPL", "a", "b")
        out = butler.get_data(PREFIX, "AAPL", "a", "b")
        assert out is not None
        assert out["Volume"].dtype == "int64"
        assert out["Volume"].tolist() == daily_frame()["Volume"].tolist()

    def test_update_data_overwrites_the_window(self, butler: DataIOButler) -> None:
        butler.save_data(daily_frame(), PREFIX, "AAPL", "a", "b")
        changed = daily_frame()
        changed["Close"] = changed["Close"] + 1.0
        assert butler.update_data(changed, PREFIX, "AAPL", "a", "b") == f"{PREFIX}:AAPL:a:b"
        out = butler.get_data(PREFIX, "AAPL", "a", "b", tz=NY)
        assert_frame_equal(out, changed)

    def test_ticker_is_upper_cased_in_the_key(self, butler: DataIOButler) -> None:
        key = butler.save_data(daily_frame(), PREFIX, "brk-b", "a", "b")
        assert key == f"{PREFIX}:BRK-B:a:b"
        assert butler.get_data(PREFIX, "brk-b", "a", "b") is not None

    def test_missing_window_is_none(self, butler: DataIOButler) -> None:
        assert butler.get_data(PREFIX, "AAPL", "2025-01-01", "2025-01-31") is None
        assert butler.get_latest(PREFIX, "AAPL") is None


class TestRefusals:
    def frame_with(self, **changes: Any) -> pd.DataFrame:
        frame = daily_frame()
        for column, value in changes.items():
            frame[column] = value
        return frame

    @pytest.mark.parametrize(
        ("frame", "message"),
        [
            (daily_frame().iloc[0:0], "empty frame"),
            (daily_frame().reset_index(drop=True), "DatetimeIndex"),
            (intraday_frame().tz_localize(None), "tz-aware"),
            (daily_frame().assign(Date=1), "clashes"),
            (daily_frame().set_axis([0, 1, 2, 3, 4, 5, 6], axis=1), "unique strings"),
            (daily_frame().assign(Close=math.inf), "infinite"),
        ],
        ids=["empty", "no-datetime-index", "naive-intraday", "date-column", "int-columns", "inf"],
    )
    def test_frames_that_cannot_round_trip_are_refused(
        self, butler: DataIOButler, frame: pd.DataFrame, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            butler.save_data(frame, PREFIX, "AAPL", "a", "b")
        assert butler._adapter.client.dbsize() == 0  # nothing half-written

    @pytest.mark.parametrize(
        ("stock_id", "start", "end"),
        [
            ("", "a", "b"),
            ("AA:PL", "a", "b"),
            ("AAPL", "2025-01-01T00:00", "b"),
            ("AAPL", "a", "2025 01 31"),
            ("AAPL", "a", ""),
        ],
    )
    def test_ambiguous_key_parts_are_refused(
        self, butler: DataIOButler, stock_id: str, start: str, end: str
    ) -> None:
        with pytest.raises(ValueError, match="without ':' or whitespace"):
            butler.save_data(daily_frame(), PREFIX, stock_id, start, end)

    def test_value_in_another_format_is_a_corrupt_record(self, butler: DataIOButler) -> None:
        for raw in ("not json", '{"Date": "2025-01-01"}', '[{"Open": 1.0}]'):
            butler._adapter.save_data(f"{PREFIX}:AAPL:a:b", raw)
            with pytest.raises(CorruptRecordError, match=f"{PREFIX}:AAPL:a:b"):
                butler.get_data(PREFIX, "AAPL", "a", "b")
        assert issubclass(CorruptRecordError, StorageError)


# --- latest pointer --------------------------------------------------------------------------


class TestLatest:
    def test_save_points_latest_at_the_window(self, butler: DataIOButler) -> None:
        key = butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        assert butler._adapter.get_data(f"{PREFIX}:AAPL:latest") == key
        assert_frame_equal(
            butler.get_latest(PREFIX, "AAPL"),
            butler.get_data(PREFIX, "AAPL", "2025-09-21", "2025-10-21"),
        )

    def test_a_newer_window_moves_latest_an_older_one_does_not(self, butler: DataIOButler) -> None:
        latest = f"{PREFIX}:AAPL:latest"
        butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        newer = butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-22", "2025-10-22")
        assert butler._adapter.get_data(latest) == newer
        older = butler.save_data(daily_frame(), PREFIX, "AAPL", "2020-01-01", "2020-12-31")
        assert butler._adapter.exists(older)  # stored, but a backfill is not "latest"
        assert butler._adapter.get_data(latest) == newer
        same_end = butler.save_data(daily_frame(), PREFIX, "AAPL", "2024-10-22", "2025-10-22")
        assert butler._adapter.get_data(latest) == same_end  # a tie goes to the last write

    def test_latest_is_per_prefix_and_ticker(self, butler: DataIOButler) -> None:
        butler.save_data(daily_frame(), "a:nested", "AAPL", "2025-09-21", "2025-10-21")
        butler.save_data(daily_frame(), PREFIX, "MSFT", "2025-09-21", "2025-10-21")
        assert butler.get_latest("a:nested", "AAPL") is not None
        assert butler.get_latest(PREFIX, "AAPL") is None
        assert butler.get_latest("a:nested", "MSFT") is None

    def test_dangling_pointer_reads_as_none(self, butler: DataIOButler) -> None:
        key = butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        butler._adapter.delete_data(key)
        assert butler.get_latest(PREFIX, "AAPL") is None

    def test_pointer_to_another_ticker_is_refused(self, butler: DataIOButler) -> None:
        butler.save_data(daily_frame(), PREFIX, "MSFT", "2025-09-21", "2025-10-21")
        butler._adapter.save_data(f"{PREFIX}:AAPL:latest", f"{PREFIX}:MSFT:2025-09-21:2025-10-21")
        with pytest.raises(CorruptRecordError, match="names no AAPL window"):
            butler.get_latest(PREFIX, "AAPL")

    @pytest.mark.single_redis("the WATCH/MULTI write of a single Redis (a cluster's: test_cluster)")
    def test_a_concurrent_pointer_change_is_retried(
        self, butler: DataIOButler, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Another writer moving the pointer between our WATCH and EXEC makes EXEC abort;
        the save retries and lands, rather than clobbering or losing the window."""
        other = butler._adapter.client  # same server; a new connection from the pool
        real = windows.moves_forward
        calls: list[int] = []

        def interfere(*args: Any) -> bool:
            calls.append(1)
            if len(calls) == 1:
                other.set(f"{PREFIX}:AAPL:latest", f"{PREFIX}:AAPL:2025-01-01:2025-01-31")
            return real(*args)

        monkeypatch.setattr(butler_mod, "moves_forward", interfere)
        key = butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        assert len(calls) == 2
        assert butler._adapter.get_data(f"{PREFIX}:AAPL:latest") == key

    @pytest.mark.single_redis("the WATCH/MULTI write of a single Redis (a cluster's: test_cluster)")
    def test_endless_contention_gives_up_with_a_storage_error(
        self, butler: DataIOButler, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        other = butler._adapter.client

        def always_interfere(*args: Any) -> bool:
            other.set(f"{PREFIX}:AAPL:latest", f"{PREFIX}:AAPL:2025-01-01:2025-01-31")
            return True

        monkeypatch.setattr(butler_mod, "moves_forward", always_interfere)
        with pytest.raises(StorageError, match="kept changing"):
            butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        assert not butler._adapter.exists(f"{PREFIX}:AAPL:2025-09-21:2025-10-21")

    @pytest.mark.redis
    def test_concurrent_writers_leave_latest_on_the_newest_window(
        self, real_butler: DataIOButler
    ) -> None:
        ends = [f"2025-10-{day:02d}" for day in range(1, 17)]
        errors: list[BaseException] = []

        def write(end: str) -> None:
            try:
                real_butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-01", end)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(end,)) for end in reversed(ends)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert errors == []
        assert real_butler._adapter.get_data(f"{PREFIX}:AAPL:latest") == (
            f"{PREFIX}:AAPL:2025-09-01:2025-10-16"
        )


# --- intervals ----------------------------------------------------------------------------


class TestIntervals:
    """Daily bars keep the original design's keys; every other interval has its own window
    keys and its own latest pointer, so jobs differing only in interval never clash."""

    def test_daily_and_hourly_windows_of_one_ticker_are_different_keys(
        self, butler: DataIOButler
    ) -> None:
        daily = butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        hourly = butler.save_data(
            intraday_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21", interval="1h"
        )
        assert daily == "scheduled_stock_data:AAPL:2025-09-21:2025-10-21"
        assert hourly == "scheduled_stock_data:AAPL:1h:2025-09-21:2025-10-21"
        client = butler._adapter.client
        assert client.get(f"{PREFIX}:AAPL:latest") == daily
        assert client.get(f"{PREFIX}:AAPL:1h:latest") == hourly
        assert_frame_equal(
            butler.get_data(PREFIX, "AAPL", "2025-09-21", "2025-10-21", tz=NY),
            daily_frame(),
        )
        assert_frame_equal(
            butler.get_data(PREFIX, "AAPL", "2025-09-21", "2025-10-21", tz=NY, interval="1h"),
            intraday_frame().rename_axis("Date"),
        )
        assert_frame_equal(butler.get_latest(PREFIX, "AAPL", tz=NY), daily_frame())
        assert_frame_equal(
            butler.get_latest(PREFIX, "AAPL", tz=NY, interval="1h"),
            intraday_frame().rename_axis("Date"),
        )

    def test_each_pointer_moves_forward_on_its_own(self, butler: DataIOButler) -> None:
        client = butler._adapter.client
        hourly = butler.save_data(
            intraday_frame(), PREFIX, "AAPL", "2025-10-14", "2025-10-21", interval="1h"
        )
        # an older daily window still becomes the daily latest: the 1h pointer is not its rival
        daily = butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-01-01", "2025-02-01")
        assert client.get(f"{PREFIX}:AAPL:latest") == daily
        assert client.get(f"{PREFIX}:AAPL:1h:latest") == hourly
        older = butler.save_data(
            intraday_frame(), PREFIX, "AAPL", "2025-10-01", "2025-10-08", interval="1h"
        )
        assert butler._adapter.exists(older)
        assert client.get(f"{PREFIX}:AAPL:1h:latest") == hourly  # a backfill is not latest
        newer = butler.save_data(
            intraday_frame(), PREFIX, "AAPL", "2025-10-15", "2025-10-22", interval="1h"
        )
        assert client.get(f"{PREFIX}:AAPL:1h:latest") == newer
        assert client.get(f"{PREFIX}:AAPL:latest") == daily

    def test_update_data_keeps_the_interval(self, butler: DataIOButler) -> None:
        key = butler.update_data(intraday_frame(), PREFIX, "AAPL", "a", "b", interval="15m")
        assert key == f"{PREFIX}:AAPL:15m:a:b"
        assert butler._adapter.client.get(f"{PREFIX}:AAPL:15m:latest") == key
        assert not butler._adapter.exists(f"{PREFIX}:AAPL:a:b")

    def test_readers_of_one_interval_see_nothing_of_another(self, butler: DataIOButler) -> None:
        butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        assert butler.get_data(PREFIX, "AAPL", "2025-09-21", "2025-10-21", interval="1h") is None
        assert butler.get_latest(PREFIX, "AAPL", interval="1h") is None
        assert butler.get_latest(PREFIX, "AAPL", interval="1wk") is None

    def test_a_pointer_naming_another_intervals_window_is_refused(
        self, butler: DataIOButler
    ) -> None:
        daily = butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        butler._adapter.save_data(f"{PREFIX}:AAPL:1h:latest", daily)
        with pytest.raises(CorruptRecordError, match="names no AAPL 1h window"):
            butler.get_latest(PREFIX, "AAPL", interval="1h")
        hourly = butler.save_data(intraday_frame(), PREFIX, "AAPL", "a", "b", interval="1h")
        butler._adapter.save_data(f"{PREFIX}:AAPL:latest", hourly)
        with pytest.raises(CorruptRecordError, match="names no AAPL window"):
            butler.get_latest(PREFIX, "AAPL")

    def test_ttl_applies_to_the_intervals_window_and_pointer(self, butler: DataIOButler) -> None:
        key = butler.save_data(
            intraday_frame(), PREFIX, "AAPL", "a", "b", ttl=timedelta(days=2), interval="1h"
        )
        for k in (key, f"{PREFIX}:AAPL:1h:latest"):
            assert 2 * 86_400_000 - 60_000 < butler._adapter.client.pttl(k) <= 2 * 86_400_000

    @pytest.mark.parametrize("interval", ["", "1:h", "1 h"])
    def test_bad_interval_is_refused(self, butler: DataIOButler, interval: str) -> None:
        with pytest.raises(ValueError, match="interval"):
            butler.save_data(daily_frame(), PREFIX, "AAPL", "a", "b", interval=interval)
        with pytest.raises(ValueError, match="interval"):
            butler.get_latest(PREFIX, "AAPL", interval=interval)


# --- ttl --------------------------------------------------------------------------------------


class TestTtl:
    def test_ttl_applies_to_window_and_pointer(self, butler: DataIOButler) -> None:
        key = butler.save_data(
            daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21", ttl=timedelta(days=7)
        )
        client = butler._adapter.client
        for k in (key, f"{PREFIX}:AAPL:latest"):
            assert 7 * 86_400_000 - 60_000 < client.pttl(k) <= 7 * 86_400_000

    def test_no_ttl_means_no_expiry(self, butler: DataIOButler) -> None:
        key = butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        assert butler._adapter.client.pttl(key) == -1
        assert butler._adapter.client.pttl(f"{PREFIX}:AAPL:latest") == -1

    @pytest.mark.redis
    def test_window_and_pointer_actually_expire(self, real_butler: DataIOButler) -> None:
        key = real_butler.save_data(
            daily_frame(),
            PREFIX,
            "AAPL",
            "2025-09-21",
            "2025-10-21",
            ttl=timedelta(milliseconds=300),
        )
        assert real_butler.get_latest(PREFIX, "AAPL") is not None
        deadline = time.monotonic() + 3
        while real_butler._adapter.exists(key) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not real_butler._adapter.exists(key)
        assert not real_butler._adapter.exists(f"{PREFIX}:AAPL:latest")
        assert real_butler.get_latest(PREFIX, "AAPL") is None


# --- atomicity --------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.single_redis("the WATCH/MULTI write of a single Redis (a cluster's: test_cluster)")
def test_window_and_pointer_are_written_in_one_transaction(
    redis_server: Any, real_butler: DataIOButler
) -> None:
    watcher = redis_server.client()
    watcher.connection_pool.connection_kwargs["socket_timeout"] = 5
    commands: list[str] = []
    with watcher.monitor() as monitor:
        key = real_butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        while not commands or commands[-1] != "EXEC":
            command = monitor.next_command()["command"]
            commands.append(" ".join(command.split()[:2]))
    watcher.close()
    multi = commands.index("MULTI")
    assert commands[multi:] == ["MULTI", f"SET {key}", f"SET {PREFIX}:AAPL:latest", "EXEC"]
    assert commands[:multi] == [f"WATCH {PREFIX}:AAPL:latest", f"GET {PREFIX}:AAPL:latest"]


# --- outage -----------------------------------------------------------------------------------


@pytest.fixture
def stopped_server(redis_server: Any, real_redis: redis.Redis) -> Iterator[RedisAdapter]:
    """An adapter (with the production retry policy) whose server has just been stopped."""
    adapter = RedisAdapter(connect(redis_server.url))
    adapter.save_data("k", "v")  # a pooled connection that is about to die
    redis_server.stop()
    try:
        yield adapter
    finally:
        if not redis_server.running:  # a test may have restarted it already
            redis_server.start()
        adapter.client.close()


_ONE_ON_CLUSTER = pytest.mark.single_redis("the cluster runs the save case of this test")


@pytest.mark.redis
class TestOutage:
    @pytest.mark.parametrize(
        ("call", "operation"),
        [
            (lambda a: a.save_data("k", "v"), "SET"),
            # the same translation (storage_errors) on a cluster: one operation shows it,
            # and each costs the cluster a 4 s stop and restart
            pytest.param(lambda a: a.get_data("k"), "GET", marks=_ONE_ON_CLUSTER),
            pytest.param(lambda a: a.exists("k"), "EXISTS", marks=_ONE_ON_CLUSTER),
            pytest.param(lambda a: a.delete_data("k"), "DEL", marks=_ONE_ON_CLUSTER),
        ],
        ids=["save", "get", "exists", "delete"],
    )
    def test_adapter_raises_storage_error(
        self, stopped_server: RedisAdapter, call: Any, operation: str
    ) -> None:
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            call(stopped_server)
        assert info.value.operation == operation
        assert info.value.key == "k"
        assert "\n" not in str(info.value)
        # a cluster client that reached no node at all says so in its own exception type
        assert isinstance(info.value.__cause__, redis.ConnectionError | RedisClusterException)
        assert time.monotonic() - started < 3  # a few quick retries, not a hang

    def test_butler_raises_storage_error_and_ping_is_false(
        self, stopped_server: RedisAdapter
    ) -> None:
        butler = DataIOButler(stopped_server)
        with pytest.raises(StorageError, match=r"MULTI/EXEC|SET"):  # SET first on a cluster
            butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        with pytest.raises(StorageError):
            butler.get_latest(PREFIX, "AAPL")
        assert stopped_server.ping() is False

    def test_the_same_adapter_works_again_after_a_restart(
        self, redis_server: Any, stopped_server: RedisAdapter
    ) -> None:
        with pytest.raises(StorageError):
            stopped_server.get_data("k")
        redis_server.start()
        assert stopped_server.ping() is True
        butler = DataIOButler(stopped_server)
        key = butler.save_data(daily_frame(), PREFIX, "AAPL", "2025-09-21", "2025-10-21")
        assert butler.get_latest(PREFIX, "AAPL") is not None
        assert stopped_server.exists(key)
