"""Human-written durations (``90s``, ``1h30m``, ``30d``, ``500ms``) and their canonical form.

jobs.yaml writes every duration as such a string, so users never have to count
seconds, and ``format_duration`` gives the one canonical spelling that specs are
serialised (and hashed) with: a value read back from Redis compares equal to the
one in the file.

Grammar: ``0`` or one or more ``<number><unit>`` parts, no spaces inside, units
``w d h m s ms`` (case-sensitive: ``m`` is minutes, never months), each unit at
most once. A number may have a decimal part (``1.5h``). Negative values are
rejected: nothing in stocksched is scheduled in the past.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation

_UNIT_US: dict[str, int] = {
    "w": 7 * 86_400_000_000,
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
    "ms": 1_000,
}
# "ms" must be tried before "m" so "500ms" is not read as "500m" + "s".
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")
_UNITS_HELP = "w, d, h, m, s, ms"

# The pattern editors and the JSON Schema use; parse_duration is the authority.
DURATION_PATTERN = r"^(0|(\d+(\.\d+)?(ms|w|d|h|m|s))+)$"


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``1h30m``, ``30d``, ``2w``, ``500ms`` or ``0``; ValueError says why not."""
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string like '90s' or '1h30m', got {text!r}")
    s = text.strip()
    if not s:
        raise ValueError("duration is empty; write e.g. '90s', '1h30m' or '30d'")
    if s.startswith("-"):
        raise ValueError(f"duration {text!r} is negative; durations must be >= 0")
    if s == "0":
        return timedelta(0)
    total_us = Decimal(0)
    seen: set[str] = set()
    pos = 0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        number, unit = match.groups()
        if unit in seen:
            raise ValueError(f"duration {text!r} gives the unit {unit!r} twice")
        seen.add(unit)
        try:
            total_us += Decimal(number) * _UNIT_US[unit]
        except InvalidOperation as exc:  # pragma: no cover - the regex only admits digits
            raise ValueError(f"invalid number in duration {text!r}") from exc
        pos = match.end()
    if pos != len(s) or not seen:
        raise ValueError(
            f"invalid duration {text!r}: expected a number and a unit ({_UNITS_HELP}), "
            "e.g. '90s', '1h30m', '30d', '500ms'"
        )
    return timedelta(microseconds=int(total_us.to_integral_value()))


def format_duration(td: timedelta) -> str:
    """Canonical spelling: largest units first, zero parts left out (``1h30m``, ``30d``, ``0s``).

    Weeks are used only for whole weeks, so ``30d`` stays ``30d`` rather than ``4w2d``.
    """
    total_us = (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
    if total_us < 0:
        raise ValueError(f"cannot format a negative duration ({td})")
    if total_us == 0:
        return "0s"
    week = _UNIT_US["w"]
    if total_us % week == 0:
        return f"{total_us // week}w"
    parts: list[str] = []
    rest = total_us
    for unit in ("d", "h", "m", "s", "ms"):
        size = _UNIT_US[unit]
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    if rest:
        # Below a millisecond: write it as a decimal number of ms so parse_duration reads it back.
        frac = f"{Decimal(rest) / 1000:f}".lstrip("0") or "0"
        if parts and parts[-1].endswith("ms"):
            whole = parts.pop()[:-2]
            parts.append(f"{whole}{frac}ms")
        else:
            parts.append(f"0{frac}ms")
    return "".join(parts)
