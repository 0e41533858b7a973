"""The redis-server fixtures themselves (redis_servers.py, redis_fixtures.py),
against real servers: what the moka_py.redis tests rely on when they inject
faults. Each test takes a second or two at most."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis_servers
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_servers import HOST, SENTINEL_SERVICE, RedisCluster3, RedisServer, TLSFiles
from support import TESTS_DIR, wait_for


def no_retry() -> Retry:
    # redis-py (6+) retries a timed-out or dropped command 3 times with backoff
    # by default; these tests want to see the first failure.
    return Retry(NoBackoff(), 0)


def gone(pid: int) -> bool:
    """The process has ended (a zombie not yet reaped counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_ping_and_address(redis_db: RedisServer) -> None:
    c = redis_db.client()
    assert c.ping()
    assert redis_db.host == HOST
    assert redis_db.url == f"redis://{HOST}:{redis_db.port}/0"
    assert redis.Redis.from_url(redis_db.url).ping()
    assert redis_db.admin.config_get("bind")["bind"] == HOST
    # Nothing is persisted.
    assert redis_db.admin.config_get("save")["save"] == ""
    assert redis_db.admin.config_get("appendonly")["appendonly"] == "no"


@pytest.mark.thread_unsafe  # the threads of one test share its redis_db
def test_redis_db_is_emptied(redis_db: RedisServer) -> None:
    c = redis_db.client()
    assert c.dbsize() == 0
    c.set("users:left-behind", b"x")  # the next test that takes redis_db sees none


def test_async_client(redis_db: RedisServer) -> None:
    async def scenario() -> bytes | None:
        c = redis_db.async_client()
        try:
            await c.set("users:a", b"1")
            return await c.get("users:a")
        finally:
            await c.aclose()

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == b"1"


@pytest.mark.thread_unsafe  # fault injection on the test's own server
def test_restart_same_port_new_run_id(own_redis_server: RedisServer) -> None:
    s = own_redis_server
    c = s.client(retry=no_retry())
    c.set("users:a", b"1")
    port, pid, run_id = s.port, s.pid, s.run_id()
    s.restart()
    assert s.port == port
    assert s.pid != pid and gone(pid)
    assert s.run_id() != run_id
    assert c.get("users:a") is None  # a new, empty server (the dropped connection reconnects)


@pytest.mark.thread_unsafe
def test_kill_then_restart(own_redis_server: RedisServer) -> None:
    s = own_redis_server
    c = s.client(retry=no_retry(), socket_connect_timeout=1)
    assert c.ping()
    pid = s.pid
    s.kill()
    assert gone(pid) and not s.running
    with pytest.raises(redis.ConnectionError):
        c.ping()
    s.restart()
    assert c.ping()


@pytest.mark.thread_unsafe
def test_pause_times_out_then_resume_answers(own_redis_server: RedisServer) -> None:
    s = own_redis_server
    c = s.client(socket_timeout=0.3, retry=no_retry())
    assert c.ping()
    s.pause()
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        c.ping()
    assert time.monotonic() - started < 2
    s.resume()
    assert c.ping()


@pytest.mark.thread_unsafe
def test_paused_server_is_ended_by_close() -> None:
    s = RedisServer().start()
    pid = s.pid
    s.pause()
    s.close()
    assert gone(pid)
    assert not s.dir.exists()


@pytest.mark.thread_unsafe
def test_client_kill_drops_pubsub(own_redis_server: RedisServer) -> None:
    s = own_redis_server
    p = s.client().pubsub()
    try:
        p.subscribe("users:events")
        assert p.get_message(timeout=2)["type"] == "subscribe"
        (subscriber,) = s.admin.client_list(_type="pubsub")
        normal = s.client(client_name="bystander")
        assert normal.ping()
        assert s.client_kill(type="pubsub") == 1
        assert subscriber["id"] not in [c["id"] for c in s.admin.client_list()]
        assert [c["name"] for c in s.admin.client_list(_type="normal")].count("bystander") == 1
        # The subscriber sees the drop: redis-py 8 reconnects and subscribes again
        # (a new connection), redis-py before 8 raises it. Either way a cache that
        # listens for invalidations must treat that as "missed some".
        if int(redis.__version__.split(".")[0]) >= 8:
            reply = p.get_message(timeout=2)
            assert reply is not None and reply["type"] == "subscribe"
        else:
            with pytest.raises(redis.ConnectionError):
                p.get_message(timeout=2)
    finally:
        p.close()


@pytest.mark.thread_unsafe
def test_client_kill_by_name(own_redis_server: RedisServer) -> None:
    s = own_redis_server
    victim = s.client(client_name="victim", retry=no_retry())
    other = s.client(client_name="other")
    assert victim.ping() and other.ping()
    assert s.client_kill(name="victim") == 1
    names = [c["name"] for c in s.admin.client_list()]
    assert "victim" not in names and "other" in names
    assert s.client_kill(name="nobody") == 0


@pytest.mark.thread_unsafe
def test_acl_user_confined_to_users_keys_and_channels(own_redis_server: RedisServer) -> None:
    s = own_redis_server
    s.acl_setuser("moka", "pw")
    c = s.client(username="moka", password="pw")
    c.set("users:1", b"a")
    assert c.get("users:1") == b"a"
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.set("other:1", b"a")
    assert c.publish("users:events", b"x") == 0
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.publish("other:events", b"x")
    with pytest.raises(redis.AuthenticationError):
        s.client(username="moka", password="wrong", retry=no_retry()).ping()


def test_requirepass() -> None:
    with RedisServer("--requirepass", "s3cret") as s:
        assert s.client().ping()  # the server's password by default
        assert redis.Redis.from_url(s.url).ping()
        with pytest.raises(redis.AuthenticationError):
            s.client(password=None, retry=no_retry()).ping()


def test_servers_in_parallel_get_their_own_ports() -> None:
    servers = [RedisServer().start() for _ in range(3)]
    try:
        assert len({s.port for s in servers}) == 3
        for s in servers:
            assert s.client().set("users:port", s.port)
        for s in servers:
            assert int(s.client().get("users:port") or 0) == s.port
    finally:
        for s in servers:
            s.close()


@pytest.mark.thread_unsafe  # patches redis_servers.free_port
def test_start_moves_on_when_the_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = redis_servers.free_port()
    squatter = socket.create_server((HOST, taken.port))  # a program outside our port locks
    handed_out = []

    def first_the_taken_port(cluster_bus: bool = False) -> redis_servers.PortClaim:
        claim = taken if not handed_out else real_free_port(cluster_bus)
        handed_out.append(claim.port)
        return claim

    real_free_port = redis_servers.free_port
    monkeypatch.setattr(redis_servers, "free_port", first_the_taken_port)
    try:
        with RedisServer() as s:
            assert handed_out[0] == taken.port and s.port == handed_out[1] != taken.port
            assert s.client().ping()
    finally:
        squatter.close()
        taken.release()


def crash_with_a_server() -> None:
    """Run in a child process: starts a server, prints its pid, dies without atexit."""
    s = RedisServer().start()
    print(s.pid, s.dir, flush=True)
    os._exit(1)


@pytest.mark.thread_unsafe
def test_server_does_not_outlive_a_crashed_test_process() -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); "
        f"import {__name__} as m; m.crash_with_a_server()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    pid, directory = out.stdout.split()
    wait_for(lambda: gone(int(pid)), timeout=10)
    wait_for(lambda: not Path(directory).exists(), timeout=10)


