"""The envelope: the bytes a tiered cache writes to Redis and to its channel,
and how each is signed and checked. Every reader and writer goes through here,
so this is the one place to review.

Nothing read from Redis or from the channel is trusted: anyone who can reach
the server may have written it. A read is parsed with bounds first (length,
count, depth), then its MAC is checked, and only then is anything
deserialized. A refusal is a plain miss (a dropped message), never an
exception: the caller counts it.

Payload (the value of ``<ns>:v:<key>``), version 2, signed::

    0x02 | key id (4) | deadline ms (8, big-endian; 0: none) | MAC (32) | data

    MAC = HMAC-SHA256(payload key, 0x02 | key id | deadline
                      | len(Redis key) (4) | Redis key | data)

Payload, version 3, unsigned (a cache without a signing key)::

    0x03 | deadline ms (8) | data

A value written with tags is a payload of version 4 (signed) or 5
(unsigned): the same, with the tags and the token each had in Redis when the
write began between the deadline and the MAC, inside what the MAC covers::

    0x04 | key id (4) | deadline (8) | tags | MAC (32) | data
    0x05 | deadline (8) | tags | data
    tags = count (1) | (length (1) | tag (UTF-8) | token (16)) * count

A reader checks the tokens against Redis before it takes the value (the
shells' ``_checked``): a tag invalidated since the write has a new token.

Message (on ``<ns>:inv``), version 2, signed::

    0x02 | key id (4) | MAC (32) | body
    MAC = HMAC-SHA256(message key, 0x02 | key id | len(channel) (4) | channel | body)

Message, version 3, unsigned: ``0x03 | body``. The body is a kind byte, the
sender's 8-byte origin, then each key as a 4-byte length and its encoding.

The version fixes the algorithm: a payload never names its own. A cache with a
signing key accepts versions 2 and 4 only; a cache without one, 3 and 5 only (so
values written before version 2, and values of a fleet configured otherwise,
are refused alike). The payload and message keys are derived from each signing
key per namespace (HMAC-SHA256 of the key over a label and the namespace); the
key id is the first 4 bytes of an HMAC of the signing key, so it tells which
of the rotation keys signed without revealing anything of it.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterable, Sequence
from typing import TypeGuard

from .._moka_py import _Mac

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_MESSAGE_KEYS",
    "MAX_TAGS",
    "MAX_TAG_BYTES",
    "TAG_TOKEN_BYTES",
    "Envelope",
    "Refused",
    "check_signing_key",
    "tagged",
]

SIGNED, PLAIN, SIGNED_TAGGED, PLAIN_TAGGED = 2, 3, 4, 5
_SIGNED_BYTE, _PLAIN_BYTE = bytes([SIGNED]), bytes([PLAIN])
_SIGNED_TAGGED_BYTE, _PLAIN_TAGGED_BYTE = bytes([SIGNED_TAGGED]), bytes([PLAIN_TAGGED])
_TAGGED = frozenset((_SIGNED_TAGGED_BYTE, _PLAIN_TAGGED_BYTE))
_MAC_SIZE = 32
_KID_SIZE = 4
_DEADLINE = struct.Struct(">Q")
_LEN = struct.Struct(">I")
_PLAIN_HEAD = 1 + _DEADLINE.size  # 9
_MSG_SIGNED_HEAD = 1 + _KID_SIZE + _MAC_SIZE  # 37
_BODY_HEAD = 9  # kind + origin

# The shortest signing key (bytes): as long as the HMAC-SHA256 output.
MIN_KEY_BYTES = 32
# The longest encoded key a cache accepts (longer: ValueError at the call).
MAX_KEY_BYTES = 64 * 1024
# A message names at most this many keys and holds at most this many bytes of
# keys; a writer splits a larger write's keys over several messages. A
# received message over either bound is refused (signed) or taken as a CLEAR
# (unsigned: it cannot be a cache's, and dropping everything is always safe).
MAX_MESSAGE_KEYS = 1024
MAX_MESSAGE_BYTES = 1024 * 1024
_MAX_RECEIVED = _MSG_SIGNED_HEAD + _BODY_HEAD + MAX_MESSAGE_BYTES + MAX_KEY_BYTES + 4

# A write names at most MAX_TAGS tags of at most MAX_TAG_BYTES bytes each
# (UTF-8); each tag's token in Redis is TAG_TOKEN_BYTES random bytes.
MAX_TAGS = 32
MAX_TAG_BYTES = 255
TAG_TOKEN_BYTES = 16

# (tag, token) pairs of a tagged payload.
TagTokens = tuple[tuple[bytes, bytes], ...]

_KID_LABEL = b"moka_py.redis key id"
_PAYLOAD_LABEL = b"moka_py.redis payload v2\x00"
_MESSAGE_LABEL = b"moka_py.redis message v2\x00"


class Refused(Exception):
    """A payload or message that is not accepted; ``reason`` says why in
    words that carry none of its bytes."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_signing_key(signing_key: object) -> list[bytes]:
    """The signing keys as bytes, the signing one first ([] for None).
    ``TypeError`` for a wrong type, ``ValueError`` for a key shorter than 32
    bytes or a repeated key; neither message contains any key's bytes."""
    if signing_key is None:
        return []
    items: Sequence[object]
    if isinstance(signing_key, (str, bytes)):
        items = [signing_key]
    elif isinstance(signing_key, (list, tuple)):
        items = signing_key
        if not items:
            raise ValueError("signing_key must not be an empty sequence")
    else:
        raise TypeError(
            "signing_key must be a str or bytes of at least 32 bytes, or a list or tuple "
            f"of them (the first signs), not {type(signing_key).__name__}"
        )
    keys: list[bytes] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            try:
                key = item.encode("utf-8")
            except UnicodeEncodeError:
                # (The error would carry the key: raised without it.)
                raise ValueError(
                    f"signing_key{'' if len(items) == 1 else f'[{i}]'} is a str that is not "
                    "valid Unicode (a lone surrogate): pass bytes"
                ) from None
        elif isinstance(item, bytes):
            key = bytes(item)
        else:
            raise TypeError(f"signing_key[{i}] must be a str or bytes, not {type(item).__name__}")
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(
                f"signing_key{'' if len(items) == 1 else f'[{i}]'} must be at least "
                f"{MIN_KEY_BYTES} bytes, not {len(key)} (use secrets.token_bytes(32))"
            )
        if key in keys:
            raise ValueError(f"signing_key[{i}] repeats an earlier key")
        keys.append(key)
    return keys


