"""Red team, end to end: a hostile NAS (a compromised switch: it has its own secret)
floods the real daemon with password checks, each one an argon2 hash, to make every
other NAS's logins fail. The intake takes turns between NAS addresses and sheds what
waited longer than a NAS would (`server.max_queue_wait`), so the well-behaved NAS
beside it is still served, and every shed request is counted.

No timing is asserted: the quiet NAS retransmits as a real one does (a few tries),
and must get its Accept within them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from argon2 import PasswordHasher

from tests.support.cluster import scrape, wait_until
from tests.support.daemon import Daemon
from tests.support.nas import Reply, UdpNas, access_request
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

SECRET = "overload-redteam-secret"
NOISY, QUIET = "127.0.0.5", "127.0.0.6"
# Costly enough that the flood outruns the two cores by far (tens of milliseconds a
# hash), cheap enough that the test stays short.
COSTLY = PasswordHasher(time_cost=2, memory_cost=32 * 1024, parallelism=1)
FLOOD = 200
TRIES, RETRY_SECONDS = 6, 2.0  # how a NAS retransmits (radclient: -r 3 -t 3)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int]]:
    tmp: Path = tmp_path_factory.mktemp("overload")
    users = {name: {"password_hash": COSTLY.hash(f"{name}-pw")} for name in ("alice", "bob")}
    (tmp / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    metrics = free_port()
    config: dict[str, Any] = {
        "server": {"metrics": {"listen": f"127.0.0.1:{metrics}"}},
        "clients": [
            {"name": "noisy", "address": [NOISY], "secret": SECRET},
            {"name": "quiet", "address": [QUIET], "secret": SECRET},
        ],
        "directory": {"backend": "local", "local": {"users_file": str(tmp / "users.yaml")}},
        "access_policies": {"mfa": {"default_action": "mfa_skipped"}},
        # the flood's guesses are spread over made-up names and stations: the password
        # throttle is not what saves the quiet NAS here
        "password_throttle": {"enabled": False},
    }
    with Daemon(tmp, config) as running:
        yield running, metrics


def shed_total(metrics: int) -> float:
    samples = scrape(metrics).items()
    return sum(v for k, v in samples if k.startswith("mfaproxy_requests_shed_total"))


def test_a_flooding_nas_does_not_stop_another_nas_logging_in(
    daemon: tuple[Daemon, int],
) -> None:
    running, metrics = daemon
    noisy = UdpNas(running.port, source=NOISY)
    quiet = UdpNas(running.port, source=QUIET, timeout=RETRY_SECONDS)
    try:
        for i in range(FLOOD):
            request = access_request(SECRET, f"user{i}", "guess", Calling_Station_Id=f"s{i}")
            noisy.send(request.RequestPacket())
        login = access_request(SECRET, "alice", "alice-pw").RequestPacket()
        reply: Reply | None = None
        for _ in range(TRIES):
            quiet.send(login)  # the same datagram: a retransmission
            try:
                raw = quiet.receive()
            except TimeoutError:
                continue
            reply = Reply(raw, SECRET)
            break
        assert reply is not None, "the quiet NAS got no answer while the other flooded"
        assert reply.accepted
    finally:
        noisy.close()
        quiet.close()
    running.wait_audit(client="quiet", reason="mfa_skipped")

    # every request of the flood was either answered or shed unprocessed, and counted;
    # not all could be answered
    def answered() -> int:
        return sum(e["outcome"] != "drop" for e in running.audit(client="noisy"))

    wait_until(
        lambda: answered() + shed_total(metrics) >= FLOOD,
        "the flood to be answered or shed",
        timeout=120,
    )
    assert answered() + shed_total(metrics) == FLOOD
    assert shed_total(metrics) > 0
