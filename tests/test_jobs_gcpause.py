"""paused_gc: the cyclic collector is paused for a load and restored as it was."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from stocksched.jobs.gcpause import paused_gc


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_nested_pauses_enable_the_collector_only_at_the_end() -> None:
    gc.enable()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer load is still going
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    with paused_gc():
        pass
    assert not gc.isenabled()


def test_the_collector_is_back_after_a_failed_load() -> None:
    gc.enable()
    with pytest.raises(ValueError), paused_gc():
        raise ValueError("bad file")
    assert gc.isenabled()
