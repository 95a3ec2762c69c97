"""Every store fault is an outage, not a crash: a real SQLite driver error (the table
the engine reads is gone) gives the `store_failmode` answer and exactly one audit event
(PostgreSQL's and Redis's are in test_cluster_stores.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

import pytest

from mfaproxy.config.schema import load_config
from mfaproxy.store.factory import open_user_store, user_store_path
from tests.e2e.methods_common import SECRET, daemon_config, password
from tests.support.daemon import Daemon
from tests.support.nas import UdpNas, access_request, exchange

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("failmode", "expected"), [("secure", 3), ("safe", 2)])
def test_sqlite_error_gives_the_failmode_answer_and_one_audit_event(
    tmp_path: Path, failmode: Literal["secure", "safe"], expected: int
) -> None:
    config = daemon_config(
        tmp_path,
        {"alice": {}},
        {"enabled": ["totp"], "default": "totp"},
        server={"store_failmode": failmode},
    )
    daemon = Daemon(tmp_path, config)
    settings = load_config(daemon.config_path)
    store = open_user_store(settings)
    store.set_totp_secret("alice", "JBSWY3DPEHPK3PXP", 0)
    store.set_method("alice", "totp", 0)
    store.close()
    with daemon:
        with sqlite3.connect(user_store_path(settings)) as db:
            db.execute("ALTER TABLE users RENAME TO users_elsewhere")  # every read now fails
        nas = UdpNas(daemon.port)
        try:
            reply = exchange(nas, SECRET, access_request(SECRET, "alice", password("alice")))
        finally:
            nas.close()
        assert reply.code == expected
        reason = "store_unavailable" if failmode == "secure" else "store_failmode_safe"
        event = daemon.wait_audit(login_name="alice", reason=reason)
        daemon.wait_for(lambda e: e.get("event") == "store_unavailable")
        assert len(daemon.audit(request_id=event["request_id"])) == 1
        assert len(daemon.audit(login_name="alice")) == 1
        assert "Traceback" not in daemon.output
