"""The configuration schema: strictness, dotted paths, secrets sources, shipped examples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mfaproxy.config.schema import parse_config, read_document
from mfaproxy.config.validate import reply_problems
from mfaproxy.daemon import preflight
from mfaproxy.errors import ConfigError
from mfaproxy.radius.codec import load_dictionary
from tests.support.daemon import REPO
from tests.support.slapd import CertificateAuthority

MINIMAL = """
clients:
  - name: vpn
    address: 127.0.0.1
    secret: s3cret
directory:
  backend: local
  local: {users_file: users.yaml}
"""


def problems(text: str, path: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    return info.value.problems


def test_minimal_config_gets_documented_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.server.listen == ["127.0.0.1:1812"]
    assert config.clients[0].require_message_authenticator is True
    assert config.clients[0].second_factor == "challenge"
    assert config.server.log.format == "console"


def test_unknown_keys_are_errors_with_dotted_path_and_line() -> None:
    text = MINIMAL + "server:\n  listen: ['127.0.0.1:1812']\n  lissen: 1\n"
    found = problems(text)
    assert any(p.startswith("server.lissen (line 11)") for p in found), found


def test_every_problem_is_listed() -> None:
    text = """
clients:
  - name: vpn
    address: [300.1.1.1]
    secret: ""
    second_factor: sms
directory:
  backend: ldap
