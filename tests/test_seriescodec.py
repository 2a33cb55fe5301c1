"""seriescodec: the packed bars a frame becomes, and how a series is cut into chunks."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from stocksched.sources.demo import DemoFetcher
from stocksched.storage import seriescodec


def demo(start: str, end: str) -> pd.DataFrame:
    fetch = DemoFetcher().fetch_from_source
    return fetch("AAA", date.fromisoformat(start), date.fromisoformat(end), "1d")


def test_chunks_cut_at_span_boundaries_skip_empty_spans_and_rejoin_exactly() -> None:
    frame = pd.concat([demo("2019-01-01", "2019-06-30"), demo("2022-03-01", "2023-12-31")])
    rows = seriescodec.bars_from_frame(frame).rows
    chunks = seriescodec.split_chunks(rows, "1d")
    for start, part in chunks.items():
        assert {seriescodec.chunk_start(int(t), "1d") for t in part["ts"]} == {start}
    assert len(chunks) == len({seriescodec.chunk_start(int(t), "1d") for t in rows["ts"]})
    joined = np.concatenate([chunks[s] for s in sorted(chunks)])
    assert joined.tobytes() == rows.tobytes()
    decoded = seriescodec.decode_chunks(seriescodec.encode_chunk(chunks[s]) for s in sorted(chunks))
    assert decoded.tobytes() == rows.tobytes()


def test_volume_nan_is_stored_as_zero_and_a_fractional_volume_is_refused() -> None:
    frame = demo("2024-01-01", "2024-01-31").astype({"Volume": "float64"})
    frame.iloc[3, frame.columns.get_loc("Volume")] = np.nan
    rows = seriescodec.bars_from_frame(frame).rows
    assert rows["volume"][3] == 0
    assert list(rows["volume"][4:]) == frame["Volume"].iloc[4:].astype("int64").tolist()
    frame.iloc[5, frame.columns.get_loc("Volume")] = 10.5
    with pytest.raises(ValueError, match="fractional"):
        seriescodec.bars_from_frame(frame)


def test_actions_are_found_with_either_action_column_alone() -> None:
    frame = demo("2024-01-01", "2024-01-31")
    frame.loc["2024-01-10", "Dividends"] = 0.24
    frame.loc["2024-01-17", "Stock Splits"] = 4.0
    ts = {int(pd.Timestamp(d, tz=frame.index.tz).timestamp()) for d in ("2024-01-10", "2024-01-17")}
    day10, day17 = sorted(ts)
    assert seriescodec.bars_from_frame(frame).actions == {day10: (0.24, 0.0), day17: (0.0, 4.0)}
    only_splits = frame.drop(columns=["Dividends"])
    assert seriescodec.bars_from_frame(only_splits).actions == {day17: (0.0, 4.0)}
    only_dividends = frame.drop(columns=["Stock Splits"])
    assert seriescodec.bars_from_frame(only_dividends).actions == {day10: (0.24, 0.0)}
    assert (
        seriescodec.bars_from_frame(frame.drop(columns=["Dividends", "Stock Splits"])).actions == {}
    )
