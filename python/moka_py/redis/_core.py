"""The decisions the sync and the async tiered caches share, with no I/O.

What a key encodes to, the Redis key and channel names, the stored payload
and the invalidation messages, the option checks, and the statistics. Both
shells (``_sync.py``, ``_async.py``) call these; none of it talks to Redis.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "LoadStats",
    "Names",
    "Serializer",
    "TierStats",
    "check_options",
    "decode_key",
    "encode_key",
    "plain_key",
]


class Serializer(Protocol):
    """What ``serializer=`` takes: ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj``."""

    def dumps(self, obj: Any, /) -> bytes: ...
    def loads(self, data: bytes, /) -> Any: ...


class _Pickle:
    """The default serializer: pickle at its highest protocol."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> Any:
        return pickle.loads(data)


PICKLE = _Pickle()

# ---------------------------------------------------------------- keys

_KEY_TYPES = "str, bytes, int, float, bool, None, uuid.UUID or a tuple of them"


def encode_key(key: object) -> bytes:
    """The bytes that stand for ``key`` in Redis.

    Keys equal in Python encode alike (``1``, ``1.0`` and ``True``; ``("a", 2)``
    and ``("a", 2.0)``), and keys of different kinds never do (``"1"`` is not
    ``1``). Any other type raises ``TypeError``.
    """
    t = type(key)
    if t is str:
        return b"s" + str.encode(key, "utf-8", "surrogatepass")  # type: ignore[arg-type]
    if t is int:
        return b"i%d" % key  # type: ignore[str-format]
    return _encode_other(key)


def _encode_other(key: object) -> bytes:
    if key is None:
        return b"n"
    if isinstance(key, bool):
        return b"i1" if key else b"i0"
    if isinstance(key, int):
        return b"i%d" % int(key)
    if isinstance(key, str):
        return b"s" + str.__str__(key).encode("utf-8", "surrogatepass")
    if isinstance(key, float):
        if math.isnan(key):
            raise ValueError("a NaN key is not usable: it is not equal to itself")
        if key.is_integer():
            return b"i%d" % int(key)
        return b"f" + float.__repr__(key).encode()
    if isinstance(key, bytes):
        return b"b" + bytes(key)
    if isinstance(key, uuid.UUID):
        return b"u" + key.hex.encode()
    if isinstance(key, tuple):
        parts = [encode_key(item) for item in key]
        return b"t" + b"".join(b"%d:" % len(p) + p for p in parts)
    raise TypeError(f"a key of moka_py.redis must be {_KEY_TYPES}, not {type(key).__name__}")


def decode_key(data: bytes) -> object:
    """The plain key that :func:`encode_key` encoded to ``data``."""
    tag, body = data[:1], data[1:]
    if tag == b"s":
        return body.decode("utf-8", "surrogatepass")
    if tag == b"i":
        return int(body)
    if tag == b"n":
        return None
    if tag == b"f":
        return float(body)
    if tag == b"b":
        return bytes(body)
    if tag == b"u":
        return uuid.UUID(hex=body.decode())
    if tag == b"t":
        items: list[object] = []
        rest = body
        while rest:
            size, _, rest = rest.partition(b":")
            n = int(size)
            items.append(decode_key(rest[:n]))
            rest = rest[n:]
        return tuple(items)
    raise ValueError(f"not an encoded key: {data!r}")


def plain_key(key: object) -> object:
    """``key`` as exact built-in types (what the local tier stores): a
    ``str`` or ``int`` subclass (an enum member) becomes its value, a named
    tuple a tuple. Call after :func:`encode_key` accepted the key."""
    t = type(key)
    if t is str or t is int or t is float or t is bytes or key is None or t is bool:
        return key
    if isinstance(key, bool):
        return bool(key)
    if isinstance(key, int):
        return int(key)
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, float):
        return float(key)
    if isinstance(key, bytes):
        return bytes(key)
    if isinstance(key, uuid.UUID):
        return key if t is uuid.UUID else uuid.UUID(int=key.int)
    if isinstance(key, tuple):
        return tuple(plain_key(item) for item in key)
    return key


