"""pytest fixtures for real redis-server processes (tests/redis_servers.py),
loaded by conftest.py as a plugin (`pytest_plugins = ["redis_fixtures"]`).

- `redis_server`: one server per test module (per pytest-xdist worker), shared
  by its tests; for tests that only read and write keys.
- `redis_db`: that server, emptied (FLUSHALL) before the test.
- `own_redis_server`: a server of the test's own, for anything that changes the
  server itself (kill, restart, pause, CLIENT KILL, ACL, CONFIG SET).
- `redis_cluster`: one three-master cluster per test session (per worker);
  `own_redis_cluster`: one of the test's own, for failing its nodes.
- `redis_sentinel`: a server of the test's own and a Sentinel watching it as
  the master of `SENTINEL_SERVICE`: `(master, sentinel)`.

Under pytest-run-parallel (`--parallel-threads`), the threads of one test share
its fixtures: a test that injects faults must be marked `thread_unsafe`.

Without redis-server the fixtures fail (never skip) and say how to install it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_servers import (
    INSTALL_HINT,
    RedisCluster3,
    RedisServer,
    RedisServerError,
    redis_server_installed,
)


def _need_redis_server() -> None:
    if not redis_server_installed():
        pytest.fail(INSTALL_HINT, pytrace=False)


def _started(server: RedisServer | RedisCluster3) -> None:
    try:
        server.start()
    except RedisServerError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A server shared by the test module: use `redis_db` for an empty one,
    `own_redis_server` to change the server itself."""
    _need_redis_server()
    server = RedisServer()
    try:
        _started(server)
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_db(redis_server: RedisServer) -> RedisServer:
    """The module's server, emptied before the test (and restarted if an
    earlier test of the module left it down)."""
    if not redis_server.running:
        redis_server.restart()
    redis_server.resume()
    redis_server.flushall()
    return redis_server


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A server of the test's own, ended (resumed first if paused) after it."""
    _need_redis_server()
    server = RedisServer()
    try:
        _started(server)
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster3]:
    """A three-master cluster shared by the session (each xdist worker has its
    own); call `flushall()` for an empty one."""
    _need_redis_server()
    cluster = RedisCluster3()
    try:
        _started(cluster)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_redis_cluster() -> Iterator[RedisCluster3]:
    """A cluster of the test's own (about 2 s to start), for failing its nodes
    through `.servers`."""
    _need_redis_server()
    cluster = RedisCluster3()
    try:
        _started(cluster)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_sentinel() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master of the test's own and a Sentinel (redis-server --sentinel)
    that watches it; both ended after the test."""
    _need_redis_server()
    master = RedisServer()
    sentinel = RedisServer(monitors=master)
    try:
        _started(master)
        _started(sentinel)
        yield master, sentinel
    finally:
        sentinel.close()
        master.close()
