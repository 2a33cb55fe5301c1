"""Everything that talks to Redis: the connection layer and one class per Redis structure.

See the README's module table; ``keys`` builds every key, ``adapter`` holds the
contract (``AbstractDatabaseAdapter``), ``RedisAdapter``, ``StorageError`` and the one
translation of redis-py's exceptions.
"""

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
