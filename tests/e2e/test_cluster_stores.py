"""End to end: the shared stores failing under running daemons, and `server.workers`.

Real redis-server and PostgreSQL, started for this module and stopped, restarted and
started again by the tests. `store_failmode: secure` (the default) rejects while a store
is down, `safe` accepts on the password alone; both log and meter it, /readyz answers
503 naming the store, and service comes back by itself when the store does. Then one
supervisor with two workers on one port (SO_REUSEPORT) sharing Redis and PostgreSQL: a
challenge issued by one worker is answered by the other, reloads and stops are passed
on.

Two daemons answering for each other are in test_cluster.py.
"""

from __future__ import annotations

import signal
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Literal

import pytest
from pyrad import packet as pyrad_packet

from tests.support.cluster import (
    SECRET,
    Cluster,
    answer,
    count_events,
    first_round,
    free_port_pair,
    new_schema,
    password,
    total,
    wait_new,
    wait_until,
)
from tests.support.daemon import Daemon
from tests.support.duo_fake import FakeDuo
from tests.support.nas import DICTIONARY, Reply, UdpNas, access_request, exchange, login
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

USERS = ["erin", "frank", "gina", "hank", "ivan", "jack", "w1", "w2", "w3", "w4"]
USERS += ["w5", "s1", "s2", "s3", "s4", "s5"]  # s: the workers on the host's SQLite file
REJECTED = "mfaproxy_store_failmode_total{action=rejected}"
ACCEPTED = "mfaproxy_store_failmode_total{action=accepted}"
REQUESTS = "mfaproxy_requests_total"
RECOVERY_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster-stores")
    with RedisServer() as redis, FakeDuo() as duo:
        shared = Cluster(tmp, redis, new_schema(postgres, "stores"), duo, USERS, {})
        try:
            shared.setup()
            yield shared
        finally:
            shared.close()


class Instance:
    """A running daemon, its metrics port and a NAS socket pointed at it."""

    def __init__(self, cluster: Cluster, name: str, failmode: Literal["secure", "safe"]):
        self.metrics = free_port_pair()
        self.daemon = cluster.daemon(
            name, store_failmode=failmode, metrics={"listen": f"127.0.0.1:{self.metrics}"}
        )
        self.daemon.start()
        self.nas = UdpNas(self.daemon.port)

    def close(self) -> None:
        self.nas.close()
        self.daemon.stop()


@pytest.fixture(scope="module")
def secure(cluster: Cluster) -> Iterator[Instance]:
    instance = Instance(cluster, "secure", "secure")
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def safe(cluster: Cluster, secure: Instance) -> Iterator[Instance]:
    instance = Instance(cluster, "safe", "safe")
    yield instance
    instance.close()


def readyz(instance: Instance) -> tuple[int, str]:
    url = f"http://127.0.0.1:{instance.metrics}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def challenged_again(instance: Instance, user: str) -> Reply:
    """Bounded polling (for recovery): first rounds until one is a challenge."""

    def attempt() -> Reply | None:
        reply = first_round(instance.nas, user)
        return reply if reply.challenged else None

    return wait_until(attempt, f"{user} to be challenged again", RECOVERY_TIMEOUT)


def test_redis_restarted_mid_test_is_invisible(cluster: Cluster, secure: Instance) -> None:
    challenge = first_round(secure.nas, "erin")
    assert challenge.challenged
    cluster.redis.restart()  # same port, empty: the challenge above is gone with it
    lost = answer(secure.nas, "erin", challenge, cluster.code("erin"))
    assert lost.rejected, lost.message
    # Redis answered (empty): not a store failure, the restart itself went unnoticed.
    secure.daemon.wait_audit(login_name="erin", outcome="reject", reason="unknown_state")
    # A new login right after the restart: the broken connections are replaced at once.
    reply = login(secure.nas, SECRET, "erin", password("erin"), cluster.code("erin"))
    assert reply.accepted, reply.message


