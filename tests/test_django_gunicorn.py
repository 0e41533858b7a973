"""A Django project (tests/django_site.py) under gunicorn with three worker
processes, its cache moka_py.django.TieredMokaCache on a real redis-server:
requests spread over the workers, each response names the worker's pid, and a
write through one worker is read through every other.

gunicorn is started by the `site` fixture on a free loopback port with a
deadline, and ended (SIGTERM, then SIGKILL) after the module's tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis_servers import RedisServer, free_port

pytestmark = pytest.mark.thread_unsafe  # one site and one server per module

WORKERS = 3
TESTS = Path(__file__).resolve().parent
START_SECONDS = 60.0
DEADLINE_SECONDS = 10.0


@dataclass
class Site:
    url: str
    pids: set[int]
    redis: RedisServer

    def call(self, view: str, **query: Any) -> dict[str, Any]:
        address = f"{self.url}/{view}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(address, timeout=DEADLINE_SECONDS) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def from_every_worker(self, view: str, until: Any = None, **query: Any) -> dict[int, Any]:
        """Calls ``view`` until every worker has answered (and, with ``until``,
        answered something ``until`` accepts); the last answer of each."""
        answers: dict[int, Any] = {}
        done: set[int] = set()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while done != self.pids:
            if time.monotonic() > deadline:
                pytest.fail(f"workers {sorted(self.pids - done)} did not answer as expected")
            answer = self.call(view, **query)
            answers[answer["pid"]] = answer
            if until is None or until(answer):
                done.add(answer["pid"])
        return answers


@pytest.fixture(scope="module")
def site(redis_server: RedisServer) -> Iterator[Site]:
    claim = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "django_site",
        "MOKA_PY_REDIS_URL": redis_server.url,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        f"--workers={WORKERS}",
        f"--bind=127.0.0.1:{claim.port}",
        "--timeout=30",
        "--graceful-timeout=5",
        "--log-level=warning",
        "django.core.wsgi:get_wsgi_application()",
    ]
    proc = subprocess.Popen(command, env=env, cwd=TESTS, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{claim.port}"
        deadline = time.monotonic() + START_SECONDS
        pids: set[int] = set()
        while len(pids) < WORKERS:
            if proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {proc.returncode} before serving")
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not serve from {WORKERS} workers in {START_SECONDS} s")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    pids.add(json.loads(response.read())["pid"])
            except OSError:
                time.sleep(0.1)
        yield Site(url, pids, redis_server)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)
        claim.release()


def test_requests_spread_over_the_workers(site: Site) -> None:
    assert len(site.pids) == WORKERS and os.getpid() not in site.pids


def test_a_write_through_one_worker_is_read_through_every_worker(site: Site) -> None:
    site.call("write", key="k", value="v0")
    # Every worker holds a local copy: the reads that follow show that the
    # writes invalidate them, not that the workers had none.
    site.from_every_worker("read", until=lambda a: a["value"] == "v0" and a["local"], key="k")
    for n in range(1, 6):
        writer = site.call("write", key="k", value=f"v{n}")["pid"]
        answers = site.from_every_worker(
            "read", until=lambda a, n=n: a["value"] == f"v{n}", key="k"
        )
        assert set(answers) == site.pids and writer in site.pids
        # Never an older value once a worker has seen the new one.
        for _ in range(3 * WORKERS):
            assert site.call("read", key="k")["value"] == f"v{n}"


def test_incr_and_add_are_atomic_across_workers(site: Site) -> None:
    assert site.call("add", key="n")["added"]  # stores the worker's pid, an int
    first = site.call("read", key="n")["value"]
    assert first in site.pids
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: site.call("incr", key="n"), range(120)))
    assert sorted(a["value"] for a in answers) == [first + i for i in range(1, 121)]
    assert len({a["pid"] for a in answers}) > 1
    with ThreadPoolExecutor(6) as pool:
        added = list(pool.map(lambda _: site.call("add", key="once"), range(30)))
    assert sum(a["added"] for a in added) == 1


def test_get_or_set_loads_once_across_workers(site: Site) -> None:
    counter = site.redis.client()
    counter.delete("loads")
    with ThreadPoolExecutor(WORKERS * 2) as pool:
        answers = list(pool.map(lambda _: site.call("get_or_set", key="slow"), range(12)))
    assert len({a["value"] for a in answers}) == 1
    assert len({a["pid"] for a in answers}) > 1
    assert counter.get("loads") == b"1"
