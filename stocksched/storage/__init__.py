"""Storage layer: Redis keys, the original design's adapter contract, and the bar-record butler."""

from stocksched.storage.adapter import (
    AbstractDatabaseAdapter,
    RedisAdapter,
    StorageError,
    connect,
    is_embedded,
)
from stocksched.storage.butler import CorruptRecordError, DataIOButler

__all__ = [
    "AbstractDatabaseAdapter",
    "CorruptRecordError",
    "DataIOButler",
    "RedisAdapter",
    "StorageError",
    "connect",
    "is_embedded",
]
