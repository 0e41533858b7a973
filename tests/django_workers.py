"""Functions that run in real child processes for the moka_py.django tests
(multiprocessing's "spawn" context). The parent's DJANGO_SETTINGS_MODULE
(tests/django_settings.py) is inherited: the children derive the same signing
key from its SECRET_KEY."""

from __future__ import annotations

from typing import Any

import moka_py._django_tier as django_tier
from moka_py.django import TieredMokaCache


def incr(url: str, namespace: str, n: int, out: Any) -> None:
    """``incr("n")`` ``n`` times; reports the value read after."""
    cache = TieredMokaCache(url, {"OPTIONS": {"NAMESPACE": namespace}})
    for _ in range(n):
        cache.incr("n")
    out.put(cache.get("n"))
    django_tier.close_all()
