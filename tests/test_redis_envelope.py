"""moka_py.redis's envelope without a server: what a signed and an unsigned
cache write to Redis and to the channel, and what each refuses (_envelope.py).
The same attacks against a real server are in test_redis_security.py."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moka_py.redis import _core
from moka_py.redis._envelope import (
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_KEYS,
    Envelope,
    Refused,
    check_signing_key,
)

KEY = b"k" * 32
OTHER = b"o" * 32
NS = "users"
CHANNEL = b"users:inv"
NAME = b"users:v:sk"


def signed(*keys: bytes, ns: str = NS) -> Envelope:
    return Envelope(ns, f"{ns}:inv".encode(), list(keys or (KEY,)))


def plain() -> Envelope:
    return Envelope(NS, CHANNEL, [])


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2**63))
def test_a_signed_payload_opens_to_what_was_packed(data: bytes, deadline: int) -> None:
    env = signed()
    assert env.open(NAME, env.pack(NAME, data, deadline)) == (data, deadline, ())
    assert plain().open(NAME, plain().pack(NAME, data, deadline)) == (data, deadline, ())


def test_every_byte_of_a_signed_payload_is_covered() -> None:
    env = signed()
    payload = env.pack(NAME, b"value", 12345)
    for i in range(len(payload)):
        forged = bytearray(payload)
        forged[i] ^= 0x01
        with pytest.raises(Refused):
            env.open(NAME, bytes(forged))
    with pytest.raises(Refused):
        env.open(NAME, payload + b"x")
    with pytest.raises(Refused, match="truncated"):
        env.open(NAME, payload[:44])


def test_a_payload_is_bound_to_its_key_namespace_and_signing_key() -> None:
    env = signed()
    payload = env.pack(NAME, b"value", 0)
    with pytest.raises(Refused, match="bad signature"):
        env.open(b"users:v:sother", payload)  # copied to another key
    with pytest.raises(Refused, match="bad signature"):
        signed(ns="orders").open(NAME, payload)  # same key, another namespace
    with pytest.raises(Refused, match="unknown key"):
        signed(OTHER).open(NAME, payload)


def test_the_deadline_cannot_be_extended() -> None:
    env = signed()
    payload = env.pack(NAME, b"value", _core.deadline_ms(1.0))
    forged = payload[:5] + struct.pack(">Q", 0) + payload[13:]
    with pytest.raises(Refused, match="bad signature"):
        env.open(NAME, forged)


def test_the_payload_cannot_choose_its_algorithm() -> None:
    """A forged payload that names another version (unsigned, or one from
    before signing) is refused by a signed cache whatever follows."""
    env = signed()
    with pytest.raises(Refused, match="unsigned"):
        env.open(NAME, plain().pack(NAME, b"value", 0))
    with pytest.raises(Refused, match="not a signed"):
        env.open(NAME, b"\x01" + bytes(8) + b"pickle")
    for version in range(256):
        if version != 2:
            with pytest.raises(Refused):
                env.open(NAME, bytes([version]) + bytes(60))


def test_the_mac_is_hmac_sha256_over_the_documented_fields() -> None:
    """The format in _envelope's docstring, recomputed independently."""
    payload = signed().pack(NAME, b"value", 7)
    kid = hmac.new(KEY, b"moka_py.redis key id", hashlib.sha256).digest()[:4]
    derived = hmac.new(KEY, b"moka_py.redis payload v2\x00" + NS.encode(), hashlib.sha256).digest()
    head = b"\x02" + kid + struct.pack(">Q", 7)
    mac = hmac.new(
        derived, head + struct.pack(">I", len(NAME)) + NAME + b"value", hashlib.sha256
    ).digest()
    assert payload == head + mac + b"value"


def test_rotation_first_key_signs_every_key_verifies() -> None:
    old, new = signed(OTHER), signed(KEY, OTHER)
    assert new.open(NAME, old.pack(NAME, b"v", 0)) == (b"v", 0, ())
    assert old.open(NAME, signed(OTHER, KEY).pack(NAME, b"v", 0)) == (b"v", 0, ())
    with pytest.raises(Refused, match="unknown key"):
        old.open(NAME, new.pack(NAME, b"v", 0))
    msg = signed(OTHER).messages(_core.CLEAR, bytes(8))[0]
    assert new.open_message(msg)[0] == _core.CLEAR


