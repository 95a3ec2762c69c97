"""End to end: two daemons (A and B, different UDP ports) sharing a real redis-server
(challenge sessions, the RFC 5080 duplicate table) and a real PostgreSQL (enrolments, TOTP
replay marks), as two RADIUS servers of one organisation: a NAS sends the answer to a
challenge to the other server, fails over to it while a push is pending, or finishes
the login there after the first one died.

Failure of the shared stores and `server.workers` are in test_cluster_stores.py.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest
from pyrad import packet as pyrad_packet

from tests.support.cluster import (
    APPEND_SOURCE,
    SECRET,
    Cluster,
    answer,
    first_round,
    free_port_pair,
    new_schema,
    password,
    total,
    wait_until,
)
from tests.support.daemon import Daemon
from tests.support.duo_fake import FakeDuo
from tests.support.nas import Reply, UdpNas, access_request
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

TOTP_USERS = ["alice", "bob", "carol"]
DUO_USERS = ("dave", "erin", "fred", "gina")
TAKEN_OVER = "mfaproxy_duplicates_total{action=taken_over}"
LEASE = 1.5  # server.duplicate_lease_seconds, short to keep the takeover tests fast
IN_FLIGHT = "mfaproxy_duplicates_total{action=ignored_in_flight}"
FROM_CACHE = "mfaproxy_duplicates_total{action=answered_from_cache}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    with RedisServer() as redis, PostgresServer() as postgres, FakeDuo() as duo:
        shared = Cluster(
            tmp, redis, new_schema(postgres, "cluster"), duo, TOTP_USERS + list(DUO_USERS), {}
        )
        try:
            shared.setup(duo_users=DUO_USERS)
            yield shared
        finally:
            shared.close()


@pytest.fixture(scope="module")
def pair(cluster: Cluster) -> Iterator[tuple[Daemon, Daemon, int]]:
    """A and B, both running; B serves metrics on the returned port."""
    metrics_port = free_port_pair()
    a = cluster.daemon("a", duplicate_lease_seconds=LEASE)
    b = cluster.daemon(
        "b", metrics={"listen": f"127.0.0.1:{metrics_port}"}, duplicate_lease_seconds=LEASE
    )
    with a, b:
        yield a, b, metrics_port


@pytest.fixture
def nas_a(pair: tuple[Daemon, Daemon, int]) -> Iterator[UdpNas]:
    nas = UdpNas(pair[0].port)
    yield nas
    nas.close()


@pytest.fixture
def nas_b(pair: tuple[Daemon, Daemon, int]) -> Iterator[UdpNas]:
    nas = UdpNas(pair[1].port)
    yield nas
    nas.close()


def test_a_challenge_from_a_is_answered_through_b(
    cluster: Cluster, pair: tuple[Daemon, Daemon, int], nas_a: UdpNas, nas_b: UdpNas
) -> None:
    a, b, _ = pair
    challenge = first_round(nas_a, "alice")
    assert challenge.challenged, challenge.message
    code = cluster.code("alice")
    accepted = answer(nas_b, "alice", challenge, code)
    assert accepted.accepted, accepted.message
    b.wait_audit(login_name="alice", outcome="accept")
    assert a.audit(login_name="alice", outcome="accept") == []  # B, not A, decided

    # The same code once more, through A: the replay mark B wrote (PostgreSQL) holds.
    again = answer(nas_a, "alice", first_round(nas_a, "alice"), code)
    assert not again.accepted
    assert again.challenged and again.message.startswith("Wrong code"), again.message
    a.wait_audit(login_name="alice", mfa_result="replayed")


def test_a_state_is_single_use_across_instances(
    cluster: Cluster, pair: tuple[Daemon, Daemon, int], nas_a: UdpNas, nas_b: UdpNas
) -> None:
    challenge = first_round(nas_b, "bob")
    assert answer(nas_a, "bob", challenge, cluster.code("bob")).accepted
    # A fresh request (new authenticator) reusing B's State, now through B: refused.
    reused = answer(nas_b, "bob", challenge, cluster.code("bob"))
    assert reused.rejected, reused.message


def receive_from(
    nas: UdpNas, port: int, identifier: int, send: pyrad_packet.AuthPacket | None = None
) -> bytes:
    """The next datagram to `nas` from the instance on `port` with `identifier` (after
    sending `send` there, when given); a datagram from anyone else fails the test."""
    if send is not None:
        nas.sock.sendto(send.RequestPacket(), ("127.0.0.1", port))
    data, sender = nas.sock.recvfrom(4096)
    assert sender == ("127.0.0.1", port), f"reply from {sender}, expected port {port}"
    assert data[1] == identifier
    return data


def test_a_push_retransmitted_to_the_other_instance_is_sent_once(
    cluster: Cluster, pair: tuple[Daemon, Daemon, int]
) -> None:
    a, b, b_metrics = pair
    duo_user = cluster.duo.add_user("dave", hold=True)
    in_flight_before = total(b_metrics, IN_FLIGHT)
    from_cache_before = total(b_metrics, FROM_CACHE)
    # A NAS that appends the factor: one request holds while the push is pending.
    nas = UdpNas(a.port, source=APPEND_SOURCE, timeout=40)
    try:
        request = access_request(SECRET, "dave", password("dave") + ",push")
        datagram = request.RequestPacket()
        nas.send(datagram)
        assert duo_user.push_sent.wait(20), "A never sent the push"

        # The NAS fails over: the same datagram (socket, identifier, authenticator) to B.
        nas.sock.sendto(datagram, ("127.0.0.1", b.port))
        wait_until(
            lambda: total(b_metrics, IN_FLIGHT) > in_flight_before,
            "B to see the request in flight in the shared duplicate table",
        )
        duo_user.release.set()

        reply = receive_from(nas, a.port, request.id)  # only A answers
        assert Reply(reply, SECRET).accepted
        assert request.VerifyReply(Reply(reply, SECRET).packet, reply, enforce_ma=True)
        a.wait_audit(login_name="dave", outcome="accept", reason="mfa_push_approved")

        # A later retransmission to B is answered from the shared cache, byte for byte.
        # A sends its reply before it records it there (a store that fails must not
        # cost the answer), so a copy that reaches B in between is ignored as in
        # flight, as a loaded machine showed: retransmit as a NAS does.
        assert retransmit_until_answered(nas, datagram, b.port, request.id) == reply
        assert total(b_metrics, FROM_CACHE) == from_cache_before + 1
    finally:
        duo_user.release.set()
        nas.close()
    assert cluster.duo.auth_calls("dave") == 1
    assert b.audit(login_name="dave") == []  # B never processed it


def test_checks_for_one_user_are_serialised_across_instances(
    cluster: Cluster, pair: tuple[Daemon, Daemon, int]
) -> None:
    """While A checks gina's second factor (a push she has not answered yet), a new
    request for her through B finds her lease taken in the shared Redis: refused at
    once, nothing checked, no second push."""
    a, b, _ = pair
    duo_user = cluster.duo.add_user("gina", hold=True)
    nas_a = UdpNas(a.port, source=APPEND_SOURCE, timeout=40)
    nas_b = UdpNas(b.port, source=APPEND_SOURCE, timeout=20)
    try:
        held = access_request(SECRET, "gina", password("gina") + ",push")
        nas_a.send(held.RequestPacket())
        assert duo_user.push_sent.wait(20), "A never sent the push"
        meanwhile = access_request(SECRET, "gina", password("gina") + ",push")
        busy = Reply(receive_from(nas_b, b.port, meanwhile.id, meanwhile), SECRET)
        assert busy.rejected and "being checked" in busy.message, busy.message
        b.wait_audit(user="gina", reason="user_busy")
        duo_user.release.set()
        done = Reply(receive_from(nas_a, a.port, held.id), SECRET)
        assert done.accepted, done.message
    finally:
        duo_user.release.set()
        nas_a.close()
        nas_b.close()
    assert cluster.duo.auth_calls("gina") == 1


def test_an_instance_killed_mid_flow_the_login_completes_on_the_other(
    cluster: Cluster, pair: tuple[Daemon, Daemon, int], nas_b: UdpNas
) -> None:
    _, b, _ = pair
    doomed = cluster.daemon("doomed").start()
    nas = UdpNas(doomed.port)
    try:
        challenge = first_round(nas, "carol")
        assert challenge.challenged, challenge.message
        assert doomed.proc is not None
        doomed.proc.kill()  # SIGKILL: no drain, no goodbye
        assert doomed.proc.wait(30) == -signal.SIGKILL
        accepted = answer(nas_b, "carol", challenge, cluster.code("carol"))
        assert accepted.accepted, accepted.message
        b.wait_audit(login_name="carol", outcome="accept")
    finally:
        nas.close()
        doomed.stop()


def retransmit_until_answered(nas: UdpNas, datagram: bytes, port: int, identifier: int) -> bytes:
    """What a NAS does with no answer: send the same datagram again, every second, here
    to the surviving instance, until it answers (bounded: 40 tries)."""
    nas.sock.settimeout(1.0)
    for _ in range(40):
        nas.sock.sendto(datagram, ("127.0.0.1", port))
        try:
            return receive_from(nas, port, identifier)
        except TimeoutError:
            continue
    raise AssertionError("the surviving instance never answered the retransmission")


def kill(doomed: Daemon) -> None:
    assert doomed.proc is not None
    doomed.proc.kill()  # SIGKILL: no drain, no goodbye
    assert doomed.proc.wait(30) == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["append", "challenge"])
def test_the_node_holding_a_push_dies_the_retransmission_completes_it_elsewhere(
    cluster: Cluster, pair: tuple[Daemon, Daemon, int], mode: str
) -> None:
    """A holds a pending push and is killed; the NAS retransmits the same request to B,
    which takes it over once A's lease lapsed and polls the same Duo transaction: one
    push, and the user's approval gives B's Accept (before: silence for 70 s, then
    unknown_state)."""
    _, b, b_metrics = pair
    user = "erin" if mode == "append" else "fred"
    duo_user = cluster.duo.add_user(user, hold=True)
    doomed = cluster.daemon(f"doomed-{mode}", duplicate_lease_seconds=LEASE).start()
    source = APPEND_SOURCE if mode == "append" else "127.0.0.1"
    nas = UdpNas(doomed.port, source=source, timeout=20)
    try:
        if mode == "append":
            request = access_request(SECRET, user, password(user) + ",push")
        else:
            menu = first_round(nas, user)
            assert menu.challenged and "push" in menu.message, menu.message
            assert menu.state is not None
            request = access_request(SECRET, user, "push")
            request.AddAttribute("State", menu.state)
        datagram = request.RequestPacket()
        nas.send(datagram)
        assert duo_user.polled.wait(20), "the doomed instance never polled the push"
        kill(doomed)
        duo_user.polled.clear()
        taken_before = total(b_metrics, TAKEN_OVER)

        # B takes the request over and polls the same transaction; the user approves.
        def approve_once_b_polls() -> None:
            assert duo_user.polled.wait(30), "B never polled the pending push"
            duo_user.release.set()

        approver = threading.Thread(target=approve_once_b_polls)
        approver.start()
        reply = retransmit_until_answered(nas, datagram, b.port, request.id)
        approver.join(30)
        assert Reply(reply, SECRET).accepted, Reply(reply, SECRET).message
        assert request.VerifyReply(Reply(reply, SECRET).packet, reply, enforce_ma=True)
        b.wait_audit(user=user, outcome="accept", reason="mfa_push_approved")
        assert total(b_metrics, TAKEN_OVER) == taken_before + 1
    finally:
        duo_user.release.set()
        nas.close()
        doomed.stop()
    assert cluster.duo.auth_calls(user) == 1  # one push, from the dead instance
