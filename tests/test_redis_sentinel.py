"""moka_py.redis over a redis-py Sentinel client (sync and asyncio): the
cache's own connections and its feed find the master through the same
Sentinel, with the client's settings, on a real redis-server and a real
Sentinel (tests/redis_servers.py). Each scenario runs in a child interpreter
(the servers stay the test's): redis-py's Sentinel clients keep sockets that
would otherwise warn, unclosed, in whichever later test collects them."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from typing import Any

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel
from redis_servers import SENTINEL_SERVICE, RedisServer
from support import SIGNING_KEY, run_isolated, wait_for

from moka_py.redis import AsyncTieredCache, TieredCache

pytestmark = pytest.mark.thread_unsafe  # the threads of one test would share its servers

NS = "users"


def _names_on(master: int) -> list[str]:
    with redis.Redis(port=master, decode_responses=True) as admin:
        return [c["name"] for c in admin.client_list()]


def _ports() -> tuple[int, int]:
    return int(os.environ["MOKA_TEST_MASTER_PORT"]), int(os.environ["MOKA_TEST_SENTINEL_PORT"])


def _env(monkeypatch: pytest.MonkeyPatch, servers: tuple[RedisServer, RedisServer]) -> None:
    monkeypatch.setenv("MOKA_TEST_MASTER_PORT", str(servers[0].port))
    monkeypatch.setenv("MOKA_TEST_SENTINEL_PORT", str(servers[1].port))


def test_a_sync_sentinel_client(
    redis_sentinel: tuple[RedisServer, RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch, redis_sentinel)
    run_isolated(_a_sync_sentinel_client)


def test_an_asyncio_sentinel_client(
    redis_sentinel: tuple[RedisServer, RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch, redis_sentinel)
    run_isolated(_an_asyncio_sentinel_client)


def _a_sync_sentinel_client() -> None:
    master, sentinel = _ports()
    manager = redis.sentinel.Sentinel([("127.0.0.1", sentinel)], socket_timeout=2)
    clients = [manager.master_for(SENTINEL_SERVICE, client_name=f"app-{i}") for i in (1, 2)]
    with (
        TieredCache(clients[0], namespace=NS, signing_key=SIGNING_KEY) as a,
        TieredCache(clients[1], namespace=NS, signing_key=SIGNING_KEY) as b,
    ):
        assert a.wait_ready(5) and b.wait_ready(5)
        a.set("k", 1)
        assert b.get("k") == 1  # now also in b's local tier
        a.set("k", 2)
        wait_for(lambda: b.get("k") == 2, timeout=5)
        assert a.get_with("g", lambda: "loaded") == "loaded"
        assert b.get_with("g", lambda: "again") == "loaded"
        # The values live on the master, and the caches' own connections
        # there (feed included) carry their client's name.
        with redis.Redis(port=master) as admin:
            assert admin.exists(f"{NS}:v:sk") == 1
        names = _names_on(master)
        assert names.count("app-1") >= 2 and names.count("app-2") >= 2, names
    for client in (*clients, *manager.sentinels):
        client.close()
    gc.collect()  # a connection left open now warns in this test, not in a later one


def _an_asyncio_sentinel_client() -> None:
    master, sentinel = _ports()

    async def main() -> list[Any]:
        manager = redis.asyncio.sentinel.Sentinel([("127.0.0.1", sentinel)], socket_timeout=2)
        one = manager.master_for(SENTINEL_SERVICE, client_name="app-1")
        two = manager.master_for(SENTINEL_SERVICE, client_name="app-2")
        seen: list[Any] = []
        async with (
            AsyncTieredCache(one, namespace=NS, signing_key=SIGNING_KEY) as a,
            AsyncTieredCache(two, namespace=NS, signing_key=SIGNING_KEY) as b,
        ):
            seen.append((await a.wait_ready(5), await b.wait_ready(5)))
            await a.set("k", 1)
            seen.append(await b.get("k"))
            await a.set("k", 2)
            deadline = time.monotonic() + 5
            while await b.get("k") != 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            seen.append(await b.get("k"))
            seen.append(b.feed_up)
            seen.append(_names_on(master))
        await one.aclose()
        await two.aclose()
        for client in manager.sentinels:  # the connections that asked the Sentinel
            await client.aclose()
        return seen

    ready, first, later, feed_up, names = asyncio.run(main())
    gc.collect()  # a connection left open now warns in this test, not in a later one
    assert ready == (True, True)
    assert (first, later, feed_up) == (1, 2, True)
    assert names.count("app-1") >= 1 and names.count("app-2") >= 1, names
