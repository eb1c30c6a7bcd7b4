"""
A pytest plugin that runs private PostgreSQL clusters for the PostgreSQL sink tests.

``postgres_server`` is one cluster for the whole session (tests that never stop it);
``fresh_postgres_server`` is a cluster of its own for a test that stops or restarts it. Each is
made by ``initdb`` in a temporary directory and run by ``pg_ctl`` on a free loopback port, with
a password required over TCP (so that the tests see a DSN with a password, as in production),
and is always stopped on teardown. ``initdb`` refuses to run as root: as root, the cluster
belongs to an unprivileged user (``postgres`` when it exists, else ``cloudsdk`` or
``nobody``) and every command runs as that user. Without the binaries the tests are skipped,
except under ``CI=true``, where they fail: a missing install step must not pass as green.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port

START_TIMEOUT = 30
STOP_TIMEOUT = 30
UNPRIVILEGED_USERS = ("postgres", "cloudsdk", "nobody")


def postgres_bin_dir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are; skip the test without them, or fail it under CI."""
    found = shutil.which("initdb")
    if found is None:
        # Debian and Ubuntu keep them off the PATH, under the major version: the newest.
        installed = glob.glob("/usr/lib/postgresql/*/bin/initdb")
        found = max(installed, key=lambda path: int(Path(path).parts[4]), default=None)
    if found is None:
        msg = "PostgreSQL's initdb is not on PATH (apt-get install postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{msg}; under CI=true this is a failure, not a skip", pytrace=False)
        pytest.skip(msg)
    return Path(found).resolve().parent


def _run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs as an unprivileged user (none when not root), and who."""
    if os.geteuid() != 0:
        return [], None
    for name in UNPRIVILEGED_USERS:
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"], user
    msg = f"running as root, and none of the users {UNPRIVILEGED_USERS} exists to run PostgreSQL"
    raise RuntimeError(msg)


class PostgresServer:
    """One private PostgreSQL cluster: its directory, port, superuser and password."""

    def __init__(self, bin_dir: Path, directory: Path) -> None:
        self.bin_dir = bin_dir
        self.dir = directory
        self.data = directory / "data"
        self.port = free_port()
        self.user = "cobalt_admin"
        self.password = f"pw-{uuid.uuid4().hex}"
        self.database = "postgres"
        self.starts = 0
        self._prefix, self._owner = _run_as()

    def __repr__(self) -> str:
        return f"<PostgresServer 127.0.0.1:{self.port} dir={str(self.dir)!r}>"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    def _command(self, binary: str, *args: str, timeout: float) -> None:
        done = subprocess.run(
            [*self._prefix, str(self.bin_dir / binary), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            msg = f"{binary} {args[0]} exited with {done.returncode}: {done.stderr[-1500:]}"
            raise RuntimeError(f"{msg}\n{self._log_tail()}")

    def init(self) -> None:
        """Make the cluster: ``initdb``, with scram passwords over TCP."""
        if self._owner is not None:
            os.chown(self.dir, self._owner.pw_uid, self._owner.pw_gid)
        password_file = self.dir / "password"
        password_file.write_text(self.password)
        if self._owner is not None:
            os.chown(password_file, self._owner.pw_uid, self._owner.pw_gid)
        self._command(
            "initdb",
            "-D", str(self.data),
            "-U", self.user,
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E", "UTF8",
            "--no-sync",
            timeout=START_TIMEOUT,
        )  # fmt: skip
        password_file.unlink()

    def start(self) -> None:
        """Start the cluster and return once it accepts connections (bounded)."""
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.dir}",
                "-c max_connections=200",
                # Nothing here outlives the machine: a crash of the server process loses
                # nothing without fsync, only a crash of the kernel would.
                "-c fsync=off",
            ]
        )
        self._command(
            "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log_path), "-o", options,
            "-w", "-t", str(START_TIMEOUT), timeout=START_TIMEOUT + 5,
        )  # fmt: skip
        self.starts += 1

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is cut, the data stays."""
        # The server's options are remembered (postmaster.opts); its log file is not, and
        # without one the server would hold this process's pipes open.
        self._command(
            "pg_ctl", "restart", "-D", str(self.data), "-l", str(self.log_path), "-m", "fast", "-w",
            "-t", str(START_TIMEOUT), timeout=START_TIMEOUT + STOP_TIMEOUT,
        )  # fmt: skip
        self.starts += 1

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop``; ``mode="immediate"`` is a crash (recovered from at the next start)."""
        self._command(
            "pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", str(STOP_TIMEOUT),
            timeout=STOP_TIMEOUT + 5,
        )  # fmt: skip

    @property
    def running(self) -> bool:
        return self._postmaster_pid() is not None

    def _postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def kill(self) -> None:
        """Whatever happens, leave no server running: stop it, or SIGKILL its postmaster."""
        if not self.running:
            return
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pid = self._postmaster_pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def _serve() -> Iterator[PostgresServer]:
    bin_dir = postgres_bin_dir()
    # Not pytest's tmp_path: its parents are closed to the unprivileged user.
    directory = Path(tempfile.mkdtemp(prefix="cobalt-pg-"))
    server = PostgresServer(bin_dir, directory)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster shared by the session: never stop or restart this one."""
    yield from _serve()


@pytest.fixture
def fresh_postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test alone, which it may stop and restart."""
    yield from _serve()


@pytest.fixture
def postgres_schema() -> str:
    """A schema no other test uses, so tests sharing a cluster never see each other."""
    return f"t_{uuid.uuid4().hex[:12]}"
