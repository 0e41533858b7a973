"""moka_py.redis without a server: key encoding, names, payloads, messages and
option checks (the decisions the sync and async caches share, _core.py)."""

from __future__ import annotations

import enum
import math
import pickle
import uuid
from collections import namedtuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moka_py.redis import _core
from moka_py.redis._core import decode_key, encode_key, plain_key

scalars = st.one_of(
    st.text(),
    st.binary(),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.uuids(),
)
keys = st.recursive(scalars, lambda inner: st.tuples(inner) | st.tuples(inner, inner), max_leaves=6)


@given(keys)
def test_decode_inverts_encode_up_to_equality(key: object) -> None:
    decoded = decode_key(encode_key(key))
    assert decoded == key
    assert encode_key(decoded) == encode_key(key)


@given(keys, keys)
def test_keys_encode_alike_exactly_when_python_says_equal(a: object, b: object) -> None:
    # Equal keys are one entry in every process; unequal ones never share one.
    assert (encode_key(a) == encode_key(b)) == (a == b and hash(a) == hash(b))


def test_equal_numbers_are_one_key_and_strings_are_not_numbers() -> None:
    assert encode_key(1) == encode_key(1.0) == encode_key(True)
    assert encode_key(0) == encode_key(-0.0) == encode_key(False)
    assert encode_key(("a", 2)) == encode_key(("a", 2.0))
    assert encode_key("1") != encode_key(1)
    assert encode_key(b"a") != encode_key("a")
    assert encode_key(()) != encode_key(None) != encode_key(b"")
    assert encode_key(1.5) != encode_key(1)
    assert encode_key(2**100) == encode_key(float(2**100))


def test_subclasses_encode_as_their_value() -> None:
    class Color(enum.IntEnum):
        RED = 1

    class Name(str, enum.Enum):
        ADA = "ada"

    Point = namedtuple("Point", "x y")
    assert encode_key(Color.RED) == encode_key(1)
    assert encode_key(Name.ADA) == encode_key("ada")
    assert encode_key(Point(1, "a")) == encode_key((1, "a"))
    assert type(plain_key(Color.RED)) is int
    assert type(plain_key(Name.ADA)) is str
    assert type(plain_key(Point(1, 2))) is tuple


@pytest.mark.parametrize("bad", [[1], {"a": 1}, {1}, object(), 1j, bytearray(b"x"), ("ok", [1])])
def test_other_keys_raise_type_error_naming_the_type(bad: object) -> None:
    inner = bad[1] if isinstance(bad, tuple) else bad
    with pytest.raises(TypeError, match=type(inner).__name__):
        encode_key(bad)


def test_nan_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        encode_key(math.nan)


def test_uuid_keys() -> None:
    u = uuid.uuid4()
    assert decode_key(encode_key(u)) == u
    assert encode_key(u) != encode_key(u.hex)


def test_names_begin_with_the_namespace_and_escape_glob_characters() -> None:
    names = _core.Names("app*[x]")
    enc = encode_key("k")
    for name in (names.value(enc), names.lock(enc), names.tag(b"t"), names.channel):
        assert name.startswith(b"app*[x]")
    assert names.pattern == b"app\\*\\[x\\]:[vlt]:*"
    assert names.owns(names.value(enc)) and names.owns(names.lock(enc))
    assert names.owns(names.tag(b"t"))


def test_every_tag_of_a_namespace_is_in_one_cluster_slot() -> None:
    from redis.crc import key_slot

    for ns in ("users", "a{b}", "a{b", "x}y{", "{}"):
        names = _core.Names(ns)
        slots = {key_slot(names.tag(t)) for t in (b"a", b"b", b"user:1", b"{x}")}
        assert (len(slots) == 1) == (not names.tags_refused)
    assert _core.Names("{}").tags_refused and not _core.Names("a{b}").tags_refused
    assert not names.owns(b"app*[x]2:v:sk")


def test_namespaces_cannot_look_like_each_other() -> None:
    # "users:v:..." is the value space of "users": no namespace may contain
    # a ':'-separated part "v" or "l".
    for bad in ("users:v", "v", "a:l:b", "users:t:{users:t}:x"):
        with pytest.raises(ValueError, match="namespace"):
            _core.check_namespace(bad)
    assert _core.check_namespace("app:users") == "app:users"
    assert _core.check_namespace("app:t") == "app:t"
    for bad_type in (None, b"users", 1):
        with pytest.raises(TypeError, match="namespace"):
            _core.check_namespace(bad_type)
    with pytest.raises(ValueError, match="namespace"):
        _core.check_namespace("")


def test_deadlines() -> None:
    assert _core.deadline_ms(None) == 0
    left = _core.seconds_left(_core.deadline_ms(10.0))
    assert left is not None and 9.0 < left <= 10.0
    assert _core.seconds_left(0) is None


