"""Cyclic garbage collection paused while a jobs file is loaded and applied.

Loading 10,000 jobs allocates a few hundred thousand container objects (YAML nodes and
their marks, dicts, specs, records) that all stay alive until the step ends. Each
allocation burst triggers the cyclic collector, which then walks every object already
alive, again and again: measured, 80% of composing the YAML node tree and half of a
whole load was the collector finding nothing. None of these objects form cycles (they
are freed by reference counting), so pausing the collector for the step changes no
result and no memory; it runs again as usual afterwards.

The pause is process-wide (``gc.disable``), counted, so nested or concurrent steps
re-enable it only when the last one ends, and never if it was disabled before.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def paused_gc() -> Iterator[None]:
    """Run the block with the cyclic collector paused (see the module docstring)."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