# ---------------------------------------------------------------- names


class Names:
    """The Redis names of a namespace: every one begins with the namespace.

    ``<ns>:v:<key>`` holds a value, ``<ns>:l:<key>`` the claim of a load,
    and ``<ns>:inv`` is the channel of invalidations and load notices.
    """

    __slots__ = ("channel", "lock_prefix", "namespace", "pattern", "value_prefix")

    def __init__(self, namespace: str) -> None:
        ns = namespace.encode()
        self.namespace = namespace
        self.value_prefix = ns + b":v:"
        self.lock_prefix = ns + b":l:"
        self.channel = ns + b":inv"
        # SCAN's pattern for every key of the namespace (glob characters of the
        # namespace escaped).
        escaped = b"".join(b"\\" + bytes([c]) if c in b"*?[]\\" else bytes([c]) for c in ns)
        self.pattern = escaped + b":[vl]:*"

    def value(self, enc: bytes) -> bytes:
        return self.value_prefix + enc

    def lock(self, enc: bytes) -> bytes:
        return self.lock_prefix + enc

    def owns(self, redis_key: bytes) -> bool:
        """Whether a key SCAN returned belongs to this namespace."""
        return redis_key.startswith((self.value_prefix, self.lock_prefix))


# ---------------------------------------------------------------- payloads

_HEADER = struct.Struct(">BQ")
_VERSION = 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def pack_value(data: bytes, ttl: float | None) -> bytes:
    """What is stored in Redis: a version byte, the wall-clock deadline in
    milliseconds (0: none), then the serialized value. The deadline lets a
    reader bound its local copy without a second round trip."""
    deadline = 0 if ttl is None else now_ms() + max(1, int(ttl * 1000))
    return _HEADER.pack(_VERSION, deadline) + data


def unpack_value(payload: bytes) -> tuple[bytes, float | None] | None:
    """The serialized value and the seconds it has left (None: no deadline),
    or None when the payload is not one of ours."""
    if len(payload) < _HEADER.size:
        return None
    version, deadline = _HEADER.unpack_from(payload)
    if version != _VERSION:
        return None
    left = None if deadline == 0 else (deadline - now_ms()) / 1000.0
    return payload[_HEADER.size :], left


def warn_undecodable(namespace: str, enc: bytes, err: BaseException | None) -> None:
    why = f": {type(err).__name__}: {err}" if err is not None else ""
    warnings.warn(
        f"moka_py.redis: the value of {enc!r} in namespace {namespace!r} cannot be "
        f"deserialized (written by another version?); treated as a miss{why}",
        RuntimeWarning,
        stacklevel=4,
    )


# ---------------------------------------------------------------- messages
#
# One message per write on the namespace's channel: a kind byte, the sender's
# 8-byte origin (a cache ignores its own), then the body.
#   b"i": keys invalidated (each as 4-byte length + encoded key)
#   b"c": the namespace was cleared
#   b"f": a load stored the key (an invalidation that also wakes its waiters)
#   b"r": a load gave up its claim without storing (wakes the waiters)

INVALIDATE, CLEAR, FILLED, RELEASED = b"i", b"c", b"f", b"r"
_LEN = struct.Struct(">I")


def new_origin() -> bytes:
    return os.urandom(8)


