"""`mfaproxy users ...` acts on the identity a login would reach: the name is read like a
User-Name (realm rules, the one normaliser) and looked up in the directory (the users
file, a real slapd), with a warning when the directory does not know it and a note when
it cannot be asked (an upstream RADIUS server)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mfaproxy.cli.main import main
from mfaproxy.config.schema import load_config
from mfaproxy.store.factory import open_user_store
from tests.cli.test_users_cli import USERS_FILE
from tests.support.slapd import BASE_DN, SERVICE_DN, SERVICE_PASSWORD, SlapdServer, run_slapd

Run = tuple[int, str, str]
Runner = Callable[..., Run]
HASH = yaml.safe_load(USERS_FILE)["users"]["alice"]["password_hash"]
REALMS = [
    {"format": "prefix", "realms": ["EXAMPLE"]},
    {"format": "suffix", "realms": ["example.org"]},
]


def write(tmp: Path, directory: dict[str, Any]) -> Path:
    users = {"users": {"alice": {"password_hash": HASH}, "Stra\u00dfe": {"password_hash": HASH}}}
    (tmp / "users.yaml").write_text(yaml.safe_dump(users), encoding="utf-8")
    config = {
        "server": {"state_dir": str(tmp / "state")},
        "clients": [{"name": "vpn", "address": ["127.0.0.1/32"], "secret": "s3cret"}],
        "directory": directory,
        "multifactor": {"enabled": ["totp"], "default": "totp"},
    }
    path = tmp / "mfaproxy.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def runner(path: Path, capsys: pytest.CaptureFixture[str]) -> Runner:
    def invoke(*argv: str) -> Run:
        code = main([*argv, "--config", str(path)])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def stored(path: Path) -> list[str]:
    store = open_user_store(load_config(path))
    try:
        return store.list_users()
    finally:
        store.close()


@pytest.fixture
def local(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Runner]:
    path = write(
        tmp_path, {"backend": "local", "local": {"users_file": "users.yaml"}, "realms": REALMS}
    )
    return path, runner(path, capsys)


@pytest.mark.parametrize(
    "typed", ["STRASSE", "Stra\u00dfe", "EXAMPLE\\strasse", "strasse@example.org"]
)
def test_every_spelling_enrols_the_one_identity(local: tuple[Path, Runner], typed: str) -> None:
    path, run = local
    code, out, err = run("users", "enroll", typed, "totp")
    assert code == 0 and out.startswith("otpauth://"), err
    assert "not in the directory" not in err
    assert stored(path) == ["strasse"]
    code, out, _ = run("users", "show", "strasse")
    assert code == 0 and "user:                strasse" in out


def test_a_name_the_users_file_does_not_know_is_warned_about(local: tuple[Path, Runner]) -> None:
    path, run = local
    code, _, err = run("users", "enroll", "nobody", "totp")
    assert code == 0
    assert "'nobody' is not in the directory (local): no login reaches 'nobody'" in err
    assert stored(path) == ["nobody"]


def test_delete_stored_removes_a_record_no_login_reaches(local: tuple[Path, Runner]) -> None:
    """A record an older version made under an alias: `users delete --stored` takes the
    name as listed, where plain `delete` would act on the identity the alias names."""
    path, run = local
    store = open_user_store(load_config(path))
    try:
        store.set_method("example\\alice", "totp", 0.0)  # as a version-3 store keyed it
        store.set_method("alice", "totp", 0.0)
    finally:
        store.close()
    code, _, err = run("users", "delete", "EXAMPLE\\alice", "--stored")
    assert code == 0, err
    assert stored(path) == ["alice"]
    store = open_user_store(load_config(path))
    try:
        store.set_method("example\\alice", "totp", 0.0)
    finally:
        store.close()
    code, _, err = run("users", "delete", "EXAMPLE\\alice")  # the identity alice
    assert code == 0 and "'EXAMPLE\\\\alice' is the user 'alice'" in err
    assert stored(path) == ["example\\alice"]


@pytest.fixture
def radius(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Runner]:
    server = {"host": "127.0.0.1", "port": 1812, "secret": "upstream"}
    path = write(tmp_path, {"backend": "radius", "radius": {"servers": [server]}})
    return path, runner(path, capsys)


def test_an_upstream_radius_server_cannot_be_asked(radius: tuple[Path, Runner]) -> None:
    path, run = radius
    code, _, err = run("users", "enroll", "Sam", "totp")
    assert code == 0
    assert "'Sam' cannot be checked against the directory" in err
    assert stored(path) == ["sam"]


# --------------------------------------------------------------------------- LDAP


@pytest.fixture(scope="module")
def slapd() -> Iterator[SlapdServer]:
    yield from run_slapd()


def ldap_directory(slapd: SlapdServer, **extra: Any) -> dict[str, Any]:
    ldap = {
        "servers": [slapd.ldap_url],
        "base_dn": BASE_DN,
        "bind_dn": SERVICE_DN,
        "bind_password": SERVICE_PASSWORD,
        "user_filter": "(&(objectClass=inetOrgPerson)(|(uid={username})(mail={username})))",
        "identity_attribute": "uid",
        **extra,
    }
    return {"backend": "ldap", "ldap": ldap}


def test_ldap_is_searched_for_the_identity(
    slapd: SlapdServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, ldap_directory(slapd))
    run = runner(path, capsys)
    code, _, err = run("users", "enroll", "Alice@Example.ORG", "totp")
    assert code == 0
    assert "'Alice@Example.ORG' is the user 'alice'" in err
    code, _, err = run("users", "enroll", "nobody", "totp")
    assert code == 0 and "'nobody' is not in the directory (ldap)" in err
    assert stored(path) == ["alice", "nobody"]
    code, out, _ = run("users", "show", "ALICE@example.org")
    assert code == 0 and "user:                alice" in out


def test_ldap_without_a_service_account_cannot_be_searched(
    slapd: SlapdServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = ldap_directory(slapd, bind_dn=None, bind_password=None)
    directory["ldap"]["user_dn_template"] = "uid={username},ou=people," + BASE_DN
    path = write(tmp_path, directory)
    code, _, err = runner(path, capsys)("users", "enroll", "alice", "totp")
    assert code == 0 and "cannot be checked against the directory: direct bind" in err


def test_ldap_down_says_so_and_keys_on_the_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slapd: SlapdServer
) -> None:
    directory = ldap_directory(slapd, servers=["ldap://127.0.0.1:9"], connect_timeout=1)
    path = write(tmp_path, directory)
    code, _, err = runner(path, capsys)("users", "enroll", "Alice", "totp")
    assert code == 0 and "no LDAP server answered" in err
    assert stored(path) == ["alice"]