def test_keys_nest_at_most_32_deep_and_are_at_most_64_kib() -> None:
    key: object = "x"
    for _ in range(_core.MAX_KEY_DEPTH):
        key = (key,)
    assert decode_key(encode_key(key)) == key
    with pytest.raises(ValueError, match="nests at most 32"):
        encode_key((key,))
    # What the channel carries is decoded with the same bound (no RecursionError).
    deep = b"s"
    for _ in range(1200):
        deep = b"t%d:" % len(deep) + deep
    with pytest.raises(ValueError):
        decode_key(deep)
    assert len(encode_key(b"x" * (64 * 1024 - 1))) == 64 * 1024
    with pytest.raises(ValueError, match="at most 65536 bytes"):
        encode_key(b"x" * (64 * 1024))
    with pytest.raises(ValueError, match="at most 65536 bytes"):
        encode_key("x" * (64 * 1024))


@pytest.mark.parametrize("junk", [b"t5:ab", b"tx:", b"t99999999999:a", b"q", b"", b"u12"])
def test_decoding_junk_raises_value_error(junk: bytes) -> None:
    with pytest.raises(ValueError):
        decode_key(junk)


def test_json_runs_no_code_and_round_trips() -> None:
    from moka_py.redis import JSON

    assert JSON.loads(JSON.dumps({"a": [1, "é", None]})) == {"a": [1, "é", None]}
    assert repr(JSON) == "moka_py.redis.JSON"


class PickleAlias:
    dumps = staticmethod(pickle.dumps)
    loads = staticmethod(pickle.loads)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"capacity": -1}, ValueError, "capacity"),
        ({"capacity": 1.5}, TypeError, "capacity"),
        ({"ttl": -1}, ValueError, "ttl"),
        ({"ttl": "1"}, TypeError, "ttl"),
        ({"local_ttl": 0}, ValueError, "local_ttl"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": None}, TypeError, "timeout"),
        ({"lock_timeout": math.inf}, ValueError, "lock_timeout"),
        ({"wait_timeout": 0}, ValueError, "wait_timeout"),
        ({"wait_timeout": None}, TypeError, "wait_timeout"),
        ({"serializer": object()}, TypeError, "serializer"),
        # What the local tier cannot hold is refused before anything is written.
        ({"local_ttl": 1e20}, ValueError, "local_ttl must be at most"),
        ({"ttl": 4e9}, ValueError, "ttl must be at most"),
        # pickle needs a signing key; the message says what to pass.
        ({"signing_key": None}, TypeError, "signing_key=.*JSON.*UNSAFE_PICKLE"),
        ({"signing_key": None, "serializer": pickle}, TypeError, "signing_key="),
        # pickle's loads under another name (as cloudpickle and _pickle have it).
        ({"signing_key": None, "serializer": PickleAlias}, TypeError, "signing_key="),
        ({"signing_key": "\udc80" * 40}, ValueError, "not valid Unicode"),
        ({"signing_key": b"short"}, ValueError, "at least 32 bytes, not 5"),
        ({"signing_key": "x" * 31}, ValueError, "at least 32 bytes, not 31"),
        ({"signing_key": [b"k" * 32, b"short"]}, ValueError, r"signing_key\[1\] must be at least"),
        ({"signing_key": []}, ValueError, "empty"),
        ({"signing_key": [b"k" * 32, b"k" * 32]}, ValueError, "repeats"),
        ({"signing_key": 12345}, TypeError, "signing_key must be"),
        ({"signing_key": [b"k" * 32, 1]}, TypeError, r"signing_key\[1\] must be a str or bytes"),
    ],
)
def test_bad_options(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    options: dict[str, object] = {
        "namespace": "ns",
        "capacity": 10,
        "ttl": 1.0,
        "local_ttl": None,
        "serializer": None,
        "signing_key": b"k" * 32,
        "lock_timeout": 1.0,
        "timeout": 1.0,
        "wait_timeout": 1.0,
    }
    options.update(kwargs)
    with pytest.raises(error, match=match):
        _core.check_options(**options)  # type: ignore[arg-type]


def test_no_secret_in_an_error_message() -> None:
    secret = "a secret of forty characters, not shown"
    with pytest.raises(ValueError) as info:
        _core.check_signing_key([secret, secret])
    assert secret not in str(info.value)
    with pytest.raises(ValueError) as info:
        _core.check_signing_key(secret[:20])
    assert secret[:20] not in str(info.value)


def test_unsafe_pickle_and_json_need_no_key() -> None:
    from moka_py.redis import JSON, UNSAFE_PICKLE

    for ser in (JSON, UNSAFE_PICKLE):
        opts = _core.check_options("ns", 1, 1.0, None, ser, None, 1.0, 1.0, 1.0)
        assert opts.serializer is ser and opts.keys == []
    opts = _core.check_options("ns", 1, 1.0, None, None, "k" * 32, 1.0, 1.0, 1.0)
    assert opts.keys == [b"k" * 32] and "k" * 32 not in repr(opts)


def test_local_bound_is_the_shorter() -> None:
    assert _core.local_bound(None, None) is None
    assert _core.local_bound(5.0, None) == 5.0
    assert _core.local_bound(None, 3.0) == 3.0
    assert _core.local_bound(5.0, 3.0) == 3.0