def test_redis_down_secure_rejects_safe_accepts_then_both_recover(
    cluster: Cluster, secure: Instance, safe: Instance
) -> None:
    rejected, accepted = total(secure.metrics, REJECTED), total(safe.metrics, ACCEPTED)
    marks = len(secure.daemon.events), len(safe.daemon.events)
    cluster.redis.stop()
    try:
        down = first_round(secure.nas, "frank")
        assert down.rejected, down.message
        secure.daemon.wait_audit(login_name="frank", outcome="reject", reason="store_unavailable")
        wait_new(secure.daemon, marks[0], "store_unavailable", failmode="secure")
        wait_new(secure.daemon, marks[0], "state_store_down")
        assert total(secure.metrics, REJECTED) == rejected + 1
        # A load balancer's health check takes the instance out (both failmodes).
        for instance in (secure, safe):
            status, reason = readyz(instance)
            assert (status, reason.split(":")[0]) == (503, "state store unavailable"), reason

        # safe: the right password alone is enough while the store is down...
        ok = first_round(safe.nas, "gina")
        assert ok.accepted, ok.message
        safe.daemon.wait_audit(login_name="gina", outcome="accept", reason="store_failmode_safe")
        wait_new(safe.daemon, marks[1], "store_unavailable", failmode="safe")
        assert total(safe.metrics, ACCEPTED) == accepted + 1
        # ...but a wrong one is not.
        assert first_round(safe.nas, "gina", "not-the-password").rejected
    finally:
        cluster.redis.start()

    challenge = challenged_again(secure, "frank")
    done = answer(secure.nas, "frank", challenge, cluster.code("frank"))
    assert done.accepted, done.message
    wait_new(secure.daemon, marks[0], "state_store_up")
    assert readyz(secure) == (200, "ok\n")
    # The safe instance asks for the second factor again: no lasting bypass.
    assert challenged_again(safe, "gina").challenged
    assert total(safe.metrics, ACCEPTED) == accepted + 1


def test_postgres_down_secure_rejects_safe_accepts_then_both_recover(
    cluster: Cluster, postgres: PostgresServer, secure: Instance, safe: Instance
) -> None:
    rejected, accepted = total(secure.metrics, REJECTED), total(safe.metrics, ACCEPTED)
    marks = len(secure.daemon.events), len(safe.daemon.events)
    postgres.stop()  # data kept: enrolments are back when it returns
    try:
        down = first_round(secure.nas, "hank")
        assert down.rejected, down.message
        secure.daemon.wait_audit(login_name="hank", outcome="reject", reason="store_unavailable")
        wait_new(secure.daemon, marks[0], "store_unavailable", failmode="secure")
        assert total(secure.metrics, REJECTED) == rejected + 1
        status, reason = readyz(secure)
        assert (status, reason.split(":")[0]) == (503, "user store unavailable"), reason

        ok = first_round(safe.nas, "ivan")
        assert ok.accepted, ok.message
        safe.daemon.wait_audit(login_name="ivan", outcome="accept", reason="store_failmode_safe")
        assert total(safe.metrics, ACCEPTED) == accepted + 1
    finally:
        postgres.start()

    challenge = challenged_again(secure, "hank")
    done = answer(secure.nas, "hank", challenge, cluster.code("hank"))
    assert done.accepted, done.message
    assert readyz(secure) == (200, "ok\n")
    assert challenged_again(safe, "ivan").challenged


def test_postgres_statement_error_is_an_outage_with_one_audit_event(
    postgres: PostgresServer, secure: Instance
) -> None:
    """The server answers but refuses the statement (psycopg's UndefinedTable, not a
    connection error): the failmode answers, one audit event, no internal_error."""
    rejected = total(secure.metrics, REJECTED)
    with postgres.connect() as conn:
        conn.execute("ALTER TABLE stores.users RENAME TO users_elsewhere")
    try:
        down = first_round(secure.nas, "jack")
        assert down.rejected, down.message
        event = secure.daemon.wait_audit(login_name="jack", reason="store_unavailable")
    finally:
        with postgres.connect() as conn:
            conn.execute("ALTER TABLE stores.users_elsewhere RENAME TO users")
    assert len(secure.daemon.audit(request_id=event["request_id"])) == 1
    assert total(secure.metrics, REJECTED) == rejected + 1
    assert not [e for e in secure.daemon.events if e.get("event") == "request_failed"]
    assert first_round(secure.nas, "jack").challenged  # and back once the table is


# --------------------------------------------------------------------------- workers


def status_server(nas: UdpNas) -> Reply:
    request = pyrad_packet.AuthPacket(
        code=pyrad_packet.StatusServer, secret=SECRET.encode(), dict=DICTIONARY
    )
    request.add_message_authenticator()
    return exchange(nas, SECRET, request)


class Workers:
    """Two NAS sockets, each routed by the kernel (SO_REUSEPORT hashes the source
    address and port) to a different worker; `metrics + i` is worker i's page."""

    def __init__(self, port: int, metrics: int):
        self.metrics = metrics
        self.nas: dict[int, UdpNas] = {}
        spare: list[UdpNas] = []
        for _ in range(64):  # a 2^-63 chance of never meeting one of the two workers
            nas = UdpNas(port)
            worker = self.serving(nas, lambda n: status_server(n).accepted)
            if worker in self.nas:
                spare.append(nas)
            else:
                self.nas[worker] = nas
            if len(self.nas) == 2:
                break
        for nas in spare:
            nas.close()
        assert sorted(self.nas) == [0, 1], "the kernel sent every socket to one worker"

    def requests(self) -> list[float]:
        return [total(self.metrics + i, REQUESTS) for i in (0, 1)]

    def serving(self, nas: UdpNas, step: Callable[[UdpNas], bool]) -> int:
        """Run `step(nas)` (one request); return the worker that counted it."""
        before = self.requests()
        assert step(nas)
        after = self.requests()
        moved = [i for i in (0, 1) if after[i] > before[i]]
        assert len(moved) == 1, (before, after)
        return moved[0]

    def close(self) -> None:
        for nas in self.nas.values():
            nas.close()


