"""Outbox: writes kept while Redis is away are written later, in order, exactly once."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from stocksched.outbox import Outbox, StorageHealth
from stocksched.storage.adapter import StorageError
from tests.fakes import FakeClock


def test_concurrent_flushes_write_each_pending_entry_once_in_order() -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    outbox = Outbox(StorageHealth(clock), clock)
    written: list[int] = []
    redis_down = True

    def write(i: int) -> None:
        if redis_down:
            raise StorageError("SET", "k", "Connection refused")
        time.sleep(0.01)  # a real round trip: lets flushers overlap
        written.append(i)

    for i in range(6):
        assert not outbox.run(f"write {i}", lambda i=i: write(i))  # type: ignore[misc]
    assert len(outbox) == 6 and written == []
    redis_down = False
    clock.advance(60)  # past the backoff
    flushers = [threading.Thread(target=outbox.flush) for _ in range(4)]
    for t in flushers:
        t.start()
    for t in flushers:
        t.join()
    outbox.flush()  # whatever a losing flusher left is drained by the next call
    assert written == list(range(6))
    assert len(outbox) == 0


def test_outage_is_reported_once_and_recovery_once() -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    recovered: list[bool] = []
    health = StorageHealth(clock, on_recovered=lambda: recovered.append(True))
    outbox = Outbox(health, clock)
    fail = [True]

    def write() -> None:
        if fail[0]:
            raise StorageError("XADD", "k", "Connection refused")

    for _ in range(3):
        outbox.run("x", write)
        clock.advance(60)
        outbox.flush()
    assert recovered == []
    fail[0] = False
    clock.advance(60)
    assert outbox.flush() == 3
    assert recovered == [True]


def test_a_batch_keeps_only_the_writes_that_failed_and_retries_each_on_its_own() -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    outbox = Outbox(StorageHealth(clock), clock)
    written: list[int] = []
    refused = StorageError("EVALSHA", "k", "OOM command not allowed")

    def together() -> list[StorageError | None]:
        written.extend([0, 2])  # one round trip: the first and the last were taken
        return [None, refused, None]

    writes = [lambda i=i: written.append(i) for i in range(3)]
    assert outbox.run_many("record run", writes, together) == 2
    assert len(outbox) == 1
    clock.advance(60)
    assert outbox.flush() == 1
    assert written == [0, 2, 1]


def test_a_batch_goes_behind_writes_already_kept_in_order() -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    outbox = Outbox(StorageHealth(clock), clock)
    written: list[str] = []
    down = [True]

    def first() -> None:
        if down[0]:
            raise StorageError("SET", "k", "Connection refused")
        written.append("first")

    def together() -> list[StorageError | None]:
        raise AssertionError("a batch must not overtake a kept write")

    outbox.run("first", first)
    down[0] = False
    clock.advance(60)
    outbox.run_many("batch", [lambda: written.append("a"), lambda: written.append("b")], together)
    assert written == ["first", "a", "b"]
    assert len(outbox) == 0


def test_a_failed_round_trip_keeps_the_whole_batch() -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    health = StorageHealth(clock)
    outbox = Outbox(health, clock)
    written: list[int] = []

    def together() -> list[StorageError | None]:
        raise StorageError("EVALSHA", "k", "Connection refused")

    writes = [lambda i=i: written.append(i) for i in range(3)]
    assert outbox.run_many("record run", writes, together) == 0
    assert len(outbox) == 3 and not health.state().up
    clock.advance(60)
    assert outbox.flush() == 3
    assert written == [0, 1, 2] and health.state().up
