"""A real PostgreSQL server on loopback for tests.

Usage, in a test module or a conftest::

    @pytest.fixture(scope="module")
    def postgres() -> Iterator[PostgresServer]:
        with PostgresServer() as server:
            yield server

API of `PostgresServer()`:

- ``dsn``: ``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust authentication,
  superuser ``postgres``); ``host``, ``port``, ``data_dir``.
- ``start()`` (also done by ``with``) creates the cluster with ``initdb`` the first time,
  runs ``postgres`` in the foreground as a child process listening on 127.0.0.1 and a
  free port only (no Unix socket), and returns once a connection succeeds (polled until
  ``STARTUP_TIMEOUT``; the server log is in the error if it never does).
- ``stop()`` shuts it down ("fast" mode: clients are disconnected); the data stays.
  ``restart()`` stops and starts it again on the same port and data, for reconnection
  tests; ``running`` tells whether it is up.
- ``connect()`` is an autocommit `psycopg.Connection` as the superuser (caller closes).
- ``close()`` (also on leaving ``with``) stops the server and removes its directory.

The cluster is for tests only: ``fsync``, ``full_page_writes`` and
``synchronous_commit`` are off, so a crash of the machine may lose it.

PostgreSQL refuses to run as root. When the tests run as root (CI containers), initdb
and postgres run as the ``postgres`` system user that the Debian package creates (or
``nobody``), switched to by `subprocess` itself, so neither sudo, runuser nor setpriv
is needed; the temporary directory is then created where that user can reach it and
handed over to it.

Requires the Debian package ``postgresql`` (binaries under /usr/lib/postgresql/VERSION/bin;
``PG_BINDIR`` in the environment overrides the directory) and psycopg.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
from psycopg.rows import TupleRow

from tests.support.ports import free_port
from tests.support.process import ManagedServer

POSTGRES_ROOT = Path("/usr/lib/postgresql")
HOST = "127.0.0.1"
SUPERUSER = "postgres"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.02
UNPRIVILEGED_USERS = ("postgres", "nobody")

# Test speed over durability; one line each so the log shows what was asked for.
SETTINGS = {
    "listen_addresses": HOST,
    "unix_socket_directories": "",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "shared_buffers": "32MB",
    "max_connections": "100",
    "log_min_messages": "warning",
    "log_destination": "stderr",
    "logging_collector": "off",
}


def find_bindir() -> Path:
    """The newest installed PostgreSQL's bin directory (or ``$PG_BINDIR``)."""
    override = os.environ.get("PG_BINDIR")
    candidates = [Path(override)] if override else _installed_bindirs()
    for bindir in candidates:
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    raise RuntimeError(
        "PostgreSQL server binaries not found under /usr/lib/postgresql: "
        "apt-get install postgresql (or set PG_BINDIR)"
    )


def _installed_bindirs() -> list[Path]:
    if not POSTGRES_ROOT.is_dir():
        return []
    versions = [p for p in POSTGRES_ROOT.iterdir() if p.name.split(".")[0].isdigit()]
    versions.sort(key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()))
    return [p / "bin" for p in reversed(versions)]


@dataclass(frozen=True)
class _Account:
    """Who the server processes run as: ourselves, or an unprivileged user when root."""

    uid: int
    gid: int

    @classmethod
    def for_server(cls) -> _Account | None:
        if os.geteuid() != 0:
            return None  # run as ourselves
        for name in UNPRIVILEGED_USERS:
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return cls(entry.pw_uid, entry.pw_gid)
        raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run as")


def _reachable_by_others(directory: Path) -> bool:
    """Whether every directory from / down to `directory` lets others traverse it."""
    path = directory.resolve()
    return all(part.stat().st_mode & stat.S_IXOTH for part in (path, *path.parents))


class PostgresServer(ManagedServer):
    """A postgres subprocess; a context manager that starts it and always cleans up."""

    def __init__(self) -> None:
        self._bindir = find_bindir()
        self._account = _Account.for_server()
        base = Path(tempfile.gettempdir())
        if self._account is not None and not _reachable_by_others(base):
            base = Path("/tmp")  # world-traversable (mode 1777)
        self.root = Path(tempfile.mkdtemp(prefix="mfaproxy-pg-", dir=base))
        if self._account is not None:
            os.chown(self.root, self._account.uid, self._account.gid)
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self.host = HOST
        self.port = free_port()
        self.dsn = f"postgresql://{SUPERUSER}@{HOST}:{self.port}/postgres"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        command = [str(self._bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for name, value in SETTINGS.items():
            command += ["-c", f"{name}={value}"]
        with self.log_file.open("ab") as log:
            self._process = self._spawn(command, log)
        self._wait_ready()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)  # fast shutdown: roll back, disconnect, exit
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self) -> psycopg.Connection[TupleRow]:
        """A superuser connection in autocommit mode; the caller closes it."""
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ internals

    def _initdb(self) -> None:
        command = [
            str(self._bindir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",  # the cluster is disposable
        ]
        with self.log_file.open("ab") as log:
            process = self._spawn(command, log)
            try:
                code = process.wait(timeout=STARTUP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
        if code != 0:
            raise RuntimeError(f"initdb failed with status {code}:\n{self.log()}")

    def _spawn(self, command: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        # A clean environment: PGDATA, PGPORT and the like must not redirect the server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        account = self._account
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,  # the caller's directory may be closed to the server's user
            env=env,
            user=None if account is None else account.uid,
            group=None if account is None else account.gid,
            extra_groups=None if account is None else [],
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        process = self._process
        assert process is not None
        error: Exception | None = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with status {process.returncode}:\n{self.log()}"
                )
            try:
                with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:  # not listening yet, or starting up
                error = exc
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=POLL_INTERVAL)
        self.stop()
        raise RuntimeError(f"postgres not ready after {STARTUP_TIMEOUT} s ({error}):\n{self.log()}")
