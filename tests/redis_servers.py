"""Real redis-server processes for the tests of moka_py.redis: `RedisServer` (one
server) and `RedisCluster3` (a three-master cluster), each in plaintext or
TLS-only (`tls=TLSFiles`, made by `make_tls_files` with openssl). Plain classes;
the pytest fixtures that own them are in redis_fixtures.py.

Every server listens on 127.0.0.1 only, on a port picked by `free_port`, keeps
nothing on disk (`--save "" --appendonly no`, its own temporary directory) and
runs in the foreground as a child in a process group of its own. Three things
make sure none outlives the test process:

- `close()` (the fixtures' finalizers and the context managers call it) resumes
  a paused server and ends it;
- an atexit hook closes whatever a test left running;
- a small reaper process, shared by every server of this process, holds the
  read end of a pipe: when this process dies without running atexit (a worker
  killed by pytest-xdist, faulthandler's watchdog `_exit`), the pipe closes and
  the reaper kills every process group still registered with it and removes
  its directory.

Ports: `free_port` picks a random port in [10000, 20000), below the kernel's
ephemeral range (so no outgoing connection holds it) and, for a cluster node,
with the bus port (+10000) free as well. A port is claimed with an flock on a
file in the temporary directory, held for the life of the `RedisServer` object,
including while the server is killed, stopped or restarting: parallel pytest-xdist
workers (or other checkouts on the same machine) never pick a port another one
owns, so a test that kills its server cannot reach another worker's server on
the same port. A port taken by some other program shows up as "Address already
in use" in the server's log, and the start is retried on another port.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

HOST = "127.0.0.1"
PORT_RANGE = (10000, 20000)
CLUSTER_BUS_OFFSET = 10000
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
CLUSTER_READY_TIMEOUT = 30.0
INSTALL_HINT = (
    "redis-server is not installed: `bash ci/test.sh` installs it "
    "(or `apt-get install redis-server redis-tools`)"
)

_PORT_LOCK_DIR = Path(tempfile.gettempdir()) / "moka-py-redis-ports"
_rng = random.Random(os.urandom(16))  # not the `random` module's state, which tests reseed


class RedisServerError(RuntimeError):
    """A server did not start, stop or become ready in time."""


# The directory of the redis-server and redis-cli to run (Redis 7, Redis 8 or Valkey 8:
# `bash ci/test.sh` sets it from MOKA_PY_REDIS_SERVER through ci/redis-servers.sh);
# unset, the ones on PATH.
BIN_DIR = os.environ.get("MOKA_PY_REDIS_BIN") or None


def binary(name: str) -> str:
    """The path of `redis-server` or `redis-cli` (see BIN_DIR)."""
    return str(Path(BIN_DIR) / name) if BIN_DIR else name


def redis_server_installed() -> bool:
    return all(shutil.which(binary(b)) is not None for b in ("redis-server", "redis-cli"))


# ---------------------------------------------------------------- ports


class PortClaim:
    """A port (and, for a cluster node, its bus port) that this process owns:
    an exclusive flock on a file per port, released by `release()` or when the
    process ends."""

    def __init__(self, port: int, files: list[IO[bytes]]) -> None:
        self.port = port
        self._files = files

    def release(self) -> None:
        for f in self._files:
            f.close()  # closing the file drops its flock
        self._files = []


def _lock_port(port: int) -> IO[bytes] | None:
    _PORT_LOCK_DIR.mkdir(exist_ok=True)
    f = open(_PORT_LOCK_DIR / str(port), "ab")  # held for the claim's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As redis-server binds: with SO_REUSEADDR, so TIME_WAIT leftovers do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(cluster_bus: bool = False, attempts: int = 200) -> PortClaim:
    """Claims a free loopback port in PORT_RANGE (see the module docstring);
    with `cluster_bus`, port + 10000 is free too."""
    for _ in range(attempts):
        port = _rng.randrange(*PORT_RANGE)
        ports = [port, port + CLUSTER_BUS_OFFSET] if cluster_bus else [port]
        files: list[IO[bytes]] = []
        for p in ports:
            f = _lock_port(p)
            if f is None:
                break
            files.append(f)
        claim = PortClaim(port, files)
        if len(files) == len(ports) and all(_bindable(p) for p in ports):
            return claim
        claim.release()
    raise RedisServerError(f"no free port in {PORT_RANGE} after {attempts} attempts")


# ---------------------------------------------------------------- cleanup


class _Reaper:
    """One child process per test process that kills the registered process
    groups once this process is gone (its stdin pipe closes)."""

    CODE = (
        "import os, shutil, signal, sys\n"
        "groups = {}\n"
        "for line in sys.stdin:\n"
        "    op, pgid, path = line.rstrip('\\n').split(' ', 2)\n"
        "    if op == '+':\n"
        "        groups[int(pgid)] = path\n"
        "    else:\n"
        "        groups.pop(int(pgid), None)\n"
        "for pgid, path in groups.items():\n"
        "    for sig in (signal.SIGCONT, signal.SIGKILL):\n"
        "        try:\n"
        "            os.killpg(pgid, sig)\n"
        "        except OSError:\n"
        "            pass\n"
        "    shutil.rmtree(path, ignore_errors=True)\n"
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0

    def _send(self, op: str, pgid: int, path: Path) -> None:
        with self._lock:
            if self._proc is None or self._owner != os.getpid():
                # First use, or a forked child: a reaper of our own.
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", self.CODE],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,  # no Ctrl-C from the terminal
                )
                self._owner = os.getpid()
            assert self._proc.stdin is not None
            self._proc.stdin.write(f"{op} {pgid} {path}\n".encode())
            self._proc.stdin.flush()

    def add(self, pgid: int, path: Path) -> None:
        """Kill group `pgid` and remove directory `path` if this process dies."""
        self._send("+", pgid, path)

    def discard(self, pgid: int) -> None:
        self._send("-", pgid, Path())

    def shutdown(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and self._owner == os.getpid():
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_reaper = _Reaper()
_live: set[RedisServer] = set()
_live_lock = threading.Lock()
_owner_pid = os.getpid()


@atexit.register
def _close_leftovers() -> None:
    if os.getpid() != _owner_pid:
        return  # a forked child: the servers are its parent's
    with _live_lock:
        servers = list(_live)
    for s in servers:
        s.close()
    _reaper.shutdown()


def _ping_raw(port: int, timeout: float, tls: TLSFiles | None = None) -> bytes | None:
    """The first reply line to PING (over TLS with `tls`), or None when nothing
    answers."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as raw:
            if tls is None:
                raw.sendall(b"PING\r\n")
                return raw.recv(64)
            with tls.context().wrap_socket(raw, server_hostname=HOST) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64)
    except OSError:  # ssl.SSLError included
        return None