def tagged(payload: object) -> TypeGuard[bytes]:
    """Whether a value read from Redis names itself a tagged payload (its
    first byte only: nothing is verified)."""
    return type(payload) is bytes and payload[:1] in _TAGGED


def pack_tags(pairs: TagTokens) -> bytes:
    """The tags block of a tagged payload (the pairs are checked by the
    caller: at most MAX_TAGS, each tag at most MAX_TAG_BYTES)."""
    out = [bytes([len(pairs)])]
    for tag, token in pairs:
        out.append(bytes([len(tag)]) + tag + token)
    return b"".join(out)


def parse_tags(payload: bytes, at: int) -> tuple[TagTokens, int]:
    """The tags block of a tagged payload from offset ``at``: the pairs and
    the offset after it. :class:`Refused` when it is out of bounds or names
    a tag that is not UTF-8 (no cache writes one)."""
    end = len(payload)
    if at >= end:
        raise Refused("truncated")
    count = payload[at]
    if count == 0 or count > MAX_TAGS:
        raise Refused("malformed tags")
    at += 1
    pairs = []
    for _ in range(count):
        if at >= end:
            raise Refused("truncated")
        n = payload[at]
        stop = at + 1 + n + TAG_TOKEN_BYTES
        if stop > end:
            raise Refused("truncated")
        tag = payload[at + 1 : at + 1 + n]
        try:
            tag.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused("malformed tags") from None
        pairs.append((tag, payload[at + 1 + n : stop]))
        at = stop
    return tuple(pairs), at


def _derive(key: bytes, label: bytes) -> bytes:
    return hmac.digest(key, label, "sha256")


