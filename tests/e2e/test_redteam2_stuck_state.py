"""Red team 2, end to end: the host's SQLite state file locked by someone else and
never released while NASes keep sending (another worker stopped inside a transaction,
an operator's `sqlite3` shell left in BEGIN IMMEDIATE). Every request still gets its
answer: a Status-Server its Accept, a login the store failmode's Reject, and logins
succeed again as soon as the lock is gone.

Finding this caught: a write retried the lock by spinning on the event loop for two
seconds, so the whole daemon froze while the lock was held: requests queued behind
each other's spins and NASes timed out (a Status-Server got no answer in 30 s).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.methods_common import SECRET, daemon_config, password
from tests.e2e.test_redteam_wire import status_server
from tests.support.cluster import wait_until
from tests.support.daemon import Daemon
from tests.support.nas import Reply, UdpNas, access_request, exchange

pytestmark = pytest.mark.e2e

EACH = 4  # Status-Servers and logins sent at once while the lock is held
NAS_TIMEOUT = 10.0  # what a NAS waits for an answer before it gives up on us


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    users: dict[str, dict[str, Any]] = {f"u{i}": {} for i in range(EACH)}
    config = daemon_config(
        tmp_path,
        users,
        {"enabled": ["totp"], "default": "totp"},
        server={"state_store": {"backend": "sqlite"}},
    )
    config["access_policies"] = {"mfa": {"default_action": "mfa_skipped"}}
    with Daemon(tmp_path, config) as running:
        yield running


def answers_at_once(daemon: Daemon) -> list[bytes | None]:
    """Status-Servers and logins sent at once, each from its own socket: the replies
    (None: none within a NAS's timeout)."""
    replies: list[bytes | None] = [None] * (2 * EACH)
    start = threading.Barrier(2 * EACH)

    def send(index: int) -> None:
        nas = UdpNas(daemon.port, timeout=NAS_TIMEOUT)
        try:
            if index < EACH:
                datagram = status_server(index, os.urandom(16), SECRET.encode())
            else:
                user = f"u{index - EACH}"
                datagram = access_request(SECRET, user, password(user)).RequestPacket()
            start.wait(30)
            nas.send(datagram)
            replies[index] = nas.receive()
        except TimeoutError:
            pass
        finally:
            nas.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2 * EACH)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return replies


def test_a_state_file_locked_for_good_leaves_every_request_answered(daemon: Daemon) -> None:
    path = daemon.workdir / "state" / "shared-state.sqlite3"
    assert path.exists()
    locked = sqlite3.connect(path, isolation_level=None)
    try:
        locked.execute("BEGIN IMMEDIATE")  # and never COMMIT while the NASes send
        replies = answers_at_once(daemon)
    finally:
        locked.execute("ROLLBACK")
        locked.close()
    assert all(r is not None for r in replies), [r is not None for r in replies]
    status, logins = replies[:EACH], replies[EACH:]
    assert [r[0] for r in status if r] == [2] * EACH  # Access-Accept (RFC 5997)
    assert [Reply(r, SECRET).rejected for r in logins if r] == [True] * EACH
    daemon.wait_audit(login_name="u0", reason="store_unavailable")

    def accepted() -> bool:
        nas = UdpNas(daemon.port)
        try:
            return exchange(nas, SECRET, access_request(SECRET, "u0", password("u0"))).accepted
        finally:
            nas.close()

    wait_until(accepted, "a login accepted once the lock is gone")
    assert "Traceback" not in daemon.output
