"""``stocksched bars`` and ``stocksched tickers``: the stored series, read from Redis directly.

No daemon is needed. Redis comes from ``--redis-url``, ``$STOCKSCHED_REDIS_URL`` or the
settings file (with its ``redis_password_file``), like every command. Exit 0; 1 with one
line on stderr for a ticker or interval with nothing stored, a bad date or an
unreachable Redis.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from stocksched.cli.output import fmt_time, table
from stocksched.cli.parser import settings_from_args
from stocksched.exitcodes import EXIT_FAIL, EXIT_OK
from stocksched.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

    from stocksched.data import SeriesInfo
    from stocksched.storage.series import SeriesStore

SettingsLoader = Callable[[], Settings]
BAR_HEADERS = ("OPEN", "HIGH", "LOW", "CLOSE", "ADJ CLOSE", "VOLUME", "DIVIDENDS", "SPLITS")
SERIES_HEADERS = (
    "PREFIX",
    "TICKER",
    "INTERVAL",
    "FIRST",
    "LAST",
    "BARS",
    "MISSING",
    "FETCHED",
    "LAST ACTION",
)


def cmd_data(args: argparse.Namespace) -> int:
    """The command line's entry: settings from the file, environment and flags."""
    return run_data_command(args, lambda: settings_from_args(args))


def run_data_command(
    args: argparse.Namespace, load_settings: SettingsLoader, out: TextIO | None = None
) -> int:
    """Run ``bars`` or ``tickers``; every failure is one line on stderr and exit 1."""
    from stocksched.data import SeriesNotFound
    from stocksched.storage.adapter import StorageError

    out = out or sys.stdout
    try:
        store = _store(load_settings())
        if args.command == "bars":
            return _bars(store, args, out)
        return _tickers(store, args, out)
    except SeriesNotFound as exc:
        return _fail(str(exc))
    except StorageError as exc:
        return _fail(f"cannot read the series: {exc}")
    except ValueError as exc:  # a bad date, no Redis URL, a URL connect refuses
        return _fail(str(exc))


def _store(settings: Settings) -> SeriesStore:
    from stocksched.data import store_for

    return store_for(settings.redis_url, password_file=settings.redis_password_file)


def _bars(store: SeriesStore, args: argparse.Namespace, out: TextIO) -> int:
    from stocksched.data import bars_json, read_series
    from stocksched.storage.series import SeriesId

    frame = read_series(store, args.ticker, args.interval, args.start, args.end, args.prefix)
    fmt = args.format or ("table" if out.isatty() else "csv")
    if fmt == "csv":
        frame.to_csv(out)
    elif fmt == "json":
        series = SeriesId(args.prefix, args.ticker.strip().upper(), args.interval)
        out.write(json.dumps(bars_json(frame, series)) + "\n")
    else:
        out.write(format_bars(frame, args.ticker.strip().upper(), args.interval) + "\n")
    return EXIT_OK


def _tickers(store: SeriesStore, args: argparse.Namespace, out: TextIO) -> int:
    from stocksched.data import series_infos

    infos = series_infos(store, args.prefix)
    if args.json:
        out.write(json.dumps([i.as_dict() for i in infos], indent=2) + "\n")
    else:
        out.write(format_series(infos) + "\n")
    return EXIT_OK


def format_bars(frame: pd.DataFrame, ticker: str, interval: str) -> str:
    """The bars as a table; times in the exchange's zone (daily bars: the date alone)."""
    from stocksched.data import is_intraday

    tz = str(frame.index.tz)
    if frame.empty:
        return f"no {interval} bars of {ticker} in this range"
    daily = not is_intraday(interval)
    dates = [t.date().isoformat() if daily else t.isoformat(sep=" ") for t in frame.index]
    rows = [
        [day, *(_number(v) for v in values)]
        for day, values in zip(dates, frame.itertuples(index=False, name=None), strict=True)
    ]
    title = f"{ticker} {interval}, {len(rows)} bars, times in {tz}"
    return title + "\n" + table([f"DATE ({tz})" if not daily else "DATE", *BAR_HEADERS], rows)


def format_series(infos: Sequence[SeriesInfo]) -> str:
    if not infos:
        return "no series stored"
    rows = [
        [
            i.prefix,
            i.ticker,
            i.interval,
            i.first or "-",
            i.last or "-",
            str(i.bars),
            str(i.missing),
            fmt_time(i.fetched),
            _action(i.last_action),
        ]
        for i in infos
    ]
    return table(list(SERIES_HEADERS), rows)


def _action(action: Mapping[str, Any] | None) -> str:
    if not action:
        return "-"
    parts = [str(action.get("date", "?"))]
    if action.get("dividend"):
        parts.append(f"dividend {action['dividend']}")
    if action.get("split"):
        parts.append(f"split {action['split']}")
    return " ".join(parts)


def _number(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return str(value)


def _fail(message: str) -> int:
    sys.stderr.write(f"stocksched: {message}\n")
    return EXIT_FAIL