def test_an_unsigned_cache_refuses_signed_and_old_payloads() -> None:
    with pytest.raises(Refused, match="signed by a cache with a signing key"):
        plain().open(NAME, signed().pack(NAME, b"v", 0))
    with pytest.raises(Refused, match=r"not a moka_py\.redis payload"):
        plain().open(NAME, b"\x01" + bytes(8) + b"v")
    with pytest.raises(Refused, match="truncated"):
        plain().open(NAME, b"\x03\x00")


def test_messages_round_trip_and_are_signed_per_channel() -> None:
    origin = os.urandom(8)
    encs = [_core.encode_key(k) for k in ("a", 1, (1, "b"), b"\x00\xff")]
    for env in (signed(), plain()):
        (msg,) = env.messages(_core.INVALIDATE, origin, encs)
        assert env.open_message(msg) == (_core.INVALIDATE, origin, encs)
        (clear,) = env.messages(_core.CLEAR, origin)
        assert env.open_message(clear) == (_core.CLEAR, origin, [])
    (msg,) = signed().messages(_core.CLEAR, origin)
    with pytest.raises(Refused, match="bad signature"):
        signed(ns="orders").open_message(msg)
    for i in range(len(msg)):
        forged = bytearray(msg)
        forged[i] ^= 0x80
        with pytest.raises(Refused):
            signed().open_message(bytes(forged))


JUNK = [
    b"",
    b"c",
    b"\x03",
    b"\x03c",
    b"\x02" + bytes(40),
    b"\x03c" + bytes(8),
    hashlib.sha512(b"junk").digest(),
]


@pytest.mark.parametrize("junk", JUNK, ids=[f"junk{i}" for i in range(len(JUNK))])
def test_a_signed_cache_refuses_any_unsigned_message(junk: bytes) -> None:
    with pytest.raises(Refused):
        signed().open_message(junk)


def test_large_writes_are_split_into_bounded_messages() -> None:
    origin = bytes(8)
    encs = [_core.encode_key(i) for i in range(MAX_MESSAGE_KEYS * 2 + 5)]
    for env in (signed(), plain()):
        msgs = env.messages(_core.INVALIDATE, origin, encs)
        assert len(msgs) == 3
        got = [k for m in msgs for k in env.open_message(m)[2] or []]
        assert got == encs
    big = [_core.encode_key(b"x" * 60_000) + bytes([i]) for i in range(40)]
    msgs = signed().messages(_core.INVALIDATE, origin, big)
    assert len(msgs) == 3 and all(len(m) <= MAX_MESSAGE_BYTES + 100 for m in msgs)


def test_an_unsigned_message_over_the_bounds_is_one_clear_in_bounded_time() -> None:
    env = plain()
    origin = bytes(8)
    many = b"\x03i" + origin + b"".join(struct.pack(">I", 1) + b"s" for _ in range(5000))
    assert env.open_message(many) == (b"i", origin, None)
    lying = b"\x03i" + origin + struct.pack(">I", 2**31) + b"s"
    assert env.open_message(lying) == (b"i", origin, None)
    huge = b"\x03i" + origin + b"\x00" * (16 << 20)
    assert env.open_message(huge)[2] is None
    with pytest.raises(Refused, match="too large"):
        signed().open_message(huge)


def test_the_envelope_keeps_its_secrets() -> None:
    env = signed()
    assert "k" * 8 not in repr(env)
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(env)


def test_signing_keys_as_str_and_bytes() -> None:
    assert check_signing_key("é" * 16) == ["é".encode() * 16]
    assert check_signing_key((KEY, OTHER)) == [KEY, OTHER]
    assert check_signing_key(None) == []


