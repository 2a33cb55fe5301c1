"""The request budget per egress identity (issue 14): each host spends its own
``max_requests_per_second`` by default (Yahoo limits per client address), and
``rate_limit_scope: shared`` keeps the one budget of every replica."""

from __future__ import annotations

import socket
from typing import Any

import redis

from stocksched.daemon import rate_limiter
from stocksched.settings import Settings
from stocksched.storage import keys
from stocksched.storage.adapter import RedisAdapter
from stocksched.storage.ratelimit import RedisRateLimiter


def _limiter(client: redis.Redis, **settings: Any) -> RedisRateLimiter:
    built = rate_limiter(Settings(max_requests_per_second=1, **settings), RedisAdapter(client))
    assert isinstance(built, RedisRateLimiter)
    return built


def test_by_default_each_host_has_its_own_budget(real_redis: redis.Redis) -> None:
    here = _limiter(real_redis)
    host_a = _limiter(real_redis, egress_id="host-a")
    host_b = _limiter(real_redis, egress_id="host-b")
    another_replica_of_a = _limiter(real_redis, egress_id="host-a")

    assert here.key == keys.ratelimit_key(f"yahoo:host:{socket.gethostname()}")
    assert host_a.acquire(timeout=0) and host_b.acquire(timeout=0)
    # Replicas on one host share its address, so they share its budget.
    assert not another_replica_of_a.acquire(timeout=0)


def test_the_shared_scope_is_one_budget_for_every_replica(real_redis: redis.Redis) -> None:
    a = _limiter(real_redis, rate_limit_scope="shared", egress_id="host-a")
    b = _limiter(real_redis, rate_limit_scope="shared", egress_id="host-b")

    assert a.key == b.key == keys.ratelimit_key("yahoo")  # the key it had before issue 14
    assert a.acquire(timeout=0)
    assert not b.acquire(timeout=0)
