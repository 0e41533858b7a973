"""The decisions the sync and the async tiered caches share, with no I/O.

What a key encodes to, the Redis key and channel names, the stored payload
and the invalidation messages, the option checks, and the statistics. Both
shells (``_sync.py``, ``_async.py``) call these; none of it talks to Redis.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from redis.crc import key_slot

from ._envelope import MAX_KEY_BYTES, MAX_TAG_BYTES, MAX_TAGS, check_signing_key

__all__ = [
    "JSON",
    "UNSAFE_PICKLE",
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
    """pickle at its highest protocol: what the cache uses with a signing key
    when no ``serializer=`` is given, and, as ``UNSAFE_PICKLE``, the explicit
    opt-in to unsigned pickle."""

    __slots__ = ()

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> Any:
        return pickle.loads(data)

    def __repr__(self) -> str:
        return "moka_py.redis.UNSAFE_PICKLE" if self is UNSAFE_PICKLE else "<pickle serializer>"


class _Json:
    """JSON (``json.dumps``/``json.loads``, UTF-8): runs no code of the bytes
    it reads. Values are what JSON can hold: a tuple comes back as a list, a
    dict's keys as strings."""

    __slots__ = ()

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    @staticmethod
    def loads(data: bytes) -> Any:
        return json.loads(data)

    def __repr__(self) -> str:
        return "moka_py.redis.JSON"


PICKLE = _Pickle()
UNSAFE_PICKLE = _Pickle()
JSON = _Json()

# ---------------------------------------------------------------- keys

_KEY_TYPES = "str, bytes, int, float, bool, None, uuid.UUID or a tuple of them"


# Tuple keys nest at most this deep (deeper: ValueError), on encoding and on
# decoding what the channel carries.
MAX_KEY_DEPTH = 32


def encode_key(key: object) -> bytes:
    """The bytes that stand for ``key`` in Redis.

    Keys equal in Python encode alike (``1``, ``1.0`` and ``True``; ``("a", 2)``
    and ``("a", 2.0)``), and keys of different kinds never do (``"1"`` is not
    ``1``). Any other type raises ``TypeError``; a key whose encoding is over
    64 KiB, or a tuple nested over 32 deep, ``ValueError``.
    """
    t = type(key)
    if t is str:
        out = b"s" + str.encode(key, "utf-8", "surrogatepass")  # type: ignore[arg-type]
    elif t is int:
        return b"i%d" % key  # type: ignore[str-format]
    else:
        out = _encode_other(key, 0)
    if len(out) > MAX_KEY_BYTES:
        raise ValueError(
            f"a key of moka_py.redis is at most {MAX_KEY_BYTES} bytes encoded, not {len(out)}"
        )
    return out


def _encode_other(key: object, depth: int) -> bytes:
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
        if depth >= MAX_KEY_DEPTH:
            raise ValueError(f"a tuple key of moka_py.redis nests at most {MAX_KEY_DEPTH} deep")
        parts = [
            b"s" + str.encode(item, "utf-8", "surrogatepass")
            if type(item) is str
            else b"i%d" % item
            if type(item) is int
            else _encode_other(item, depth + 1)
            for item in key
        ]
        return b"t" + b"".join(b"%d:" % len(p) + p for p in parts)
    raise TypeError(f"a key of moka_py.redis must be {_KEY_TYPES}, not {type(key).__name__}")


def decode_key(data: bytes) -> object:
    """The plain key that :func:`encode_key` encoded to ``data``; ``ValueError``
    (or ``UnicodeDecodeError``) for bytes that no key encodes to. Linear in
    ``len(data)`` whatever the bytes (they may come from the channel)."""
    return _decode(data, 0, len(data), 0)


