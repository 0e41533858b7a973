"""Cache keys for decorated functions, with the semantics of ``functools.lru_cache``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moka_py._moka_py import _KWARGS_MARK

# Separates positional from keyword arguments in a key. A unique object, so no
# argument can be mistaken for it; the cache compares it in Rust.
_KWD_MARK = (_KWARGS_MARK,)
# A single argument of these types is its own key (functools does this for int
# and str; with float too, f(1) and f(1.0) share a key as they would in a tuple).
_FAST_TYPES = frozenset({int, str, float, bytes, bool, type(None)})


def key_maker(typed: bool) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
    """The function that builds the key of one call's arguments.

    Keyword arguments are sorted by name, so ``f(a=1, b=2)`` and ``f(b=2, a=1)``
    share a key; ``typed`` keeps ``f(1)`` and ``f(1.0)`` apart.
    """
    if typed:
        return _typed_key
    return _key


def _key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not kwargs:
        if len(args) == 1 and type(args[0]) in _FAST_TYPES:
            return args[0]
        return args
    return (*args, *_KWD_MARK, *sorted(kwargs.items()))


def _typed_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    items = sorted(kwargs.items())
    key: tuple[Any, ...] = args
    if items:
        key = (*args, *_KWD_MARK, *items)
    key += tuple(type(a) for a in args)
    if items:
        key += tuple(type(v) for _, v in items)
    return key
