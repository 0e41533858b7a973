"""moka_py: a fast, thread-safe, GIL-free in-memory cache built on the Rust moka crate."""

from moka_py._cached import CacheInfo, cached
from moka_py._method import cached_method
from moka_py._moka_py import VERSION, CacheStats, Moka

__all__ = ["VERSION", "CacheInfo", "CacheStats", "Moka", "cached", "cached_method"]
