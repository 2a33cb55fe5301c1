"""Durations as users write them in jobs.yaml, and the canonical spelling specs are stored with."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stocksched.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("30m1h", timedelta(hours=1, minutes=30)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        ("500ms", timedelta(milliseconds=500)),
        ("1m500ms", timedelta(minutes=1, milliseconds=500)),
        ("1.5h", timedelta(minutes=90)),
        (
            "1w2d3h4m5s6ms",
            timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5, milliseconds=6),
        ),
        ("  15m ", timedelta(minutes=15)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("-5m", "negative"),
        ("5", "expected a number and a unit"),
        ("5x", "expected a number and a unit"),
        ("m", "expected a number and a unit"),
        ("1h 30m", "expected a number and a unit"),
        ("30D", "expected a number and a unit"),
        ("1h1h", "twice"),
        ("abc", "invalid duration 'abc'"),
    ],
)
def test_parse_duration_rejects(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_duration(text)


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=30), "30d"),
        (timedelta(days=14), "2w"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(days=1, seconds=1), "1d1s"),
        (timedelta(microseconds=1500), "1.5ms"),
        (timedelta(microseconds=250), "0.25ms"),
    ],
)
def test_format_duration_is_canonical_inverse(td: timedelta, text: str) -> None:
    assert format_duration(td) == text
    assert parse_duration(text) == td


def test_format_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(timedelta(seconds=-1))


@pytest.mark.parametrize("text", ["90s", "1h30m", "30d", "2w", "500ms", "1d2h3m4s5ms", "0"])
def test_round_trip(text: str) -> None:
    td = parse_duration(text)
    assert parse_duration(format_duration(td)) == td