def cross_worker_login(cluster: Cluster, workers: Workers, user: str, first: int) -> None:
    """The password to worker `first`, the answer to the other one: Accept."""
    replies: list[Reply] = []

    def password_round(nas: UdpNas) -> bool:
        replies.append(first_round(nas, user))
        return replies[-1].challenged

    def answer_round(nas: UdpNas) -> bool:
        replies.append(answer(nas, user, replies[0], cluster.code(user)))
        return True

    assert workers.serving(workers.nas[first], password_round) == first
    assert workers.serving(workers.nas[1 - first], answer_round) == 1 - first
    assert replies[-1].accepted, replies[-1].message


REPLAYED = "mfaproxy_packets_dropped_total{reason=replayed}"


def retransmitted(nas: UdpNas, data: bytes, attempts: int = 40) -> bytes:
    """Send `data` again every 0.25 s until an answer comes (at most `attempts`)."""
    timeout = nas.sock.gettimeout()
    nas.sock.settimeout(0.25)
    try:
        for _ in range(attempts):
            nas.send(data)
            try:
                return nas.receive()
            except TimeoutError:
                continue
    finally:
        nas.sock.settimeout(timeout)
    raise AssertionError(f"no answer to {attempts} retransmissions")


def retransmitted_then_replayed(workers: Workers, user: str) -> None:
    """A retransmission reaches its own worker and gets the very same reply; the same
    datagram from another port (to the other worker) is a replay: dropped, counted."""
    request = access_request(SECRET, user, password(user))
    data = request.RequestPacket()
    workers.nas[0].send(data)
    first = workers.nas[0].receive()
    assert Reply(first, SECRET).challenged
    # from worker 0's reply cache (with Redis the reply is stored just after it is sent:
    # a copy that comes first is ignored as in flight, so retransmit as a NAS does)
    assert retransmitted(workers.nas[0], data) == first
    replayed = total(workers.metrics + 1, REPLAYED)
    workers.nas[1].send(data)
    wait_until(lambda: total(workers.metrics + 1, REPLAYED) > replayed or None, "the replay")
    assert workers.nas[1].receive_none(0.2)


@pytest.mark.parametrize(("backend", "prefix"), [("redis", "w"), ("sqlite", "s")])
def test_two_workers_on_one_port_share_challenges_reload_and_stop(
    cluster: Cluster, backend: str, prefix: str
) -> None:
    # sqlite: the workers of one host share a state file instead of Redis.
    state = (
        {"backend": "sqlite"} if backend == "sqlite" else cluster.config()["server"]["state_store"]
    )
    metrics = free_port_pair()
    daemon: Daemon = cluster.daemon(
        f"workers-{backend}",
        workers=2,
        metrics={"listen": f"127.0.0.1:{metrics}"},
        state_store=state,
    )
    daemon.start()  # returns on the first worker's `listening`
    workers: Workers | None = None
    try:
        daemon.wait_for(lambda e: e.get("event") == "workers_ready" and e.get("workers") == 2)
        count_events(daemon, "listening", 2)  # both workers log to the one stream
        workers = Workers(daemon.port, metrics)
        cross_worker_login(cluster, workers, f"{prefix}1", first=0)
        cross_worker_login(cluster, workers, f"{prefix}2", first=1)
        user = f"{prefix}3"
        whole = login(workers.nas[0], SECRET, user, password(user), cluster.code(user))
        assert whole.accepted, whole.message

        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(lambda e: e.get("event") == "reload_forwarded")
        count_events(daemon, "reloaded", 2)
        cross_worker_login(cluster, workers, f"{prefix}4", first=0)  # served after reload
        retransmitted_then_replayed(workers, f"{prefix}5")
    finally:
        if workers is not None:
            workers.close()
        code = daemon.stop()
    assert code == 0, daemon.output
    wait_until(
        lambda: any(e.get("event") == "stopped" and e.get("workers") == 2 for e in daemon.events),
        "the supervisor's `stopped` event",
    )
    # Both workers stopped cleanly as well (their `stopped` has no `workers` field).
    assert sum(1 for e in daemon.events if e.get("event") == "stopped") == 3
