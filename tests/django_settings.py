"""The Django settings of tests/test_django.py (``DJANGO_SETTINGS_MODULE=django_settings``)."""

SECRET_KEY = "moka-py tests"
USE_TZ = True
INSTALLED_APPS: list[str] = []

_BACKEND = "moka_py.django.MokaCache"


def reversed_key(key: str, key_prefix: str, version: int) -> str:
    """A KEY_FUNCTION: ``key`` reversed, after the version and the prefix."""
    return f"{version}/{key_prefix}/{key[::-1]}"


CACHES = {
    # As the README configures it.
    "default": {
        "BACKEND": _BACKEND,
        "TIMEOUT": 300,
        "OPTIONS": {"MAX_ENTRIES": 10_000, "POLICY": "tiny_lfu"},
    },
    "lru": {
        "BACKEND": _BACKEND,
        "LOCATION": "lru",
        "OPTIONS": {"MAX_ENTRIES": 100, "POLICY": "lru", "CULL_FREQUENCY": 4},
    },
    "references": {
        "BACKEND": _BACKEND,
        "LOCATION": "references",
        "TIMEOUT": None,
        "OPTIONS": {"PICKLE": False},
    },
    "prefixed": {
        "BACKEND": _BACKEND,
        "LOCATION": "prefixed",
        "KEY_PREFIX": "site1",
        "VERSION": 3,
        "KEY_FUNCTION": "django_settings.reversed_key",
    },
    # The reference that tests/test_django.py compares MokaCache with.
    "locmem": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "locmem",
        "TIMEOUT": 300,
        "OPTIONS": {"MAX_ENTRIES": 10_000},
    },
}
