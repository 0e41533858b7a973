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
- `tls_files`: a CA, server and client certificates (and a wrong CA), made
  once per session by openssl; `redis_tls_server` (per module),
  `redis_tls_cluster` (per session) and `redis_tls_sentinel` (per test) are
  the same servers TLS-only (no plaintext port), with a password.

Under pytest-run-parallel (`--parallel-threads`), the threads of one test share
its fixtures: a test that injects faults must be marked `thread_unsafe`.

Without redis-server the fixtures fail (never skip) and say how to install it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from redis_servers import (
    INSTALL_HINT,
    RedisCluster3,
    RedisServer,
    RedisServerError,
    TLSFiles,
    make_tls_files,
    redis_server_installed,
)

S = TypeVar("S", RedisServer, RedisCluster3)

# The password of the TLS servers: what must never cross the network in clear.
TLS_PASSWORD = "moka-py-tls-password-never-in-clear"


def _need_redis_server() -> None:
    if not redis_server_installed():
        pytest.fail(INSTALL_HINT, pytrace=False)


def _started(server: RedisServer | RedisCluster3) -> None:
    try:
        server.start()
    except RedisServerError as e:
        pytest.fail(str(e), pytrace=False)


def _serving(make: Callable[[], S]) -> Iterator[S]:
    """The body of a fixture of one server or cluster: made by `make()` and
    started (or the test fails saying why), ended after the test."""
    _need_redis_server()
    server = make()
    try:
        _started(server)
        yield server
    finally:
        if isinstance(server, RedisCluster3):
            server.stop()
        else:
            server.close()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A server shared by the test module: use `redis_db` for an empty one,
    `own_redis_server` to change the server itself."""
    yield from _serving(RedisServer)


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
    yield from _serving(RedisServer)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster3]:
    """A three-master cluster shared by the session (each xdist worker has its
    own); call `flushall()` for an empty one."""
    yield from _serving(RedisCluster3)


@pytest.fixture
def own_redis_cluster() -> Iterator[RedisCluster3]:
    """A cluster of the test's own (about 2 s to start), for failing its nodes
    through `.servers`."""
    yield from _serving(RedisCluster3)


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


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A CA, a server certificate (127.0.0.1), a client certificate and a
    wrong CA, made once per session (per worker) by openssl."""
    try:
        return make_tls_files(tmp_path_factory.mktemp("tls"))
    except RedisServerError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def redis_tls_server(tls_files: TLSFiles) -> Iterator[RedisServer]:
    """A TLS-only server (`--port 0`: a plaintext connection fails) with the
    password TLS_PASSWORD, shared by the test module; its `client()`,
    `async_client()` and `url` use TLS with the client certificate."""
    yield from _serving(lambda: RedisServer("--requirepass", TLS_PASSWORD, tls=tls_files))


@pytest.fixture(scope="session")
def redis_tls_cluster(tls_files: TLSFiles) -> Iterator[RedisCluster3]:
    """A TLS-only three-master cluster (its bus too) with the password
    TLS_PASSWORD, shared by the session (per worker)."""
    yield from _serving(lambda: RedisCluster3("--requirepass", TLS_PASSWORD, tls=tls_files))


@pytest.fixture
def redis_tls_sentinel(tls_files: TLSFiles) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A TLS-only master with the password TLS_PASSWORD and a TLS-only
    Sentinel that watches it over TLS (`tls-replication yes`); both ended
    after the test."""
    _need_redis_server()
    master = RedisServer("--requirepass", TLS_PASSWORD, tls=tls_files)
    sentinel = RedisServer(monitors=master, tls=tls_files)
    try:
        _started(master)
        _started(sentinel)
        yield master, sentinel
    finally:
        sentinel.close()
        master.close()


def tiered_pair(client: Any, namespace: str) -> Iterator[tuple[Any, Any]]:
    """For a fixture: two `TieredCache`s of `namespace` on `client` (what two
    processes would hold), with statistics, both subscribed; closed after."""
    from support import SIGNING_KEY

    from moka_py.redis import TieredCache

    a: TieredCache[Any, Any] = TieredCache(
        client, namespace=namespace, signing_key=SIGNING_KEY, stats=True
    )
    b: TieredCache[Any, Any] = TieredCache(
        client, namespace=namespace, signing_key=SIGNING_KEY, stats=True
    )
    assert a.wait_ready(5) and b.wait_ready(5)
    yield a, b
    a.close()
    b.close()
