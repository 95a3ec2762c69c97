"""A real redis-server (and optionally a Sentinel) on loopback for tests.

Usage, in a test module or a conftest::

    @pytest.fixture(scope="module")
    def redis_server() -> Iterator[RedisServer]:
        with RedisServer() as server:
            yield server

API of `RedisServer(port=None, *, tls=False, password=None)`:

- ``url``: ``redis://127.0.0.1:PORT/0`` (with the password when one is set); ``host``,
  ``port``. With ``tls=True`` the server also listens with TLS on ``tls_port``
  (``tls_url`` is ``rediss://127.0.0.1:TLS_PORT/0``), its certificate issued for
  127.0.0.1 by a per-server CA written to ``ca_file``; clients need no certificate.
- ``start()`` (also done by ``with``) runs the server in the foreground as a child
  process, in a private temporary directory, without persistence (``--save ""
  --appendonly no``), and returns once it answers PING (polled until
  ``STARTUP_TIMEOUT``; the log is in the error if it never does).
- ``stop()`` terminates it (data is gone); ``restart()`` stops and starts it again on
  the same port(s), for reconnection tests; ``running`` tells whether it is up.
- ``flush()`` empties every database; ``client()`` is a synchronous ``redis.Redis``
  for assertions (the caller closes it).
- ``close()`` (also on leaving ``with``) stops the server and removes its directory.

`RedisSentinel(master, service_name="mymaster")` runs ``redis-server --sentinel``
monitoring ``master`` (quorum 1) and returns once it names the master's address;
``address`` is ``"127.0.0.1:PORT"`` for ``RedisSettings.sentinels``. Same ``start``,
``stop``, ``close`` and context manager.

Requires the Debian package ``redis-server`` (``make test`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.support.ports import free_port
from tests.support.process import ManagedServer
from tests.support.slapd import CertificateAuthority

REDIS_SERVER = Path("/usr/bin/redis-server")
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.01


class _Process(ManagedServer):
    """One redis-server child process in its own temporary directory."""

    name = "redis"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"mfaproxy-{self.name}-"))
        self.log_file = self.dir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        if self.running:
            return
        if not REDIS_SERVER.exists():
            raise RuntimeError(f"{REDIS_SERVER} is missing: apt-get install redis-server")
        self._process = subprocess.Popen(
            [str(REDIS_SERVER), *self._argv()],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._ready():
                return
            time.sleep(POLL_INTERVAL)  # polling interval, not a synchronisation delay
        log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready:\n{log[-4000:]}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _answers(client: redis.Redis, check: Callable[[redis.Redis], object]) -> bool:
    try:
        return bool(check(client))
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class RedisServer(_Process):
    name = "redis"

    def __init__(
        self, port: int | None = None, *, tls: bool = False, password: str | None = None
    ) -> None:
        super().__init__()
        self.host = HOST
        self.port = port or free_port()
        self.password = password
        self.tls_port: int | None = None
        self.ca_file: Path | None = None
        if tls:
            self.tls_port = free_port()
            authority = CertificateAuthority.create("mfaproxy redis test CA")
            self.ca_file = authority.write(self.dir / "ca.pem")
            authority.issue_server(self.dir / "server.pem", self.dir / "server.key")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this server was created without tls=True")
        return f"rediss://{self.host}:{self.tls_port}/0"

    def _argv(self) -> list[str]:
        argv = [
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.log_file),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        if self.tls_port is not None:
            argv += [
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", str(self.dir / "server.pem"),
                "--tls-key-file", str(self.dir / "server.key"),
                "--tls-ca-cert-file", str(self.ca_file),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        return argv

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
        )

    def _ready(self) -> bool:
        return _answers(self.client(), lambda c: c.ping())

    def flush(self) -> None:
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def restart(self) -> None:
        self.stop()
        self.start()


class RedisSentinel(_Process):
    name = "sentinel"

    def __init__(self, master: RedisServer, service_name: str = "mymaster") -> None:
        super().__init__()
        self.master = master
        self.service_name = service_name
        self.port = free_port()
        # Sentinel rewrites its configuration file, so it must be writable.
        self.config_file = self.dir / "sentinel.conf"
        lines = [
            f"bind {HOST}",
            f"port {self.port}",
            f'dir "{self.dir}"',
            f'logfile "{self.log_file}"',
            f"sentinel monitor {service_name} {master.host} {master.port} 1",
        ]
        if master.password:
            lines.append(f"sentinel auth-pass {service_name} {master.password}")
        self.config_file.write_text("\n".join(lines) + "\n")

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _argv(self) -> list[str]:
        return [str(self.config_file), "--sentinel"]

    def _ready(self) -> bool:
        client = redis.Redis(
            host=HOST, port=self.port, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        return _answers(client, lambda c: c.sentinel_get_master_addr_by_name(self.service_name))