# ---------------------------------------------------------------- TLS


OPENSSL_TIMEOUT = 30.0


@dataclass(frozen=True)
class TLSFiles:
    """A test CA, a server certificate it signed (for 127.0.0.1 and localhost,
    usable as a client certificate too: redis-server presents it to the nodes
    and masters it connects to), a client certificate it signed, and a second
    CA that signed none of them (`wrong_ca`). Made by `make_tls_files`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    wrong_ca: Path

    @classmethod
    def at(cls, directory: Path) -> TLSFiles:
        """The files `make_tls_files(directory)` made (for a child interpreter
        that is told only the directory)."""
        d = Path(directory)
        return cls(
            d / "ca.crt", d / "server.crt", d / "server.key",
            d / "client.crt", d / "client.key", d / "wrong-ca.crt",
        )  # fmt: skip

    def server_args(self) -> list[str]:
        """redis-server's certificate arguments. Clients must present a
        certificate of the CA (tls-auth-clients defaults to yes)."""
        return [
            "--tls-cert-file", str(self.server_cert),
            "--tls-key-file", str(self.server_key),
            "--tls-ca-cert-file", str(self.ca),
        ]  # fmt: skip

    def client_kwargs(self) -> dict[str, Any]:
        """redis-py's TLS settings for a client of these servers (`ssl=True`
        is the caller's: a URL says `rediss://` instead)."""
        return {
            "ssl_ca_certs": str(self.ca),
            "ssl_certfile": str(self.client_cert),
            "ssl_keyfile": str(self.client_key),
            "ssl_cert_reqs": "required",
        }

    def url_query(self) -> str:
        return "&".join(f"{k}={quote(str(v), safe='')}" for k, v in self.client_kwargs().items())

    def cli_args(self) -> list[str]:
        """redis-cli's TLS arguments."""
        return [
            "--tls",
            "--cacert", str(self.ca),
            "--cert", str(self.client_cert),
            "--key", str(self.client_key),
        ]  # fmt: skip

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