def test_cluster_spreads_keys_over_three_masters(redis_cluster: RedisCluster3) -> None:
    masters = redis_cluster.masters()
    assert sorted(masters) == sorted(redis_cluster.nodes)
    c = redis_cluster.client()
    keys = [f"users:{i}" for i in range(60)]
    for k in keys:
        c.set(k, k)
    assert [c.get(k) for k in keys] == [k.encode() for k in keys]
    assert {n.port for n in c.get_primaries()} == {p for _, p in masters}
    # Each master holds the keys of its own slots, read straight from it.
    held = 0
    for host, port in masters:
        node = redis.Redis(host=host, port=port)
        try:
            mine = [k for k in keys if c.get_node_from_key(k).port == port]
            assert mine, f"no key of 60 on {port}"
            assert [node.get(k) for k in mine] == [k.encode() for k in mine]
            held += len(mine)
        finally:
            node.close()
    assert held == len(keys)


def test_async_cluster_client(redis_cluster: RedisCluster3) -> None:
    async def scenario() -> list[bytes | None]:
        c = redis_cluster.async_client()
        try:
            for i in range(10):
                await c.set(f"users:async:{i}", str(i))
            return [await c.get(f"users:async:{i}") for i in range(10)]
        finally:
            await c.aclose()

    got = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert got == [str(i).encode() for i in range(10)]


@pytest.mark.thread_unsafe
def test_cluster_node_restart_rejoins(own_redis_cluster: RedisCluster3) -> None:
    node = own_redis_cluster.servers[1]
    c = own_redis_cluster.client()
    node.kill()
    node.restart()  # same port, same nodes.conf: the same node, its slots, no data
    own_redis_cluster.wait_ready(timeout=15)
    c.set("users:after", b"1")
    assert c.get("users:after") == b"1"


def _refused(**kwargs: Any) -> bool:
    """Whether a client of these settings fails to PING (and is closed)."""
    with redis.Redis(socket_timeout=2, retry=no_retry(), **kwargs) as c:
        try:
            c.ping()
        except redis.ConnectionError:
            return True
    return False


def test_a_tls_server_takes_only_tls_with_a_client_certificate(
    redis_tls_server: RedisServer, tls_files: TLSFiles
) -> None:
    s = redis_tls_server
    assert s.client().ping()
    assert redis.Redis.from_url(s.url).ping()
    plain = {"host": s.host, "port": s.port, "password": s.password}
    assert _refused(**plain)  # no plaintext port (--port 0)
    assert _refused(**plain, ssl=True, ssl_ca_certs=str(tls_files.ca))  # no client certificate
    assert _refused(
        **plain, ssl=True, **{**tls_files.client_kwargs(), "ssl_ca_certs": str(tls_files.wrong_ca)}
    )


def test_a_tls_cluster_and_a_tls_sentinel(
    redis_tls_cluster: RedisCluster3, redis_tls_sentinel: tuple[RedisServer, RedisServer]
) -> None:
    c = redis_tls_cluster.client()
    for i in range(30):
        c.set(f"users:tls:{i}", i)
    assert len(redis_tls_cluster.masters()) == 3
    for node in redis_tls_cluster.servers:
        assert _refused(host=node.host, port=node.port, password=node.password)
        assert len(node.admin.keys("users:tls:*")) > 0  # every master holds some
    master, sentinel = redis_tls_sentinel
    assert _refused(host=sentinel.host, port=sentinel.port)
    # The Sentinel reaches its TLS-only master (over TLS): it knows its run id.
    wait_for(lambda: sentinel.admin.sentinel_master(SENTINEL_SERVICE)["runid"] != "", timeout=5)
    assert sentinel.admin.sentinel_master(SENTINEL_SERVICE)["port"] == master.port
