"""A small Django project for tests/test_django_gunicorn.py, served by gunicorn
(``django.core.wsgi:get_wsgi_application()``, ``DJANGO_SETTINGS_MODULE=django_site``):
this module is its settings and its URLconf. The cache is
``moka_py.django.TieredMokaCache`` on the Redis of ``MOKA_PY_REDIS_URL``.

Every view answers JSON that names the worker's pid. Only GET requests (no CSRF,
no middleware): the views are test fixtures, not an example of a site.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from django.core.cache import cache
from django.http import HttpRequest, JsonResponse
from django.urls import path

SECRET_KEY = "moka-py gunicorn tests"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
USE_TZ = True
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "django_site"
CACHES = {
    "default": {
        "BACKEND": "moka_py.django.TieredMokaCache",
        "LOCATION": os.environ.get("MOKA_PY_REDIS_URL", ""),
        "TIMEOUT": 300,
        "OPTIONS": {"NAMESPACE": "site", "STATS": True},
    }
}


def _answer(**fields: Any) -> JsonResponse:
    return JsonResponse({"pid": os.getpid(), **fields})


def ping(request: HttpRequest) -> JsonResponse:
    return _answer()


def read(request: HttpRequest) -> JsonResponse:
    """The value of ``key``, and whether this worker answered from its local tier."""
    key = request.GET["key"]
    tier: Any = cache._cache  # type: ignore[attr-defined]
    local = cache.make_key(key) in tier.local
    return _answer(value=cache.get(key), local=local)


def write(request: HttpRequest) -> JsonResponse:
    cache.set(request.GET["key"], request.GET["value"])
    return _answer()


def add(request: HttpRequest) -> JsonResponse:
    return _answer(added=cache.add(request.GET["key"], os.getpid()))


def incr(request: HttpRequest) -> JsonResponse:
    return _answer(value=cache.incr(request.GET["key"]))


def get_or_set(request: HttpRequest) -> JsonResponse:
    """``get_or_set`` with a slow default that counts its calls in Redis."""

    def load() -> str:
        counter = redis.Redis.from_url(os.environ["MOKA_PY_REDIS_URL"])
        counter.incr("loads")
        counter.close()
        time.sleep(0.5)
        return f"loaded by {os.getpid()}"

    return _answer(value=cache.get_or_set(request.GET["key"], load))


urlpatterns = [
    path("ping", ping),
    path("read", read),
    path("write", write),
    path("add", add),
    path("incr", incr),
    path("get_or_set", get_or_set),
]
