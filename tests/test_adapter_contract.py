"""The store contract (``AbstractDatabaseAdapter``), one suite run on every store.

As huey's storage tests do: ``AdapterContract`` holds the tests, and each store the
daemon can run on gets a subclass that says how to make one -- the embedded in-process
store (``memory://``) and a real redis-server, both through ``connect``, the way the
daemon makes them. A new store (a series database, Redis Cluster) passes by adding a
subclass.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis

from stocksched.storage import AbstractDatabaseAdapter, RedisAdapter, StorageError, connect


class AdapterContract:
    """What every store does; subclasses provide ``client`` (the store's own client)."""

    @pytest.fixture
    def store(self, client: redis.Redis) -> AbstractDatabaseAdapter:
        return RedisAdapter(client)

    def test_save_then_get_returns_the_value(self, store: AbstractDatabaseAdapter) -> None:
        store.save_data("k", '[{"Date": "2025-09-22"}] ü €')
        assert store.get_data("k") == '[{"Date": "2025-09-22"}] ü €'

    def test_missing_key_reads_as_none(self, store: AbstractDatabaseAdapter) -> None:
        assert store.get_data("absent") is None
        assert store.exists("absent") is False

    def test_exists_and_delete(self, store: AbstractDatabaseAdapter) -> None:
        store.save_data("k", "v")
        assert store.exists("k") is True
        assert store.delete_data("k") is True
        assert store.exists("k") is False
        assert store.delete_data("k") is False

    def test_save_overwrites_value(self, store: AbstractDatabaseAdapter) -> None:
        store.save_data("k", "old")
        store.save_data("k", "new")
        assert store.get_data("k") == "new"

    def test_ttl_sets_an_expiry_and_a_later_save_without_ttl_clears_it(
        self, store: AbstractDatabaseAdapter, client: redis.Redis
    ) -> None:
        store.save_data("k", "v", ttl=timedelta(hours=1))
        assert 0 < client.pttl("k") <= 3_600_000
        store.save_data("k", "v2")
        assert client.pttl("k") == -1  # persistent again

    def test_a_key_with_a_ttl_expires(self, store: AbstractDatabaseAdapter) -> None:
        store.save_data("k", "v", ttl=timedelta(milliseconds=50))
        deadline = time.monotonic() + 3
        while store.exists("k") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.get_data("k") is None

    @pytest.mark.parametrize(
        "ttl", [timedelta(0), timedelta(seconds=-5), timedelta(microseconds=10)]
    )
    def test_ttl_that_would_expire_at_once_is_refused(
        self, store: AbstractDatabaseAdapter, ttl: timedelta
    ) -> None:
        with pytest.raises(ValueError, match="ttl"):
            store.save_data("k", "v", ttl=ttl)
        assert store.exists("k") is False

    def test_redis_refusal_is_a_storage_error_naming_op_and_key(
        self, store: AbstractDatabaseAdapter, client: redis.Redis
    ) -> None:
        client.rpush("a-list", "x")
        with pytest.raises(StorageError) as info:
            store.get_data("a-list")
        assert info.value.operation == "GET"
        assert info.value.key == "a-list"
        assert "GET" in str(info.value) and "a-list" in str(info.value)
        assert "WRONGTYPE" in str(info.value)
        assert "\n" not in str(info.value)
        assert isinstance(info.value.__cause__, redis.ResponseError)

    def test_ping(self, store: AbstractDatabaseAdapter) -> None:
        assert store.ping() is True

    def test_memory_is_none_or_a_policy(self, store: AbstractDatabaseAdapter) -> None:
        mem = store.memory()
        assert mem is None or (mem.policy and mem.used >= 0 and mem.limit >= 0)

    def test_client_is_the_one_given(self, client: redis.Redis) -> None:
        assert RedisAdapter(client).client is client


class TestEmbeddedStore(AdapterContract):
    @pytest.fixture
    def client(self) -> redis.Redis:
        return connect("memory://")

    def test_memory_is_none(self, store: AbstractDatabaseAdapter) -> None:
        assert store.memory() is None  # nothing to evict: it lives and dies with the process


@pytest.mark.redis
class TestRedisServer(AdapterContract):
    @pytest.fixture
    def client(self, redis_server: Any, real_redis: redis.Redis) -> Iterator[redis.Redis]:
        client = connect(redis_server.url)  # real_redis: a clean database, server running
        yield client
        client.close()

    def test_memory_reads_the_servers_policy(self, store: AbstractDatabaseAdapter) -> None:
        mem = store.memory()
        assert mem is not None and mem.policy == "noeviction" and not mem.evicts

    def test_ping_is_false_when_the_server_is_gone(
        self, store: AbstractDatabaseAdapter, redis_server: Any
    ) -> None:
        redis_server.stop()  # the real_redis fixture restarts it for the next test
        assert store.ping() is False