def message(kind: bytes, origin: bytes, keys: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    return kind + origin + b"".join(_LEN.pack(len(k)) + k for k in keys)


def parse_message(data: bytes) -> tuple[bytes, bytes, list[bytes]] | None:
    """``(kind, origin, encoded keys)``, or None for a message of no known form."""
    if len(data) < 9:
        return None
    kind, origin, body = data[:1], data[1:9], data[9:]
    keys: list[bytes] = []
    i = 0
    while i < len(body):
        if i + 4 > len(body):
            return None
        (n,) = _LEN.unpack_from(body, i)
        if i + 4 + n > len(body):
            return None
        keys.append(bytes(body[i + 4 : i + 4 + n]))
        i += 4 + n
    return kind, origin, keys


# ---------------------------------------------------------------- options


def check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a non-empty str, not {type(namespace).__name__}")
    if not namespace:
        raise ValueError("namespace must be a non-empty str")
    if any(part in ("v", "l") for part in namespace.split(":")):
        raise ValueError(
            f"namespace {namespace!r} has a ':'-separated part 'v' or 'l', which would "
            "make its keys look like another namespace's: choose another name"
        )
    return namespace


def check_seconds(value: object, name: str, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be positive and finite, not {value!r}")
    return seconds


def check_options(
    namespace: object,
    capacity: object,
    ttl: object,
    local_ttl: object,
    serializer: object,
    lock_timeout: object,
    timeout: object,
) -> tuple[str, int, float | None, float | None, Serializer, float, float]:
    ns = check_namespace(namespace)
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, not {capacity}")
    ttl_s = check_seconds(ttl, "ttl")
    local_s = check_seconds(local_ttl, "local_ttl")
    lock_s = check_seconds(lock_timeout, "lock_timeout", allow_none=False)
    timeout_s = check_seconds(timeout, "timeout", allow_none=False)
    if serializer is None:
        ser: Serializer = PICKLE
    elif callable(getattr(serializer, "dumps", None)) and callable(
        getattr(serializer, "loads", None)
    ):
        ser = serializer  # type: ignore[assignment]
    else:
        raise TypeError(
            "serializer must have dumps(obj) -> bytes and loads(bytes) -> obj, "
            f"not {type(serializer).__name__}"
        )
    assert lock_s is not None and timeout_s is not None
    return ns, capacity, ttl_s, local_s, ser, lock_s, timeout_s


def local_bound(local_ttl: float | None, left: float | None) -> float | None:
    """How long a local copy may live: the shorter of ``local_ttl`` and what
    the entry has left in Redis (None: no bound)."""
    if local_ttl is None:
        return left
    if left is None:
        return local_ttl
    return min(local_ttl, left)


# ---------------------------------------------------------------- statistics


@dataclass(frozen=True)
class TierStats:
    """What a tiered cache recorded (``stats=True``).

    ``local_hits``: reads answered by the local tier; ``remote_hits``: by Redis;
    ``misses``: by neither; ``loads``/``load_failures``: initializer calls made
    by this process and how many raised; ``waits``: loads of another process
    (or thread) that a call waited for instead of loading; ``invalidations``:
    keys other processes invalidated here; ``feed_losses``: times the
    invalidation feed was lost (the local tier was then distrusted and
    dropped); ``redis_errors``: Redis calls that failed or timed out;
    ``stale_served``: reads answered from the local tier while Redis was
    unreachable (fail-safe).
    """

    local_hits: int = 0
    remote_hits: int = 0
    misses: int = 0
    loads: int = 0
    load_failures: int = 0
    waits: int = 0
    invalidations: int = 0
    feed_losses: int = 0
    redis_errors: int = 0
    stale_served: int = 0

    @property
    def hits(self) -> int:
        return self.local_hits + self.remote_hits

    @property
    def requests(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0


class LoadStats:
    """The counters behind :class:`TierStats` (but ``local_hits``, which the
    local ``Moka`` counts in Rust). Counting takes a lock; only slow paths count."""

    __slots__ = ("_counts", "_lock")

    _FIELDS = (
        "remote_hits",
        "misses",
        "loads",
        "load_failures",
        "waits",
        "invalidations",
        "feed_losses",
        "redis_errors",
        "stale_served",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(self._FIELDS, 0)

    def add(self, field: str, n: int = 1) -> None:
        with self._lock:
            self._counts[field] += n

    def snapshot(self, local_hits: int) -> TierStats:
        with self._lock:
            return TierStats(local_hits=local_hits, **self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self._FIELDS, 0)


class NoStats:
    """Counters that count nothing (``stats=False``)."""

    __slots__ = ()

    def add(self, field: str, n: int = 1) -> None:
        pass
