"""Red team 2, end to end: one State answered by many requests at once, through both
nodes of a cluster (real redis-server and PostgreSQL) and from a source port each,
with the right code: exactly one Accept, and the rest refused as a State already used
or a check already running for the user (never a second Accept, never a traceback).

test_redteam_cluster.py races separate challenges (a backup code and a TOTP code on
both nodes); this races one challenge's State against itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from tests.e2e.test_redteam_cluster import burst
from tests.support.cluster import Cluster, answer, first_round, new_schema, wait_until
from tests.support.daemon import Daemon
from tests.support.duo_fake import FakeDuo
from tests.support.nas import UdpNas
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

ANSWERS = 6  # three through each node
REFUSED = {"unknown_state", "user_busy"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Daemon, Daemon]]:
    tmp = tmp_path_factory.mktemp("races")
    with RedisServer() as redis, FakeDuo() as duo, PostgresServer() as postgres:
        cluster = Cluster(tmp, redis, new_schema(postgres, "races"), duo, ["racer"], {})
        try:
            cluster.setup()
            with cluster.daemon("a") as a, cluster.daemon("b") as b:
                yield cluster, a, b
        finally:
            cluster.close()


def test_one_state_answered_at_once_on_both_nodes_is_accepted_once(
    pair: tuple[Cluster, Daemon, Daemon],
) -> None:
    cluster, a, b = pair
    opener = UdpNas(a.port)
    try:
        challenge = first_round(opener, "racer")
    finally:
        opener.close()
    assert challenge.challenged, challenge.message
    code = cluster.code("racer")
    replies = burst((a, b, 0), ANSWERS, lambda nas, _: answer(nas, "racer", challenge, code))
    assert sum(r.accepted for r in replies) == 1, [r.message for r in replies]
    assert sum(r.rejected for r in replies) == ANSWERS - 1

    def answers_audited() -> Counter[str] | None:
        # every event but the first round's challenge
        seen = Counter(
            e["reason"]
            for daemon in (a, b)
            for e in daemon.audit(login_name="racer")
            if e["outcome"] != "challenge"
        )
        return seen if sum(seen.values()) >= ANSWERS else None

    seen = wait_until(answers_audited, f"the {ANSWERS} answers' audit events")
    assert seen["mfa_code_ok"] == 1, seen
    assert set(seen) - {"mfa_code_ok"} <= REFUSED, seen
    for daemon in (a, b):
        assert "Traceback" not in daemon.output