"""
    found = "\n".join(problems(text))
    assert "clients.0.address" in found
    assert "clients.0.secret" in found
    assert "clients.0.second_factor" in found
    assert "directory" in found and "'ldap' section is missing" in found


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    config = parse_config(MINIMAL, tmp_path / "mfaproxy.yaml")
    assert config.directory.local is not None
    assert config.directory.local.users_file == tmp_path / "users.yaml"


def test_secret_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vpn.secret").write_text("from-file\n")
    monkeypatch.setenv("VPN_SECRET", "from-env")
    text = MINIMAL.replace("secret: s3cret", "secret_file: vpn.secret")
    assert (
        parse_config(text, tmp_path / "c.yaml").clients[0].secret.get_secret_value() == "from-file"
    )
    text = MINIMAL.replace("secret: s3cret", "secret_env: VPN_SECRET")
    assert parse_config(text).clients[0].secret.get_secret_value() == "from-env"


def test_secret_sources_are_exclusive_and_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE", raising=False)
    found = problems(MINIMAL.replace("secret: s3cret", "secret: a\n    secret_env: NOPE"))
    assert any("give only one of" in p for p in found)
    found = problems(MINIMAL.replace("secret: s3cret", "secret_env: NOPE"))
    assert any("NOPE is not set" in p for p in found)
    found = problems(MINIMAL.replace("secret: s3cret", "secret_file: /nonexistent/file"))
    assert any("cannot read" in p for p in found)


def test_secret_is_not_in_repr() -> None:
    config = parse_config(MINIMAL)
    assert "s3cret" not in repr(config)


def test_listen_addresses_parse_ipv4_and_ipv6() -> None:
    text = MINIMAL + "server:\n  listen: ['127.0.0.1:1812', '[::1]:1813', '[::]']\n"
    assert parse_config(text).server.listen_addresses() == [
        ("127.0.0.1", 1812),
        ("::1", 1813),
        ("::", 1812),
    ]
    assert any(
        "server.listen" in p for p in problems(MINIMAL + "server:\n  listen: ['localhost:99999']\n")
    )


def test_duplicate_client_names_are_refused() -> None:
    text = MINIMAL.replace(
        "clients:\n", "clients:\n  - {name: vpn, address: 10.0.0.1, secret: x}\n"
    )
    assert any("duplicate names vpn" in p for p in problems(text))


def test_unknown_reply_attribute_is_reported_with_its_path(tmp_path: Path) -> None:
    text = MINIMAL + "replies:\n  groups:\n    - {group: g, attributes: {Filter-Idd: x}}\n"
    config = parse_config(text, REPO / "config" / "x.yaml")
    found = [p.render({}) for p in reply_problems(config.replies, load_dictionary())]
    assert found == [
        "replies.groups.0.attributes.Filter-Idd: unknown RADIUS attribute (not in the dictionaries)"
    ]


def test_yaml_syntax_error_has_a_line() -> None:
    found = problems("clients: [\n")
    assert "line" in found[0]


@pytest.mark.parametrize(
    ("octets", "offset"),
    [(b"\xff\xfe\x00x", 0), (b"server: {x: caf\xe9}\n", 15), (b"a: \xe2\x82", 3)],
)
def test_a_file_that_is_not_utf8_is_a_problem_naming_it(
    tmp_path: Path, octets: bytes, offset: int
) -> None:
    """Binary, Latin-1, or cut inside a character: a problem, never a traceback."""
    path = tmp_path / "mfaproxy.yaml"
    path.write_bytes(octets)
    with pytest.raises(ConfigError) as caught:
        read_document(path)
    assert caught.value.problems == [
        f"{path}: not UTF-8 text (octet {offset} is 0x{octets[offset]:02x})"
    ]


EXAMPLES = sorted(p for p in (REPO / "config").glob("*.yaml") if p.name != "users.yaml")
INSTALLED = re.compile(r"/(?:etc|var/lib)/mfaproxy/[\w./-]+")


def installed_copy(example: Path, root: Path) -> Path:
    """The example as installed under a fake root: each file it names below
    /etc/mfaproxy or /var/lib/mfaproxy exists there (a CA for .pem, else a secret)."""
    text = example.read_text()
    for absolute in sorted(set(INSTALLED.findall(text))):
        target = root / absolute.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.suffix == ".pem":
            CertificateAuthority.create().write(target)
        elif target.suffix not in (".key", ".sqlite3") and "." in target.name:
            target.write_text("a-long-random-secret-of-the-operator\n")
    text = INSTALLED.sub(lambda m: str(root) + m.group(0), text)
    copy = root / "etc" / "mfaproxy" / example.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(text)
    for sibling in ("users.yaml",):
        (copy.parent / sibling).write_text((example.parent / sibling).read_text())
    return copy


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path, tmp_path: Path) -> None:
    config = preflight.load(installed_copy(path, tmp_path))
    assert preflight.problems(config, load_dictionary(config.server.dictionaries)) == []


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mfaproxy", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_check_config_exit_codes(tmp_path: Path) -> None:
    ok = run_cli("check-config", "--config", str(REPO / "config/mfaproxy.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "client localhost" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL + "bogus: 1\n")
    failed = run_cli("check-config", "--config", str(bad))
    assert failed.returncode == 1
    assert "bogus" in failed.stderr
    missing = run_cli("check-config", "--config", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 1
    assert run_cli("no-such-command").returncode == 2


def test_hash_password_reads_stdin_and_verifies() -> None:
    from argon2 import PasswordHasher

    proc = subprocess.run(
        [sys.executable, "-m", "mfaproxy", "users", "hash-password"],
        input="hunter2\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0
    assert PasswordHasher().verify(proc.stdout.strip(), "hunter2")


def test_workers_need_a_shared_state_store(tmp_path: Path) -> None:
    found = problems(MINIMAL + "server:\n  workers: 2\n")
    assert any(p.startswith("server") and "shared state_store" in p for p in found), found
    config = parse_config(
        MINIMAL + "server:\n  workers: 2\n  state_store: {backend: sqlite, path: run/s.db}\n",
        tmp_path / "mfaproxy.yaml",
    )
    assert config.server.state_store.backend == "sqlite"
    assert config.server.state_store.path == tmp_path / "run" / "s.db"
    assert problems(MINIMAL + "server:\n  state_store: {backend: sqlite, url: x}\n")
