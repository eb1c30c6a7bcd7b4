"""Processes the benchmarks start: the Cobalt simulator, a private redis-server and PostgreSQL."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(process: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} is not listening on port {port} after {START_TIMEOUT} s")
        time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


@dataclass(frozen=True, slots=True)
class Simulator:
    url: str
    """Base URL, ending in ``/v1``."""
    pid: int

    def cpu_seconds(self) -> float | None:
        """CPU time the simulator process used so far (Linux ``/proc``), else ``None``."""
        return process_cpu_seconds(self.pid)


def process_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def simulator(latency: float = 0.001, *, cli: bool = False) -> Iterator[Simulator]:
    """
    FakeCobalt under uvicorn in a process of its own, so that the server's CPU does not
    compete with the client's event loop. It delivers no webhooks (none are needed here).

    With *cli*, ``python -m cobalt_async simulate`` itself; else ``bench._simserver``, the
    same app on a socket with ``TCP_NODELAY`` (the command line's socket stalls each
    keep-alive request on a delayed ACK, which would hide the client's costs).
    """
    port = free_port()
    if cli:
        command = [
            sys.executable, "-m", "cobalt_async", "simulate",
            "--port", str(port), "--latency", str(latency), "--seed", "1",
        ]  # fmt: skip
    else:
        command = [sys.executable, "-m", "bench._simserver", str(port), str(latency)]
    # The command line logs a line per request: to nowhere, as a full pipe would stall it.
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_listening(process, port, "the simulator")
        yield Simulator(f"http://127.0.0.1:{port}/v1", process.pid)
    finally:
        _stop(process)


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, in a temporary directory."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="cobalt-bench-redis-") as directory:
        port = free_port()
        command = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", directory,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(Path(directory) / "redis.log"),
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        try:
            _wait_listening(process, port, "redis-server")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            _stop(process)


def postgres_bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: the PATH, else Debian's versioned directory."""
    found = shutil.which("initdb") or max(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[4]),
        default=None,
    )
    return None if found is None else Path(found).resolve().parent


@contextmanager
def postgres_server() -> Iterator[str]:
    """
    A throwaway PostgreSQL cluster on a free loopback port, in a temporary directory; its DSN.

    ``initdb`` refuses root: as root, the cluster belongs to an unprivileged user.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL's initdb is not on PATH (apt-get install postgresql)")
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        owner = next(user for user in map(_user, ("postgres", "cloudsdk", "nobody")) if user)
        prefix = ["runuser", "-u", owner.pw_name, "--"]
    directory = Path(tempfile.mkdtemp(prefix="cobalt-bench-pg-"))
    data, port = directory / "data", free_port()

    def pg(binary: str, *args: str) -> None:
        subprocess.run(
            [*prefix, str(bin_dir / binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=START_TIMEOUT * 2,
            check=True,
        )

    try:
        if owner is not None:
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        pg("initdb", "-D", str(data), "-U", "bench", "--auth=trust", "--no-sync")
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={directory}"
            " -c fsync=off"
        )
        log = str(directory / "postgres.log")
        pg("pg_ctl", "start", "-D", str(data), "-l", log, "-o", options, "-w")
        try:
            yield f"postgresql://bench@127.0.0.1:{port}/postgres"
        finally:
            pg("pg_ctl", "stop", "-D", str(data), "-m", "immediate", "-w")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None