def _openssl(*args: str | Path, cwd: Path) -> None:
    run = subprocess.run(
        ["openssl", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if run.returncode != 0:
        raise RedisServerError(f"openssl {args[0]} failed:\n{run.stderr[-3000:]}")


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", f"/CN=moka-py tests {name}",
        "-keyout", key, "-out", cert,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=d,
    )  # fmt: skip
    return cert, key


def _make_leaf(d: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (d / f"{name}.{x}" for x in ("crt", "key", "csr", "ext"))
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-subj", f"/CN=moka-py tests {name}", "-keyout", key, "-out", csr,
        cwd=d,
    )  # fmt: skip
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n" + extensions
    )
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-days", "2", "-extfile", ext, "-out", cert,
        cwd=d,
    )  # fmt: skip
    return cert, key


def make_tls_files(directory: Path) -> TLSFiles:
    """Makes a CA, a server and a client certificate, and a wrong CA, in
    `directory` (with `openssl`; about a tenth of a second)."""
    if shutil.which("openssl") is None:
        raise RedisServerError("openssl is not installed (the TLS tests make their certificates)")
    ca = _make_ca(directory, "ca")
    server = _make_leaf(
        directory,
        "server",
        ca,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    client = _make_leaf(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    _make_ca(directory, "wrong-ca")
    files = TLSFiles.at(directory)
    assert (files.ca, files.server_cert, files.client_cert) == (ca[0], server[0], client[0])
    return files


class PlainListener:
    """A plain TCP listener on 127.0.0.1 posing as a Redis server (the master a
    Sentinel announces, a cluster's startup node). It answers nothing: it keeps
    the first `limit` bytes each connection sends within `read_timeout`, then
    closes it, so a test can read what a client sent in clear (`received`,
    one entry per closed connection). `with` starts and closes it."""

    def __init__(self, limit: int = 4096, read_timeout: float = 0.5) -> None:
        self._limit = limit
        self._read_timeout = read_timeout
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.host, self.port = HOST, int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._received: list[bytes] = []
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, name="PlainListener", daemon=True)

    def __enter__(self) -> PlainListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def received(self) -> list[bytes]:
        with self._lock:
            return list(self._received)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            with self._lock:
                self._threads.append(t)
            t.start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        deadline = time.monotonic() + self._read_timeout
        with conn:
            while len(data) < self._limit and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                conn.settimeout(left)
                try:
                    chunk = conn.recv(self._limit - len(data))
                except OSError:  # the timeout included
                    break
                if not chunk:
                    break
                data += chunk
        with self._lock:
            self._received.append(data)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT)
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(STOP_TIMEOUT)
        self._sock.close()


# ---------------------------------------------------------------- one server


# The service name that a Sentinel of RedisServer(monitors=...) watches.
SENTINEL_SERVICE = "moka-py-tests"


