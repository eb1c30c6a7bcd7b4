"""
A pytest plugin that runs real ``redis-server`` processes for the Redis sink tests.

``redis_server`` is one server for the whole session (tests that never kill it);
``fresh_redis_server`` is a server of its own for a test that kills or restarts it.
Both listen on a free loopback port, keep an append-only file fsynced on every write in a
private ``--dir``, and are always stopped on teardown. Without a ``redis-server`` binary
the tests are skipped, except under ``CI=true``, where they fail: a missing install step
must not pass as green.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def redis_server_binary() -> str:
    """The path of ``redis-server``; skip the test without it, or fail it under CI."""
    binary = shutil.which("redis-server")
    if binary is None:
        msg = "redis-server is not on PATH (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{msg}; under CI=true this is a failure, not a skip", pytrace=False)
        pytest.skip(msg)
    return binary


class RedisServer:
    """One ``redis-server`` process on a fixed loopback port and data directory."""

    def __init__(
        self, binary: str, directory: Path, *, persistent: bool = True, cluster: bool = False
    ) -> None:
        self.binary = binary
        self.dir = directory
        self.persistent = persistent
        self.cluster = cluster
        # A cluster node also listens on its port + 10,000, so Redis refuses ports above 55535.
        self.port = free_port(highest=55535) if cluster else free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.url} dir={str(self.dir)!r} {state}>"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def start(self) -> None:
        """Start the server and return once it answers PING (bounded)."""
        if self.running:
            msg = f"{self!r} is already running"
            raise RuntimeError(msg)
        command = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.cluster:
            command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        self.starts += 1
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process is not None and self.process.poll() is not None:
                msg = f"redis-server exited with {self.process.returncode}: {self._log_tail()}"
                raise RuntimeError(msg)
            if self.ping():
                return
            if time.monotonic() > deadline:
                msg = f"redis-server did not answer PING in {START_TIMEOUT} s: {self._log_tail()}"
                raise RuntimeError(msg)
            time.sleep(0.02)

    def ping(self, timeout: float = 0.5) -> bool:
        """Whether the server answers PING now (a raw socket: no client library needed)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT)
        self.process = None

    def restart(self) -> None:
        """Kill if running, then start again on the same port and directory (its AOF)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop gracefully if possible, else kill."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        self.process = None

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def _serve(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(redis_server_binary(), directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server shared by the session: never kill or restart this one."""
    yield from _serve(tmp_path_factory.mktemp("redis"))


@pytest.fixture
def fresh_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which it may kill and restart."""
    directory = tmp_path / "redis"
    directory.mkdir()
    yield from _serve(directory)


@pytest.fixture
def volatile_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server without persistence: a restart empties it, as a crash of such a one does."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(redis_server_binary(), directory, persistent=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_namespace() -> str:
    """A namespace no other test uses, so tests sharing a server never see each other."""
    return f"t-{uuid.uuid4().hex[:12]}"
