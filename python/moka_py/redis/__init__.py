"""``moka_py.redis``: a local moka tier in every process in front of Redis.

Install with ``pip install "moka-py[redis]"`` (it needs redis-py).
"""

from ._async import AsyncTieredCache
from ._core import JSON, UNSAFE_PICKLE, Serializer, TierStats, encode_key
from ._sync import TieredCache

__all__ = [
    "JSON",
    "UNSAFE_PICKLE",
    "AsyncTieredCache",
    "Serializer",
    "TierStats",
    "TieredCache",
    "encode_key",
]
