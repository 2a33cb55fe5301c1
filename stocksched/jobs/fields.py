"""The field types of ``JobSpec`` (durations, tickers) and the memory it saves per spec.

Split from ``stocksched.jobs.spec`` (the model and its rules). A jobs file of 10,000
jobs holds 10,000 specs for as long as the daemon runs, so what each one costs counts:
equal durations share one ``timedelta``, and specs share their set of given field
names (``share_fields_set``).
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, PlainSerializer, WithJsonSchema

from stocksched.durations import DURATION_PATTERN, format_duration, parse_duration

# Yahoo symbols: AAPL, BRK-B, ^GSPC, EURUSD=X, GC=F, 7203.T, BTC-USD.
_TICKER_RE = re.compile(r"^\^?[A-Z0-9](?:[A-Z0-9.=-]{0,18}[A-Z0-9])?$")


def _duration_in(value: object) -> timedelta:
    """Durations come from YAML as strings (``30d``) or integers of seconds."""
    if isinstance(value, timedelta):
        td = value
    elif isinstance(value, bool):
        raise ValueError(f"must be a duration like '90s' or '1h30m', got {value!r}")
    elif isinstance(value, int):
        td = timedelta(seconds=value)
    elif isinstance(value, str):
        td = _parse_duration_text(value)
    else:
        raise ValueError(f"must be a duration like '90s' or '1h30m', got {show_value(value)}")
    if td < timedelta(0):
        raise ValueError(f"must not be negative, got {value!r}")
    return td


@lru_cache(maxsize=1024)
def _parse_duration_text(text: str) -> timedelta:
    """``parse_duration``, once per distinct text: 10,000 jobs share a few durations, and
    then share their (immutable) ``timedelta`` objects too. Errors are not cached."""
    return parse_duration(text)


@lru_cache(maxsize=1024)
def _format_duration_once(td: timedelta) -> str:
    """``format_duration`` once per distinct duration (each spec is dumped for its hash)."""
    return format_duration(td)


_DURATION_JSON = {
    "anyOf": [
        {"type": "string", "pattern": DURATION_PATTERN},
        {"type": "integer", "minimum": 0, "description": "seconds"},
    ],
    "description": "Duration: 500ms, 90s, 15m, 1h30m, 30d, 2w (or an integer of seconds)",
}

Duration = Annotated[
    timedelta,
    BeforeValidator(_duration_in),
    PlainSerializer(_format_duration_once, return_type=str, when_used="json"),
    WithJsonSchema(_DURATION_JSON),
]


def _ticker_in(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"ticker must be a string, got {show_value(value)}")
    symbol = value.strip().upper()
    if not _TICKER_RE.match(symbol):
        raise ValueError(
            f"invalid ticker {value!r}: Yahoo symbols are 1-20 letters, digits and . - = "
            "(optionally starting with ^), e.g. AAPL, BRK-B, ^GSPC, EURUSD=X"
        )
    return symbol


Ticker = Annotated[
    str,
    BeforeValidator(_ticker_in),
    WithJsonSchema({"type": "string", "pattern": _TICKER_RE.pattern.replace("A-Z", "A-Za-z")}),
]


def show_value(value: object) -> str:
    """A short description of a bad input for messages (never the whole document)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Distinct sets of explicitly given field names -> one shared set object (see below).
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


def share_fields_set(spec: BaseModel) -> None:
    """Give ``spec`` the shared copy of its ``__pydantic_fields_set__``.

    pydantic keeps a new set of the given field names per instance: ~730 bytes, over a
    fifth of a spec, and 10,000 jobs of a file have a handful of distinct sets. Sharing
    is safe for a frozen model: pydantic only adds to the set in ``__setattr__`` (which a
    frozen model refuses first) and copies it before changing it (``model_copy``).
    """
    key = frozenset(spec.__pydantic_fields_set__)
    shared = _FIELDS_SETS.get(key)
    if shared is None:
        if len(_FIELDS_SETS) >= 4096:
            return  # an unusual variety: keep the instance's own set
        shared = _FIELDS_SETS[key] = set(key)
    object.__setattr__(spec, "__pydantic_fields_set__", shared)
