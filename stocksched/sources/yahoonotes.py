"""yfinance's own warnings during a fetch, folded into our one line about that fetch.

yfinance logs a warning of its own for some failures before raising (``Cookie/crumb fetch
failed (Timeout), continuing without crumb``), once per ticker and attempt: beside our
``ticker failed`` line that is two or three lines per failure, and the first says less.
While a fetch runs, the ``yfinance`` logger's records from that thread are held instead of
emitted (``captured``); a failed fetch adds them to its error message, a fetch that
succeeded drops them to DEBUG. Other threads' records, and records outside a fetch, pass
as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

YFINANCE_LOGGER = "yfinance"
log = logging.getLogger(__name__)


class _Fold(logging.Filter):
    """Holds the records of threads inside ``captured``; lets every other record through."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        held: list[str] | None = getattr(self.local, "held", None)
        if held is None or record.levelno < logging.WARNING:
            return True
        text = " ".join(record.getMessage().split())
        if text not in held:
            held.append(text)
        return False


_FOLD = _Fold()


def install() -> None:
    """Attach the fold to yfinance's logger (idempotent; ``configure_yfinance`` calls it)."""
    logger = logging.getLogger(YFINANCE_LOGGER)
    if _FOLD not in logger.filters:
        logger.addFilter(_FOLD)


@contextmanager
def captured() -> Iterator[list[str]]:
    """The warnings yfinance logs in this thread inside the block, in order, each once."""
    held: list[str] = []
    outer = getattr(_FOLD.local, "held", None)
    _FOLD.local.held = held
    try:
        yield held
    finally:
        _FOLD.local.held = outer


def folded(message: str, notes: list[str]) -> str:
    """``message`` with what yfinance said, for a failure's one line."""
    if not notes:
        return message
    return f"{message} (yfinance: {'; '.join(notes)})"


def dropped(ticker: str, notes: list[str]) -> None:
    """A fetch that succeeded: its yfinance warnings were noise, kept at DEBUG."""
    for note in notes:
        log.debug("yfinance during a good fetch of %s: %s", ticker, note)
