"""One run's tickers: what each came to (``TickerOutcome``), and the window through which
they pass the ticker pool all runs share (``TickerWindow``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass


@dataclass
class TickerOutcome:
    """What one ticker of a run came to."""

    ticker: str
    rows: int = 0
    fresh: bool = False  # nothing new to ask for: no request made
    missing: int = 0  # exchange sessions missing from its stored series
    error: str = ""
    storage_failed: bool = False
    warning: str = ""  # the data-quality warning: bars dropped before storing


class TickerWindow:
    """One run's tickers on the shared pool: at most ``fill``-ed many at once, in order."""

    def __init__(
        self,
        pool: Executor,
        work: Callable[[str], TickerOutcome],
        tickers: Sequence[str],
    ) -> None:
        self._pool = pool
        self._work = work
        self._next = iter(tickers)
        self._left = len(tickers)
        self.total = len(tickers)
        self.futures: dict[Future[TickerOutcome], str] = {}

    @property
    def done(self) -> int:
        """Tickers finished so far (for the page's "running 3 of 10 tickers")."""
        return sum(1 for f in list(self.futures) if f.done())

    @property
    def remaining(self) -> bool:
        """Tickers not submitted yet."""
        return self._left > 0

    def fill(self, n: int) -> set[Future[TickerOutcome]]:
        """Submit up to ``n`` more tickers; the futures submitted."""
        added = set()
        for ticker in itertools.islice(self._next, n):
            self._left -= 1
            future = self._pool.submit(self._work, ticker)
            self.futures[future] = ticker
            added.add(future)
        return added
