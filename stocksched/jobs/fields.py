"""The field types of ``JobSpec`` (durations, tickers) and the memory it saves per spec.

Split from ``stocksched.jobs.spec`` (the model and its rules). A jobs file of 10,000
jobs holds 10,000 specs for as long as the daemon runs, so what each one costs counts:
equal durations share one ``timedelta``, and specs share their set of given field
names (``share_fields_set``).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from functools import cached_property, lru_cache
from typing import Annotated, Any, Self

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


class DumpedOnce(BaseModel):
    """A frozen model's JSON, sorted-key text and hash, computed once (``JobSpec``'s base).

    A spec is hashed at every reload and its JSON is the bulk of its stored record, so
    both are computed once per spec; the text is dropped once the records are written
    (``release_json``), the hash kept.
    """

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (durations as strings) that ``model_validate`` reads back.

        Read from ``canonical_json`` (kept as text: a fifth of the size of the dict, and
        only the text is needed to hash a spec and to store its record).
        """
        data = json.loads(self.canonical_json)
        return {name: data[name] for name in type(self).model_fields}

    @property
    def canonical_json(self) -> str:
        """``to_json`` as JSON with sorted keys: what the spec hash covers, and the
        ``spec`` member of the stored record, as ``json.dumps(..., sort_keys=True)``
        writes it. Dumped once per spec (it is frozen) until ``release_json``."""
        text, digest = self._dump
        if text is None:
            text = self._dumped_text()
            self.__dict__["_dump"] = (text, digest)
        return text

    @property
    def content_hash(self) -> str:
        """16 hex digits of the SHA-256 of ``canonical_json`` (the record's spec_hash)."""
        return self._dump[1]

    def release_json(self) -> None:
        """Drop the dumped text, keep the hash: the registry calls this once the records
        are written; a held spec is then only hashed again (reloads), and 10,000 texts
        were 4 MiB of the daemon's memory."""
        if "_dump" in self.__dict__:
            self.__dict__["_dump"] = (None, self._dump[1])

    @cached_property
    def _dump(self) -> tuple[str | None, str]:
        text = self._dumped_text()
        return text, hashlib.sha256(text.encode()).hexdigest()[:16]

    def _dumped_text(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def __copy__(self) -> Self:
        """A copy (``model_copy``) dumps itself: it may be changed after copying."""
        copied = super().__copy__()
        copied.__dict__.pop("_dump", None)
        return copied

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        copied = super().__deepcopy__(memo)
        copied.__dict__.pop("_dump", None)
        return copied
