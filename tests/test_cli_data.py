"""``stocksched bars`` and ``stocksched tickers`` as subprocesses against a real redis-server
filled by real job runs (yfinance's parser on canned Yahoo answers)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import redis

from stocksched.data import read_bars
from tests.conftest import RedisServer, free_port
from tests.helpers import run_cli
from tests.test_data_read import EXPECTED_SERIES, NY, run_jobs
from tests.yahoo_fake import installed_fake


@pytest.fixture
def filled(tmp_path: Path, real_redis: redis.Redis) -> redis.Redis:
    with installed_fake(tmp_path / "yfinance") as fake:
        run_jobs(real_redis, fake)
    return real_redis


def cli(server: RedisServer, cwd: Path, *args: str, env: bool = False) -> tuple[int, str, str]:
    extra = {"STOCKSCHED_REDIS_URL": server.url} if env else {}
    flags = [] if env else ["--redis-url", server.url]
    proc = run_cli(*args, *flags, cwd=cwd, env_extra=extra)
    return proc.returncode, proc.stdout, proc.stderr


def test_bars_csv_when_piped_is_the_frame(
    filled: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    code, out, err = cli(redis_server, tmp_path, "bars", "MSFT")
    assert (code, err) == (0, "")
    assert out == read_bars("MSFT", client=filled).to_csv()
    back = pd.read_csv(io.StringIO(out), index_col="Date")
    assert list(back.columns) == [
        "Open",
        "High",
        "Low",
        "Close",
        "Adj Close",
        "Volume",
        "Dividends",
        "Stock Splits",
    ]
    assert back.loc["2025-02-20 00:00:00-05:00", "Dividends"] == 0.83


def test_bars_json_with_a_range_and_the_url_from_the_environment(
    filled: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    code, out, _ = cli(
        redis_server,
        tmp_path,
        "bars",
        "aapl",
        "--start",
        "2025-01-08",
        "--end",
        "2025-01-10",
        "--format",
        "json",
        env=True,
    )
    assert code == 0
    body = json.loads(out)
    assert {k: body[k] for k in ("ticker", "interval", "prefix", "tz")} == {
        "ticker": "AAPL",
        "interval": "1d",
        "prefix": "scheduled_stock_data",
        "tz": NY,
    }
    assert [b["Date"] for b in body["bars"]] == [
        "2025-01-08T00:00:00-05:00",
        "2025-01-10T00:00:00-05:00",
    ]
    assert body["bars"][0]["Volume"] == 1_000_000


def test_bars_table(filled: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> None:
    code, out, _ = cli(redis_server, tmp_path, "bars", "MSFT", "--format", "table")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"MSFT 1d, 4 bars, times in {NY}"
    assert lines[1].split() == [
        "DATE",
        "OPEN",
        "HIGH",
        "LOW",
        "CLOSE",
        "ADJ",
        "CLOSE",
        "VOLUME",
        "DIVIDENDS",
        "SPLITS",
    ]
    assert lines[4].split() == [
        "2025-02-20",
        "415.31",
        "419.31",
        "412.54",
        "416.13",
        "416.13",
        "23508700",
        "0.83",
        "0.0",
    ]
    code, out, _ = cli(
        redis_server, tmp_path, "bars", "AAPL", "--interval", "1h", "--format", "table"
    )
    assert code == 0 and out.splitlines()[2].startswith("2025-01-10 09:30:00-05:00  240.01")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["NOPE"],
            "stocksched: no 1d bars of NOPE stored under prefix 'scheduled_stock_data'; "
            "nothing is stored for NOPE\n",
        ),
        (
            ["MSFT", "--interval", "1h"],
            "stocksched: no 1h bars of MSFT stored under prefix 'scheduled_stock_data'; "
            "stored for MSFT: 1d (prefix 'scheduled_stock_data')\n",
        ),
        (
            ["MSFT", "--start", "2025-02-31"],
            "stocksched: start: expected a date like 2024-01-31, got '2025-02-31'\n",
        ),
    ],
)
def test_bars_failures_exit_1_with_one_line(
    filled: redis.Redis, redis_server: RedisServer, tmp_path: Path, args: list[str], message: str
) -> None:
    code, out, err = cli(redis_server, tmp_path, "bars", *args)
    assert (code, out, err) == (1, "", message)


def test_bars_and_tickers_without_a_reachable_redis_exit_1(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["bars", "MSFT"], ["tickers"]):
        proc = run_cli(*args, "--redis-url", url, cwd=tmp_path)
        assert proc.returncode == 1 and proc.stdout == ""
        (line,) = proc.stderr.splitlines()
        assert (
            line.startswith("stocksched: cannot read the series: redis ")
            and "Traceback" not in line
        )
    proc = run_cli("bars", "MSFT", cwd=tmp_path)
    assert proc.returncode == 1 and "no Redis to read from" in proc.stderr


def test_tickers_json_and_table(
    filled: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    code, out, _ = cli(redis_server, tmp_path, "tickers", "--json")
    assert code == 0 and json.loads(out) == EXPECTED_SERIES
    code, out, _ = cli(redis_server, tmp_path, "tickers")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == [
        "PREFIX",
        "TICKER",
        "INTERVAL",
        "FIRST",
        "LAST",
        "BARS",
        "MISSING",
        "FETCHED",
        "LAST",
        "ACTION",
    ]
    assert rows[0].split() == [
        "scheduled_stock_data",
        "AAPL",
        "1d",
        "2025-01-02",
        "2025-01-10",
        "5",
        "1",
        "2025-01-11",
        "22:00:00",
        "UTC",
        "-",
    ]
    assert rows[2].endswith("2025-02-20 dividend 0.83")


def test_tickers_on_an_empty_redis(
    real_redis: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    assert cli(redis_server, tmp_path, "tickers") == (0, "no series stored\n", "")
    assert cli(redis_server, tmp_path, "tickers", "--json") == (0, "[]\n", "")