class RedisServer:
    """One redis-server on 127.0.0.1, started by `start()` (or `with`).

    `args` are extra redis-server arguments (`"--requirepass", "secret"`);
    with `--requirepass`, `client()` and `async_client()` default to that
    password. `cluster=True` makes a cluster node (used by RedisCluster3).
    `tls=TLSFiles` makes a TLS-only server (`--port 0 --tls-port P`: no
    plaintext port at all; TLS on the cluster bus and from a Sentinel to its
    master too), whose clients default to TLS with those certificates.
    `monitors` makes a Sentinel of a server, or of any address (a test's
    listener posing as the master), down after `down_after_ms` unanswered.
    Fault injection: `kill`, `stop`, `restart`, `pause`/`resume`, `client_kill`.
    The methods hold a lock, so threads of one test may share a server.
    """

    def __init__(
        self,
        *args: str,
        cluster: bool = False,
        monitors: RedisServer | tuple[str, int] | None = None,
        tls: TLSFiles | None = None,
        down_after_ms: int = 1000,
    ) -> None:
        if not redis_server_installed():
            raise RedisServerError(INSTALL_HINT)
        self.host = HOST
        self.args = list(args)
        self.cluster = cluster
        # A Sentinel (redis-server --sentinel) watching `monitors` as the
        # master of the service SENTINEL_SERVICE.
        self.monitors = monitors
        self.down_after_ms = down_after_ms
        self.tls = tls
        self.password: str | None = None
        if "--requirepass" in self.args:
            self.password = self.args[self.args.index("--requirepass") + 1]
        self.dir = Path(tempfile.mkdtemp(prefix="moka-py-redis-"))
        self._lock = threading.RLock()
        self._claim: PortClaim | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._paused = False
        self._admin: redis.Redis | None = None
        self._clients: list[redis.Redis] = []
        self._closed = False

    # -- addresses

    @property
    def port(self) -> int:
        if self._claim is None:
            raise RedisServerError("the server has not been started")
        return self._claim.port

    @property
    def url(self) -> str:
        """`redis://...`, or for TLS `rediss://...?ssl_ca_certs=...` with the
        client's certificate settings."""
        auth = f":{self.password}@" if self.password is not None else ""
        if self.tls is None:
            return f"redis://{auth}{self.host}:{self.port}/0"
        return f"rediss://{auth}{self.host}:{self.port}/0?{self.tls.url_query()}"

    @property
    def pid(self) -> int:
        """The pid (and process group) of the running server."""
        if self._proc is None:
            raise RedisServerError("the server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        port = self._claim.port if self._claim else None
        return f"<RedisServer {self.host}:{port} running={self.running}>"

    # -- life cycle

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> RedisServer:
        """Starts the server on a free port and waits until it answers PING."""
        with self._lock:
            if self._closed:
                raise RedisServerError("the server was closed")
            if self.running:
                return self
            for _ in range(20):
                if self._claim is None:
                    self._claim = free_port(cluster_bus=self.cluster)
                if self._spawn():
                    return self
                self._claim.release()  # someone else took it: another port
                self._claim = None
            raise RedisServerError("could not start redis-server: every port was in use")

    def restart(self, timeout: float = READY_TIMEOUT) -> None:
        """Ends the server (cleanly, if it runs) and starts a new process on the
        same port: a new run_id, an empty data set (nothing is persisted), the
        same cluster configuration for a cluster node."""
        with self._lock:
            if self._closed or self._claim is None:
                raise RedisServerError("restart() needs a started, not closed, server")
            if self.running:
                self.stop()
            deadline = time.monotonic() + timeout
            while not self._spawn():
                # The port is ours (flock), so only a foreign program can hold it.
                if time.monotonic() > deadline:
                    raise RedisServerError(f"port {self.port} stayed in use: cannot restart")
                time.sleep(0.1)

    def kill(self) -> None:
        """Ends the server at once (SIGKILL): clients see a dropped connection."""
        with self._lock:
            self._end(signal.SIGKILL)

    def stop(self) -> None:
        """Ends the server cleanly (SIGTERM; SIGKILL after STOP_TIMEOUT)."""
        with self._lock:
            self._end(signal.SIGTERM)

    def pause(self) -> None:
        """Freezes the server (SIGSTOP): connections stay open but nothing
        answers, so clients time out (with a socket_timeout) or hang."""
        with self._lock:
            os.killpg(self.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            if self._paused and self._proc is not None:
                os.killpg(self._proc.pid, signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        """Ends the server, closes the clients made by `client()` and removes
        the server's directory. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._end(signal.SIGTERM)
            for c in self._clients:
                c.close()
            self._clients.clear()
            if self._claim is not None:
                self._claim.release()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(self) -> bool:
        """Starts redis-server on self.port; False if that port is in use."""
        assert self._claim is not None
        argv = [binary("redis-server")]
        if self.monitors is not None:
            conf = self.dir / "sentinel.conf"  # a Sentinel rewrites its own
            service, master = SENTINEL_SERVICE, self.monitors
            host, port = (master.host, master.port) if isinstance(master, RedisServer) else master
            lines = [
                f"sentinel monitor {service} {host} {port} 1",
                f"sentinel down-after-milliseconds {service} {self.down_after_ms}",
            ]
            if isinstance(master, RedisServer) and master.password is not None:
                lines.append(f"sentinel auth-pass {service} {master.password}")
            conf.write_text("\n".join(lines) + "\n")
            argv += [str(conf), "--sentinel"]
        if self.tls is None:
            listen = ["--port", str(self._claim.port)]
        else:
            listen = ["--port", "0", "--tls-port", str(self._claim.port)]
            listen += self.tls.server_args()
            # A Sentinel reaches its master, and a replica its master, over TLS.
            listen += ["--tls-replication", "yes"]
            if self.cluster:
                listen += ["--tls-cluster", "yes"]
        argv += [
            "--bind", self.host,
            *listen,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            argv += ["--cluster-node-timeout", "5000"]
        argv += self.args
        log_path = self.dir / "redis.log"
        self._log = open(log_path, "ab")  # closed by _end
        offset = self._log.tell()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, out of the terminal's reach
        )
        _reaper.add(self._proc.pid, self.dir)
        with _live_lock:
            _live.add(self)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            reply = _ping_raw(self._claim.port, timeout=0.5, tls=self.tls)
            if self._proc.poll() is not None:
                log = log_path.read_bytes()[offset:].decode(errors="replace")
                self._end(signal.SIGKILL)
                if "Address already in use" in log:
                    return False
                raise RedisServerError(f"redis-server exited at start:\n{log[-3000:]}")
            # +PONG, or -NOAUTH with --requirepass: something answers (ours, as
            # the process_id check below confirms).
            if reply and not reply.startswith(b"-LOADING"):
                break
            if time.monotonic() > deadline:
                self._end(signal.SIGKILL)
                raise RedisServerError(f"redis-server did not answer within {READY_TIMEOUT} s")
            time.sleep(0.02)
        self._admin = redis.Redis(
            host=self.host,
            port=self._claim.port,
            password=self.password,
            client_name="moka-py-tests-admin",
            socket_timeout=STOP_TIMEOUT,
            socket_connect_timeout=STOP_TIMEOUT,
            decode_responses=True,
            **self._tls_kwargs(),
        )
        try:
            ours = int(self._admin.info("server")["process_id"]) == self._proc.pid
        except redis.RedisError:
            ours = False
        if not ours:  # another program's server answered on the port
            self._end(signal.SIGKILL)
            return False
        return True

    def _end(self, sig: signal.Signals) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    if self._paused:
                        os.killpg(proc.pid, signal.SIGCONT)  # SIGTERM waits for it otherwise
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            _reaper.discard(proc.pid)
        self._paused = False
        if self._log is not None:
            self._log.close()
            self._log = None
        with _live_lock:
            _live.discard(self)

    # -- clients

    def _tls_kwargs(self) -> dict[str, Any]:
        if self.tls is None:
            return {}
        return {"ssl": True, **self.tls.client_kwargs()}

    def _client_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("host", self.host)
        kwargs.setdefault("port", self.port)
        if self.password is not None:
            kwargs.setdefault("password", self.password)
        for k, v in self._tls_kwargs().items():
            kwargs.setdefault(k, v)
        return kwargs

    def client(self, **kwargs: Any) -> redis.Redis:
        """A `redis.Redis` for this server; `close()` closes it too."""
        c = redis.Redis(**self._client_kwargs(kwargs))
        with self._lock:
            self._clients.append(c)
        return c

    def async_client(self, **kwargs: Any) -> redis.asyncio.Redis:
        """A `redis.asyncio.Redis` for this server. It belongs to the event loop
        that uses it: the test closes it (`await client.aclose()`)."""
        return redis.asyncio.Redis(**self._client_kwargs(kwargs))

    @property
    def admin(self) -> redis.Redis:
        """A connection of the fixture's own (client name `moka-py-tests-admin`,
        decoded replies), which `client_kill` spares."""
        if self._admin is None:
            raise RedisServerError("the server is not running")
        return self._admin

    def run_id(self) -> str:
        return str(self.admin.info("server")["run_id"])

    def flushall(self) -> None:
        self.admin.flushall()

    def client_kill(self, **filters: str | int) -> int:
        """Drops the matching client connections (never the admin one) and
        returns how many. Filters are CLIENT KILL's (`id`, `type` such as
        "pubsub" or "normal", `user`, `addr`, `laddr`, `maxage`), plus `name`,
        the name a client set (CLIENT SETNAME, redis-py's `client_name=`),
        which CLIENT KILL itself does not offer before Redis 8."""
        name = filters.pop("name", None)
        if name is None:
            args: list[str | int] = []
            for k, v in filters.items():
                args += [k.upper(), v]
            return int(self.admin.execute_command("CLIENT", "KILL", *args, "SKIPME", "yes"))
        listed = self.admin.client_list(
            _type=str(filters.pop("type")) if "type" in filters else None
        )
        killed = 0
        for c in listed:
            if c["name"] != name:
                continue
            if any(str(c.get(k)) != str(v) for k, v in filters.items()):
                continue
            killed += int(
                self.admin.execute_command("CLIENT", "KILL", "ID", c["id"], "SKIPME", "yes")
            )
        return killed

    def acl_setuser(
        self,
        username: str,
        password: str,
        *,
        keys: tuple[str, ...] = ("users*",),
        channels: tuple[str, ...] = ("users*",),
        commands: tuple[str, ...] = ("+@all",),
    ) -> None:
        """Creates (or resets) an ACL user confined to the key patterns `keys`
        (`~users*`) and the channel patterns `channels` (`&users*`), allowed the
        `commands` rules. Users are not persisted: `restart()` drops them.
        Connect as that user with `client(username=..., password=...)`."""
        rules = ["reset", "on", f">{password}"]
        rules += [f"~{k}" for k in keys] + [f"&{c}" for c in channels] + list(commands)
        self.admin.execute_command("ACL", "SETUSER", username, *rules)


# ---------------------------------------------------------------- a cluster


class RedisCluster3:
    """A real cluster of three masters (no replicas) on 127.0.0.1, each a
    `RedisServer(cluster=True)` (in `.servers`, for fault injection), joined
    with `redis-cli --cluster create`. `start()` (or `with`) returns once every
    node reports cluster_state:ok and all agree on the slot map."""

    def __init__(self, *args: str, tls: TLSFiles | None = None) -> None:
        """`args` go to each node's redis-server (a `--requirepass` is used by
        `redis-cli --cluster create` and the clients too). `tls=TLSFiles`: a
        TLS-only cluster, its bus included (`--tls-cluster yes`)."""
        self.tls = tls
        self.servers = [RedisServer(*args, cluster=True, tls=tls) for _ in range(3)]
        self._clients: list[redis.cluster.RedisCluster] = []
        self._lock = threading.Lock()

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [(s.host, s.port) for s in self.servers]

    def __enter__(self) -> RedisCluster3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = CLUSTER_READY_TIMEOUT) -> RedisCluster3:
        try:
            for s in self.servers:
                s.start()
            create = subprocess.run(
                [
                    binary("redis-cli"),
                    *self._auth_args(),
                    *(self.tls.cli_args() if self.tls else []),
                ]
                + ["--cluster", "create"]
                + [f"{h}:{p}" for h, p in self.nodes]
                + ["--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if create.returncode != 0:
                raise RedisServerError(
                    f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}"
                )
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _auth_args(self) -> list[str]:
        password = self.servers[0].password
        return [] if password is None else ["--no-auth-warning", "-a", password]

    def _slot_map(self, s: RedisServer) -> list[tuple[int, int, int]]:
        return sorted(
            (int(r[0]), int(r[1]), int(r[2][1])) for r in s.admin.execute_command("CLUSTER SLOTS")
        )

    def wait_ready(self, timeout: float = CLUSTER_READY_TIMEOUT) -> None:
        """Waits until every running node reports cluster_state:ok, knows all
        three nodes and has the same slot map, covering all 16384 slots."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                live = [s for s in self.servers if s.running]
                infos = [s.admin.cluster("INFO") for s in live]
                maps = [self._slot_map(s) for s in live]
                if (
                    all(i["cluster_state"] == "ok" for i in infos)
                    and all(int(i["cluster_known_nodes"]) == 3 for i in infos)
                    and all(m == maps[0] for m in maps)
                    and sum(e - b + 1 for b, e, _ in maps[0]) == 16384
                ):
                    return
                last = f"{infos} {maps}"
            except redis.RedisError as e:
                last = repr(e)
            if time.monotonic() > deadline:
                raise RedisServerError(f"cluster not ready within {timeout} s: {last}")
            time.sleep(0.05)

    def masters(self) -> list[tuple[str, int]]:
        """The (host, port) of each master, as a running node sees them."""
        for s in self.servers:
            if s.running:
                nodes = s.admin.execute_command("CLUSTER NODES")
                return sorted(
                    (HOST, int(addr.split("@")[0].rsplit(":", 1)[1]))
                    for addr, n in nodes.items()
                    if "master" in n["flags"] and "fail" not in n["flags"]
                )
        raise RedisServerError("no node is running")

    def _startup_nodes(self, kwargs: dict[str, Any], node_class: Any) -> dict[str, Any]:
        kwargs.setdefault("startup_nodes", [node_class(h, p) for h, p in self.nodes])
        password = self.servers[0].password
        if password is not None:
            kwargs.setdefault("password", password)
        for k, v in self.servers[0]._tls_kwargs().items():
            kwargs.setdefault(k, v)
        return kwargs

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A `redis.cluster.RedisCluster`; `stop()` closes it too."""
        c = redis.cluster.RedisCluster(**self._startup_nodes(kwargs, redis.cluster.ClusterNode))
        with self._lock:
            self._clients.append(c)
        return c

    def async_client(self, **kwargs: Any) -> redis.asyncio.cluster.RedisCluster:
        """A `redis.asyncio.cluster.RedisCluster`; the test closes it
        (`await client.aclose()`)."""
        return redis.asyncio.cluster.RedisCluster(
            **self._startup_nodes(kwargs, redis.asyncio.cluster.ClusterNode)
        )

    def flushall(self) -> None:
        for s in self.servers:
            if s.running:
                s.flushall()

    def stop(self) -> None:
        """Ends every node and closes the clients made by `client()`."""
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()
        for s in self.servers:
            s.close()