class _Keys:
    """What one signing key gives a namespace: its id, and the MACs under the
    derived keys (Rust's HMAC-SHA256, ``_Mac``: the key's pads absorbed once,
    compared in constant time)."""

    __slots__ = ("kid", "message", "payload")

    def __init__(self, key: bytes, namespace: bytes) -> None:
        self.kid = _derive(key, _KID_LABEL)[:_KID_SIZE]
        self.payload = _Mac(_derive(key, _PAYLOAD_LABEL + namespace))
        self.message = _Mac(_derive(key, _MESSAGE_LABEL + namespace))


class Envelope:
    """Packs and opens the payloads and messages of one namespace."""

    __slots__ = ("_by_kid", "_channel", "_signer", "signed")

    def __init__(self, namespace: str, channel: bytes, keys: list[bytes]) -> None:
        ns = namespace.encode()
        derived = [_Keys(k, ns) for k in keys]
        self._by_kid = {d.kid: d for d in derived}
        if len(self._by_kid) != len(derived):
            # Two different keys with one 4-byte id: 1 in 4 billion.
            raise ValueError("two signing keys have the same key id: replace one of them")
        self._signer = derived[0] if derived else None
        self._channel = _LEN.pack(len(channel)) + channel
        self.signed = self._signer is not None

    def __repr__(self) -> str:
        return f"<moka_py.redis envelope, {'signed' if self.signed else 'unsigned'}>"

    def __reduce__(self) -> str:
        raise TypeError("a moka_py.redis envelope holds secrets and cannot be pickled")

    # ------------------------------------------------------------ payloads

    def pack(self, redis_key: bytes, data: bytes, deadline_ms: int, tags: TagTokens = ()) -> bytes:
        """The payload stored under ``redis_key`` for the serialized ``data``,
        with the (tag, token) pairs of its tags, if any."""
        signer = self._signer
        if signer is None:
            if tags:
                return _PLAIN_TAGGED_BYTE + _DEADLINE.pack(deadline_ms) + pack_tags(tags) + data
            return _PLAIN_BYTE + _DEADLINE.pack(deadline_ms) + data
        if tags:
            head = _SIGNED_TAGGED_BYTE + signer.kid + _DEADLINE.pack(deadline_ms) + pack_tags(tags)
        else:
            head = _SIGNED_BYTE + signer.kid + _DEADLINE.pack(deadline_ms)
        mac = signer.payload.sign(head, _LEN.pack(len(redis_key)), redis_key, data)
        return head + mac + data

    def tags_of(self, redis_key: bytes, payload: object) -> TagTokens:
        """The (tag, token) pairs of a payload read from ``redis_key``, its
        MAC checked first (nothing unverified is acted on): () for an
        untagged payload, and for one that ``open`` refuses (it is refused,
        and counted, when it is read)."""
        if not tagged(payload):
            return ()
        try:
            return self.open(redis_key, payload)[2]
        except Refused:
            return ()

    def open(self, redis_key: bytes, payload: bytes) -> tuple[bytes, int, TagTokens]:
        """``(data, deadline ms, (tag, token) pairs)`` of a payload read from
        ``redis_key``; :class:`Refused` for anything this cache did not write
        there."""
        if type(payload) is not bytes:
            raise Refused("not a bytes value")
        version = payload[:1]
        tags: TagTokens = ()
        if self._signer is None:
            if len(payload) < _PLAIN_HEAD and version in (_PLAIN_BYTE, _PLAIN_TAGGED_BYTE):
                raise Refused("truncated")
            if version == _PLAIN_BYTE:
                at = _PLAIN_HEAD
            elif version == _PLAIN_TAGGED_BYTE:
                tags, at = parse_tags(payload, _PLAIN_HEAD)
            else:
                raise Refused(
                    "signed by a cache with a signing key"
                    if version in (_SIGNED_BYTE, _SIGNED_TAGGED_BYTE)
                    else "not a moka_py.redis payload of this version"
                )
            (deadline,) = _DEADLINE.unpack_from(payload, 1)
            return payload[at:], deadline, tags
        if version == _SIGNED_BYTE:
            at = 1 + _KID_SIZE + _DEADLINE.size
        elif version == _SIGNED_TAGGED_BYTE:
            tags, at = parse_tags(payload, 1 + _KID_SIZE + _DEADLINE.size)
        else:
            raise Refused(
                "unsigned"
                if version in (_PLAIN_BYTE, _PLAIN_TAGGED_BYTE)
                else "not a signed moka_py.redis payload"
            )
        if len(payload) < at + _MAC_SIZE:
            raise Refused("truncated")
        keys = self._by_kid.get(payload[1 : 1 + _KID_SIZE])
        if keys is None:
            raise Refused("signed with an unknown key")
        head = payload[:at]
        mac = payload[at : at + _MAC_SIZE]
        data = payload[at + _MAC_SIZE :]
        if not keys.payload.verify(mac, head, _LEN.pack(len(redis_key)), redis_key, data):
            raise Refused("bad signature")
        (deadline,) = _DEADLINE.unpack_from(payload, 1 + _KID_SIZE)
        return data, deadline, tags

    # ------------------------------------------------------------ messages

    def _seal(self, body: bytes) -> bytes:
        signer = self._signer
        if signer is None:
            return _PLAIN_BYTE + body
        head = _SIGNED_BYTE + signer.kid
        return head + signer.message.sign(head, self._channel, body) + body

    def messages(self, kind: bytes, origin: bytes, keys: Iterable[bytes] = ()) -> list[bytes]:
        """The messages that tell the other processes about ``keys``: one, or
        several when the keys are over a message's bounds."""
        out: list[bytes] = []
        parts: list[bytes] = []
        size = 0
        for k in keys:
            if parts and (len(parts) >= MAX_MESSAGE_KEYS or size + len(k) > MAX_MESSAGE_BYTES):
                out.append(self._seal(kind + origin + b"".join(parts)))
                parts, size = [], 0
            parts.append(_LEN.pack(len(k)) + k)
            size += len(k)
        if parts or not out:
            out.append(self._seal(kind + origin + b"".join(parts)))
        return out

    def open_message(self, data: bytes) -> tuple[bytes, bytes, list[bytes] | None]:
        """``(kind, origin, encoded keys)`` of a message received on the
        channel; keys are None when the message must be taken as a CLEAR (an
        unsigned message over the bounds). :class:`Refused` for a message
        this cache must not act on."""
        if len(data) > _MAX_RECEIVED:
            if self._signer is None:
                return b"c", b"", None
            raise Refused("too large")
        version = data[:1]
        if self._signer is None:
            if version != _PLAIN_BYTE:
                raise Refused("not an unsigned moka_py.redis message")
            body = data[1:]
        else:
            if version != _SIGNED_BYTE:
                raise Refused("not a signed moka_py.redis message")
            if len(data) < _MSG_SIGNED_HEAD + _BODY_HEAD:
                raise Refused("truncated")
            keys = self._by_kid.get(data[1 : 1 + _KID_SIZE])
            if keys is None:
                raise Refused("signed with an unknown key")
            head = data[: 1 + _KID_SIZE]
            body = data[_MSG_SIGNED_HEAD:]
            mac = data[1 + _KID_SIZE : _MSG_SIGNED_HEAD]
            if not keys.message.verify(mac, head, self._channel, body):
                raise Refused("bad signature")
        if len(body) < _BODY_HEAD:
            raise Refused("truncated")
        kind, origin = body[:1], body[1:_BODY_HEAD]
        found: list[bytes] = []
        i, end = _BODY_HEAD, len(body)
        while i < end:
            n = _LEN.unpack_from(body, i)[0] if i + 4 <= end else -1
            if len(found) >= MAX_MESSAGE_KEYS or not 0 <= n <= MAX_KEY_BYTES or i + 4 + n > end:
                if self._signer is not None:
                    # Over the bounds yet signed: made by a holder of the key.
                    raise Refused("malformed")
                return kind, origin, None
            found.append(body[i + 4 : i + 4 + n])
            i += 4 + n
        return kind, origin, found
