"""A store whose users would share an identity under the one normaliser: the daemon does
not start, every `users` command says why, and `users collisions` repairs it.

The store is a real SQLite file at schema version 3 with rows written as that version
wrote them (tests/store/test_identity_migration.py does both backends' migration)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mfaproxy.cli.main import main
from mfaproxy.store.rekey import REKEY_VERSION
from mfaproxy.store.sqlite_schema import MIGRATIONS
from mfaproxy.store.users import UserStore
from tests.store.test_identity_migration import version, write_old_user
from tests.store.test_user_store_contract import KEY, SqliteBackend
from tests.support.daemon import REPO
from tests.support.ports import free_udp_port

Run = tuple[int, str, str]

CONFIG = """
server: {{state_dir: ./state, listen: ["127.0.0.1:{port}"]}}
clients: [{{name: vpn, address: ["127.0.0.1/32"], secret: s3cret}}]
directory: {{backend: local, local: {{users_file: users.yaml}}}}
multifactor: {{enabled: [totp], default: totp}}
"""


@pytest.fixture
def colliding(tmp_path: Path) -> SqliteBackend:
    """`stra\\u00dfe` (TOTP) and `strasse` (TOTP, another key) in a version-3 store."""
    (tmp_path / "users.yaml").write_text("users: {}\n", encoding="utf-8")
    (tmp_path / "mfaproxy.yaml").write_text(CONFIG.format(port=free_udp_port()))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    key = state / "master.key"
    key.write_bytes(KEY)
    os.chmod(key, 0o600)
    backend = SqliteBackend(state / "users.sqlite3")
    UserStore(backend.path, KEY, migrate_to=REKEY_VERSION - 1).close()
    write_old_user(backend, "stra\u00dfe", secret="JBSWY3DPEHPK3PXP")
    write_old_user(backend, "strasse", secret="KRSXG5CTMVRXEZLU")
    write_old_user(backend, "alice")
    return backend


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    def invoke(*argv: str) -> Run:
        code = main([*argv, "--config", str(tmp_path / "mfaproxy.yaml")])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def test_the_daemon_refuses_to_start_and_says_how_to_repair(
    tmp_path: Path, colliding: SqliteBackend
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mfaproxy", "serve", "--config", str(tmp_path / "mfaproxy.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "'strasse' <- 'strasse', 'stra\u00dfe'" in result.stderr
    assert "mfaproxy users collisions" in result.stderr
    assert "Traceback" not in result.stderr
    assert version(colliding) == REKEY_VERSION - 1


def test_users_commands_report_the_collision(
    colliding: SqliteBackend, run: Callable[..., Run]
) -> None:
    code, _, err = run("users", "show", "strasse")
    assert code == 3 and "mfaproxy users collisions" in err


def test_collisions_lists_each_record_then_keep_repairs(
    colliding: SqliteBackend, run: Callable[..., Run]
) -> None:
    code, out, err = run("users", "collisions")
    assert code == 1
    assert "identity 'strasse' is shared by:" in out
    assert "'stra\u00dfe'" in out and "'strasse'" in out and "totp" in out
    assert "alice" not in out
    assert "JBSWY3DPEHPK3PXP" not in out + err

    code, _, err = run("users", "collisions", "keep", "nobody")
    assert code == 1 and "not a stored name in any collision" in err

    code, out, _ = run("users", "collisions", "keep", "stra\u00dfe")
    assert code == 0, out
    assert "deleted 'strasse'" in out and "re-keyed" in out
    assert version(colliding) == len(MIGRATIONS)  # the re-key, then the later steps
    code, out, _ = run("users", "show", "STRASSE")
    assert code == 0 and "user:                strasse" in out
    store = UserStore(colliding.path, KEY)
    try:
        assert store.get_totp_secret("strasse") == "JBSWY3DPEHPK3PXP"  # the one kept
        assert store.list_users() == ["alice", "strasse"]
    finally:
        store.close()
    code, out, _ = run("users", "collisions")
    assert code == 0 and "no collisions" in out