def _decode(data: bytes, start: int, end: int, depth: int) -> object:
    tag = data[start : start + 1]
    body = start + 1
    if tag == b"s":
        return data[body:end].decode("utf-8", "surrogatepass")
    if tag == b"i":
        return int(data[body:end])
    if tag == b"n":
        if body != end:
            raise ValueError("not an encoded key")
        return None
    if tag == b"f":
        return float(data[body:end])
    if tag == b"b":
        return data[body:end]
    if tag == b"u":
        return uuid.UUID(hex=data[body:end].decode())
    if tag == b"t":
        if depth >= MAX_KEY_DEPTH:
            raise ValueError("a tuple key nested too deep")
        items: list[object] = []
        i = body
        while i < end:
            colon = data.find(b":", i, min(end, i + 11))
            size = data[i:colon]
            if colon < 0 or not size.isdigit():
                raise ValueError("not an encoded tuple key")
            n = int(size)
            i = colon + 1
            if i + n > end:
                raise ValueError("not an encoded tuple key")
            items.append(_decode(data, i, i + n, depth + 1))
            i += n
        return tuple(items)
    raise ValueError("not an encoded key")


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
    ``<ns>:t:{<ns>:t}:<tag>`` the token of a tag (every tag of a namespace
    in one cluster slot, so that one command reads or writes several), and
    ``<ns>:inv`` is the channel of invalidations and load notices.
    """

    __slots__ = (
        "channel",
        "lock_prefix",
        "namespace",
        "pattern",
        "tag_prefix",
        "tags_refused",
        "value_prefix",
    )

    def __init__(self, namespace: str) -> None:
        ns = namespace.encode()
        self.namespace = namespace
        self.value_prefix = ns + b":v:"
        self.lock_prefix = ns + b":l:"
        self.tag_prefix = ns + b":t:{" + ns + b":t}:"
        self.channel = ns + b":inv"
        # SCAN's pattern for every key of the namespace (glob characters of the
        # namespace escaped).
        escaped = b"".join(b"\\" + bytes([c]) if c in b"*?[]\\" else bytes([c]) for c in ns)
        self.pattern = escaped + b":[vlt]:*"
        # A namespace whose own braces change the hash tag (an empty "{}")
        # would spread its tags over slots: such a cache refuses tags.
        self.tags_refused = key_slot(self.tag(b"a")) != key_slot(self.tag(b"b"))

    def value(self, enc: bytes) -> bytes:
        return self.value_prefix + enc

    def lock(self, enc: bytes) -> bytes:
        return self.lock_prefix + enc

    def tag(self, tag: bytes) -> bytes:
        return self.tag_prefix + tag

    def owns(self, redis_key: bytes) -> bool:
        """Whether a key SCAN returned belongs to this namespace."""
        return redis_key.startswith((self.value_prefix, self.lock_prefix, self.tag_prefix))


# ---------------------------------------------------------------- payloads
#
# The bytes themselves (payloads and messages, signed or not) are made and
# checked by ``_envelope``; here, what they say.

# The kinds of message (the first byte of a message's body):
#   b"i": keys invalidated
#   b"c": the namespace was cleared
#   b"f": a load stored the key (an invalidation that also wakes its waiters)
#   b"r": a load gave up its claim without storing (wakes the waiters)
#   b"t": tags invalidated (the items are the tags, UTF-8)
INVALIDATE, CLEAR, FILLED, RELEASED, TAGS = b"i", b"c", b"f", b"r", b"t"

# What a read's tag check puts in place of a tagged payload one of whose tags
# was invalidated since it was written: read as absent, but not as a missing
# key (a load stores over it) and not counted as refused. Compared by identity.
STALE = bytes(bytearray(b"stale"))


def check_tags(tags: object, limit: int | None = MAX_TAGS) -> tuple[str, ...]:
    """The tags of a write of a tiered cache, checked: an iterable of str
    (a lone str is refused: it would be one tag per character), at most
    ``limit`` distinct ones (None: any number, for an invalidation) of at
    most MAX_TAG_BYTES bytes in UTF-8 each."""
    if isinstance(tags, (str, bytes)):
        raise TypeError("tags must be an iterable of str (a list of one tag: [tag])")
    try:
        given: tuple[object, ...] = tuple(tags)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"tags must be an iterable of str, not {type(tags).__name__}") from None
    for tag in given:
        if type(tag) is not str:
            raise TypeError(f"each tag must be a str, not {type(tag).__name__}")
    items = cast("tuple[str, ...]", tuple(dict.fromkeys(given)))
    for tag in items:
        try:
            size = len(tag.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("a tag must be valid Unicode (no lone surrogate)") from None
        if size > MAX_TAG_BYTES:
            raise ValueError(f"a tag is at most {MAX_TAG_BYTES} bytes in UTF-8, not {size}")
    if limit is not None and len(items) > limit:
        raise ValueError(f"a write has at most {limit} tags, not {len(items)}")
    return items


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def deadline_ms(ttl: float | None) -> int:
    """The wall-clock deadline stored with a value (0: none). It lets a reader
    bound its local copy without a second round trip."""
    return 0 if ttl is None else now_ms() + max(1, int(ttl * 1000))


def seconds_left(deadline: int) -> float | None:
    return None if deadline == 0 else (deadline - now_ms()) / 1000.0


def new_origin() -> bytes:
    return os.urandom(8)


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
    if ":t:{" in namespace:
        raise ValueError(
            f"namespace {namespace!r} holds ':t:{{', which would make its keys look like "
            "another namespace's tags: choose another name"
        )
    return namespace


# The longest ttl, local_ttl, lock_timeout, timeout or wait_timeout: 100 years
# (what the local tier, Redis's PX and the payload's deadline all hold).
MAX_SECONDS = 100 * 365 * 86400.0


def check_seconds(value: object, name: str, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be positive and finite, not {value!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{name} must be at most {MAX_SECONDS:.0f} s (100 years), not {value!r}")
    return seconds


_NEEDS_KEY = (
    "the default serializer is pickle, and unpickling bytes that anyone who can write "
    "this Redis may have written runs their code: pass signing_key= (32 or more secret "
    "bytes, e.g. secrets.token_bytes(32), the same in every process), or "
    "serializer=moka_py.redis.JSON, or serializer=moka_py.redis.UNSAFE_PICKLE if only "
    "trusted code can write this Redis"
)


def check_serializer(serializer: object, signed: bool) -> Serializer:
    """The serializer to use; ``TypeError`` for pickle without a signing key
    (but ``UNSAFE_PICKLE``, the explicit opt-in) or an object that is not one."""
    # pickle itself, or its loads under another name (cloudpickle's, _pickle's).
    pickle_like = (
        serializer is None
        or serializer is pickle
        or getattr(serializer, "loads", None) is pickle.loads
    )
    if pickle_like and not signed:
        raise TypeError(_NEEDS_KEY)
    if serializer is None or serializer is pickle:
        return PICKLE
    if callable(getattr(serializer, "dumps", None)) and callable(
        getattr(serializer, "loads", None)
    ):
        return serializer  # type: ignore[return-value]
    raise TypeError(
        "serializer must have dumps(obj) -> bytes and loads(bytes) -> obj, "
        f"not {type(serializer).__name__}"
    )


@dataclass(frozen=True)
class Settings:
    """The checked options of a tiered cache (sync or asyncio)."""

    namespace: str
    capacity: int
    ttl: float | None
    local_ttl: float | None
    serializer: Serializer
    keys: list[bytes] = field(repr=False)
    lock_timeout: float
    timeout: float
    wait_timeout: float


def check_options(
    namespace: object,
    capacity: object,
    ttl: object,
    local_ttl: object,
    serializer: object,
    signing_key: object,
    lock_timeout: object,
    timeout: object,
    wait_timeout: object,
) -> Settings:
    ns = check_namespace(namespace)
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, not {capacity}")
    ttl_s = check_seconds(ttl, "ttl")
    local_s = check_seconds(local_ttl, "local_ttl")
    lock_s = check_seconds(lock_timeout, "lock_timeout", allow_none=False)
    timeout_s = check_seconds(timeout, "timeout", allow_none=False)
    wait_s = check_seconds(wait_timeout, "wait_timeout", allow_none=False)
    keys = check_signing_key(signing_key)
    ser = check_serializer(serializer, bool(keys))
    assert lock_s is not None and timeout_s is not None and wait_s is not None
    return Settings(
        namespace=ns,
        capacity=capacity,
        ttl=ttl_s,
        local_ttl=local_bound(local_s, ttl_s),
        serializer=ser,
        keys=keys,
        lock_timeout=lock_s,
        timeout=timeout_s,
        wait_timeout=wait_s,
    )


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
    """What a tiered cache recorded (``stats=True``): since the last
    ``reset_stats()``, or with ``stats(cumulative=True)`` since the cache was
    made (those figures only grow; exporters read them).

    ``local_hits``: reads answered by the local tier; ``remote_hits``: by Redis;
    ``misses``: reads (``get``, ``get_many``) answered by neither (a
    ``get_with`` that finds no value is counted by what it does instead: a
    load, a load failure or a wait); ``loads``/``load_failures``: initializer calls made
    by this process that returned / that raised (each call is one or the
    other); ``waits``: calls that waited for a load of another process (or
    thread) instead of loading, one per call however long it waited (it may
    still have loaded after the wait timed out); ``invalidations``:
    keys other processes invalidated here; ``feed_losses``: times the
    invalidation feed was lost (the local tier was then distrusted and
    dropped); ``redis_errors``: Redis calls that failed or timed out;
    ``stale_served``: reads answered from the local tier while Redis was
    unreachable (fail-safe), and with ``stale_if_error``, values returned past
    their expiry (a failed load, a read through an outage); ``rejected``:
    payloads and messages refused (not signed with a key of this cache, forged,
    copied from another key, over the bounds, or that the serializer could not
    read): each payload was a miss,
    each message was dropped.
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
    rejected: int = 0

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
    local ``Moka`` counts in Rust). Counting takes a lock; only slow paths count.
    The counts only grow: :meth:`reset` moves the baseline that a snapshot
    subtracts (unless it is cumulative)."""

    __slots__ = ("_baseline", "_counts", "_lock")

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
        "rejected",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(self._FIELDS, 0)
        self._baseline: dict[str, int] = dict.fromkeys(self._FIELDS, 0)

    def add(self, field: str, n: int = 1) -> None:
        with self._lock:
            self._counts[field] += n

    def new_lock(self) -> None:
        """A fresh lock (in a child after a fork)."""
        self._lock = threading.Lock()

    def snapshot(self, local_hits: int, cumulative: bool = False) -> TierStats:
        with self._lock:
            counts = dict(self._counts)
            base = self._baseline
        if not cumulative:
            counts = {f: n - base[f] for f, n in counts.items()}
        return TierStats(local_hits=local_hits, **counts)

    def reset(self) -> None:
        with self._lock:
            self._baseline = dict(self._counts)


class NoStats:
    """Counters that count nothing (``stats=False``)."""

    __slots__ = ()

    def add(self, field: str, n: int = 1) -> None:
        pass

    def new_lock(self) -> None:
        pass
