"""Red team, end to end: bursts raced across two daemons (A and B) that share a real
redis-server and a real PostgreSQL, as two RADIUS servers of one organisation, and
someone with write access to that Redis.

A password holder sends each burst half to A and half to B, all at once: first rounds
(to stock up States), wrong passwords (to outrun the password throttle), the same
backup code and the same TOTP code (to use them twice). Each test asserts the bound
the README claims; each also has a control that could fail.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mfaproxy.otp.backup_codes import generate_codes
from tests.support.cluster import (
    SECRET,
    Cluster,
    answer,
    first_round,
    free_port_pair,
    new_schema,
    password,
    wait_until,
)
from tests.support.daemon import Daemon
from tests.support.duo_fake import FakeDuo
from tests.support.nas import Reply, UdpNas, access_request, exchange
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

USERS = ["stock", "guess", "codes", "totp", "dup", "known"]
MAX_OPEN = 3  # multifactor.challenge.max_open_per_user, the default
FREE_FAILURES = 16  # password_throttle.user.free_failures (default 5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("redteam-cluster")
    with RedisServer() as redis, PostgresServer() as postgres, FakeDuo() as duo:
        shared = Cluster(tmp, redis, new_schema(postgres, "redteam"), duo, USERS, {})
        try:
            shared.setup()
            yield shared
        finally:
            shared.close()


def node(cluster: Cluster, name: str, **server: Any) -> Daemon:
    """One instance; its password throttle lets twelve right passwords in at once (in
    flight, each counts until it is known to be right: the reservation is atomic)."""
    workdir = cluster.tmp / name
    workdir.mkdir()
    config = cluster.config(**server)
    config["password_throttle"] = {"user": {"free_failures": FREE_FAILURES}}
    return Daemon(workdir, config)


@pytest.fixture(scope="module")
def pair(cluster: Cluster) -> Iterator[tuple[Daemon, Daemon, int]]:
    metrics_port = free_port_pair()
    a = node(cluster, "a")
    b = node(cluster, "b", metrics={"listen": f"127.0.0.1:{metrics_port}"})
    with a, b:
        yield a, b, metrics_port


def burst(
    pair: tuple[Daemon, Daemon, int], count: int, send: Callable[[UdpNas, int], Reply]
) -> list[Reply]:
    """`count` exchanges at once, even ones to A, odd ones to B, each on its own socket
    (its own source port), released together by a barrier."""
    a, b, _ = pair
    start = threading.Barrier(count)
    replies: list[Reply | None] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        nas = UdpNas((a if index % 2 == 0 else b).port)
        try:
            start.wait(30)
            replies[index] = send(nas, index)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            nas.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert all(r is not None for r in replies)
    return [r for r in replies if r is not None]


def reasons(daemons: tuple[Daemon, ...], user: str, total: int) -> Counter[str]:
    """The reasons of the audit events of `user`'s requests on the daemons, once there
    are `total` of them (a reply can beat its audit line)."""

    def found() -> Counter[str]:
        counted: Counter[str] = Counter()
        for daemon in daemons:
            counted.update(e["reason"] for e in daemon.audit(login_name=user))
        return counted

    wait_until(lambda: sum(found().values()) >= total, f"{total} audit events of {user}")
    return found()


def test_a_burst_of_first_rounds_over_two_nodes_leaves_at_most_three_states(
    cluster: Cluster, pair: tuple[Daemon, Daemon, int]
) -> None:
    """Attack: stock up States for one user (then answer them all at once) by sending
    twelve first rounds at once, half to each node. The retirement of the oldest beyond
    `max_open_per_user` is one Lua script in the shared Redis: three stay live."""
    first = burst(pair, 12, lambda nas, _: first_round(nas, "stock"))
    assert all(r.challenged and r.state for r in first), [(r.code, r.message) for r in first]
    nas = UdpNas(pair[0].port)
    try:
        answers = [answer(nas, "stock", r, "000000") for r in first]
    finally:
        nas.close()
    # each answer used up or retired its State: either one more try, or unknown
    a, b, _ = pair
    got = reasons((a, b), "stock", 24)
    assert got["totp_challenge"] == 12, got
    assert all(r.rejected or r.challenged for r in answers)
    assert got["retry"] + got["totp_bad_code"] == MAX_OPEN, got
    assert got["unknown_state"] == 12 - MAX_OPEN, got


def test_a_burst_of_wrong_passwords_over_two_nodes_gets_only_the_free_failures(
    pair: tuple[Daemon, Daemon, int],
) -> None:
    """Attack: guess one user's password forty times at once, half through each node, to
    get more guesses than the shared counter allows before it sees them. The
    reservation is atomic in Redis: the free failures are checked, the rest refused
    without a password check."""
    replies = burst(
        pair, 40, lambda nas, i: exchange(nas, SECRET, access_request(SECRET, "guess", f"g{i}"))
    )
    assert all(r.rejected for r in replies)
    a, b, _ = pair
    got = reasons((a, b), "guess", 40)
    assert got["bad_password"] == FREE_FAILURES, got
    assert got["password_throttled"] == 40 - FREE_FAILURES, got


def challenge_on_each(pair: tuple[Daemon, Daemon, int], user: str) -> list[Reply]:
    """One Access-Challenge for `user` from A, one from B."""
    found = []
    for daemon in pair[:2]:
        nas = UdpNas(daemon.port)
        try:
            found.append(first_round(nas, user))
        finally:
            nas.close()
    return found


def login_on(daemon: Daemon, user: str, text: str) -> Reply:
    nas = UdpNas(daemon.port)
    try:
        return answer(nas, user, first_round(nas, user), text)
    finally:
        nas.close()


def test_a_backup_code_answered_on_both_nodes_at_once_is_used_once(
    cluster: Cluster, pair: tuple[Daemon, Daemon, int]
) -> None:
    """Attack: one backup code (read off a printout, say) typed into two logins at
    once, one through each node. One is accepted (the user's lease in Redis, and the
    single-use UPDATE in PostgreSQL); then the code is spent on either node."""
    assert cluster.store is not None
    codes = generate_codes(2)
    cluster.store.replace_backup_codes("codes", codes, 0)
    challenges = challenge_on_each(pair, "codes")
    results = burst(pair, 2, lambda nas, i: answer(nas, "codes", challenges[i], codes[0]))
    assert sum(r.accepted for r in results) == 1, [r.message for r in results]
    for daemon in pair[:2]:
        assert not login_on(daemon, "codes", codes[0]).accepted
    assert login_on(pair[1], "codes", codes[1]).accepted  # the control: the other code


def test_a_totp_code_answered_on_both_nodes_at_once_is_used_once(
    cluster: Cluster, pair: tuple[Daemon, Daemon, int]
) -> None:
    """Attack: the code on the victim's screen, typed at once into two logins through
    the two nodes (the victim's own and the attacker's). One is accepted; afterwards
    the same code is refused on either node (the used step is marked in PostgreSQL)."""
    challenges = challenge_on_each(pair, "totp")
    code = cluster.code("totp")
    results = burst(pair, 2, lambda nas, i: answer(nas, "totp", challenges[i], code))
    assert sum(r.accepted for r in results) == 1, [r.message for r in results]
    for daemon in pair[:2]:
        assert not login_on(daemon, "totp", code).accepted


def test_a_cached_accept_planted_under_another_request_is_not_sent(
    cluster: Cluster, pair: tuple[Daemon, Daemon, int]
) -> None:
    """Attack with write access to Redis: copy the duplicate table's cached reply of a
    request that was accepted to the key of a request about to come (a wrong password
    here): answered from that cache, the NAS would get the Accept. The value is sealed
    with its key as associated data: it does not open under another key, the request
    is processed afresh (Reject) and the planted value counted as unauthentic."""
    a = pair[0]
    nas = UdpNas(a.port)
    client = cluster.redis.client()
    port = nas.sock.getsockname()[1]

    def key(request: Any) -> str:
        return f"mfaproxy:duplicates:v:127.0.0.1|{port}|{request.id}|{request.authenticator.hex()}"

    try:
        first = first_round(nas, "dup")
        assert first.challenged and first.state is not None
        good = access_request(SECRET, "dup", cluster.code("dup"))
        good.AddAttribute("State", first.state)
        assert exchange(nas, SECRET, good).accepted
        cached = client.get(key(good))
        assert cached is not None  # the reply cache of the accepted answer
        bad = access_request(SECRET, "dup", "not-the-password")
        client.set(key(bad), cached, px=30_000)
        mark = len(a.events)
        reply = exchange(nas, SECRET, bad)
        assert reply.rejected
        a.wait_audit(login_name="dup", reason="bad_password")  # the reply can beat the log
        assert any(
            e.get("event") == "state_value_rejected"
            and e.get("namespace") == "duplicates"
            and e.get("reason") == "unauthentic"
            for e in a.events[mark:]
        )
    finally:
        client.close()
        nas.close()


def test_a_known_source_copied_to_another_station_does_not_exempt_it(
    cluster: Cluster, pair: tuple[Daemon, Daemon, int]
) -> None:
    """Attack with write access to Redis: a guesser wants their own station treated as
    one the victim logs in from (a known source: failures there are counted apart,
    never on the victim's user counter), so copies the victim's known-source record
    to the key of their station. Sealed with its key: it does not open there, the
    station stays unknown, and its wrong passwords run into the user counter."""
    a = pair[0]
    nas = UdpNas(a.port)
    client = cluster.redis.client()

    def key(station: str) -> str:
        user, source = "known", f"vpn|{station}"
        return f"mfaproxy:password_known_source:v:{len(user)}:{user}|{source}"

    try:
        home = access_request(SECRET, "known", password("known"), Calling_Station_Id="home")
        first = exchange(nas, SECRET, home)
        assert first.challenged  # the password was right: "home" is now a known source
        record = client.get(key("home"))
        assert record is not None
        client.set(key("attacker"), record, px=3_600_000)
        mark = len(a.events)
        for i in range(FREE_FAILURES + 1):
            guess = access_request(SECRET, "known", f"g{i}", Calling_Station_Id="attacker")
            last = exchange(nas, SECRET, guess)
        assert last.rejected
    finally:
        client.close()
        nas.close()
    a.wait_audit(login_name="known", reason="password_throttled")
    refused = a.audit(login_name="known", reason="password_throttled")
    assert [e["password_throttle"] for e in refused] == ["user"]
    assert any(
        e.get("event") == "state_value_rejected" and e.get("namespace") == "password_known_source"
        for e in a.events[mark:]
    )