def test_the_rust_mac_is_hmac_sha256_and_keeps_its_key() -> None:
    import pickle

    from moka_py._moka_py import _Mac

    for key in (b"", b"k" * 32, b"k" * 64, b"k" * 200):
        mac = _Mac(key)
        for parts in ((), (b"",), (b"a", b"bc"), (b"x" * 70_000, b"y")):
            want = hmac.new(key, b"".join(parts), hashlib.sha256).digest()
            assert mac.sign(*parts) == want
            assert mac.verify(want, *parts)
            assert not mac.verify(want[:-1] + bytes([want[-1] ^ 1]), *parts)
            assert not mac.verify(want[:31], *parts)
    assert repr(_Mac(b"secret" * 8)) == "<moka_py._moka_py._Mac>"
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(_Mac(b"k" * 32))
    with pytest.raises(TypeError, match="bytes"):
        _Mac(b"k" * 32).sign("text")  # type: ignore[arg-type]


TAGS = ((b"user:1", b"t" * 16), (b"org:\xc3\xa9", b"u" * 16))


def test_a_tagged_payload_opens_with_its_tags_and_every_byte_is_covered() -> None:
    env = signed()
    payload = env.pack(NAME, b"value", 12345, TAGS)
    assert payload[0] == 4
    assert env.open(NAME, payload) == (b"value", 12345, TAGS)
    assert env.tags_of(NAME, payload) == TAGS
    assert env.tags_of(b"users:v:sother", payload) == ()  # verified first
    for i in range(len(payload)):
        forged = bytearray(payload)
        forged[i] ^= 0x01
        with pytest.raises(Refused):
            env.open(NAME, bytes(forged))
    unsigned = plain().pack(NAME, b"value", 0, TAGS)
    assert unsigned[0] == 5
    assert plain().open(NAME, unsigned) == (b"value", 0, TAGS)
    with pytest.raises(Refused, match="unsigned"):
        env.open(NAME, unsigned)
    with pytest.raises(Refused, match="signed by a cache"):
        plain().open(NAME, payload)


def test_a_tagged_payload_cannot_lose_its_tags() -> None:
    """An attacker who copies a tagged payload cannot strip its tags (which
    would make it survive their invalidation): neither by dropping the block
    and naming version 2, nor by dropping one tag and fixing the count."""
    env = signed()
    payload = env.pack(NAME, b"value", 0, TAGS)
    head = 1 + 4 + 8
    block = 1 + sum(1 + len(t) + 16 for t, _ in TAGS)
    stripped = b"\x02" + payload[1:head] + payload[head + block :]
    with pytest.raises(Refused, match="bad signature"):
        env.open(NAME, stripped)
    one = bytes([1]) + bytes([len(TAGS[0][0])]) + TAGS[0][0] + TAGS[0][1]
    with pytest.raises(Refused, match="bad signature"):
        env.open(NAME, payload[:head] + one + payload[head + block :])


def test_a_tags_block_is_parsed_within_bounds() -> None:
    """A forged header claiming more tags than a write may have, or longer
    than the payload, is refused at once, before any MAC or key lookup."""
    env = signed()
    head = b"\x04" + bytes(4) + bytes(8)
    with pytest.raises(Refused, match="malformed tags"):
        env.open(NAME, head + bytes([255]) + bytes(10_000))
    with pytest.raises(Refused, match="malformed tags"):
        env.open(NAME, head + bytes([0]) + bytes(100))
    with pytest.raises(Refused, match="truncated"):
        env.open(NAME, head + bytes([32]) + bytes([255]) + bytes(100))
    with pytest.raises(Refused, match="truncated"):
        env.open(NAME, head)
    assert env.tags_of(NAME, head + bytes([255])) == ()
    assert env.tags_of(NAME, b"\x02" + bytes(60)) == ()
    assert env.tags_of(NAME, None) == ()


@given(st.binary(max_size=300))
def test_any_bytes_after_a_tagged_version_are_refused_or_opened(junk: bytes) -> None:
    for env in (signed(), plain()):
        for version in (4, 5):
            try:
                env.open(NAME, bytes([version]) + junk)
            except Refused:
                pass
            env.tags_of(NAME, bytes([version]) + junk)


def test_a_tag_that_is_not_utf8_is_refused_before_the_mac() -> None:
    pairs = ((b"\xff\xfe", b"t" * 16),)
    with pytest.raises(Refused, match="malformed tags"):
        plain().open(NAME, plain().pack(NAME, b"v", 0, pairs))
    with pytest.raises(Refused, match="malformed tags"):
        signed().open(NAME, signed().pack(NAME, b"v", 0, pairs))
