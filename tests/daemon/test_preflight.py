"""The one validation pipeline: what serve refuses, check-config refuses first, every
problem in one pass, each with its dotted path and YAML line."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from hypothesis import given, settings
from hypothesis import strategies as st

from mfaproxy.config.problems import Problem, unknown_key_message
from mfaproxy.daemon import preflight
from mfaproxy.directory.local import hash_problem
from mfaproxy.errors import ConfigError
from tests.support.daemon import REPO, Daemon

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
GOOD_HASH = CHEAP.hash("right password")

BASE = """\
clients:
  - name: vpn
    address: 127.0.0.1
    secret: a-long-enough-shared-secret
directory:
  backend: local
  local: {users_file: users.yaml}
"""


def write(tmp: Path, text: str, users: dict[str, str] | None = None) -> Path:
    hashes = users if users is not None else {"alice": GOOD_HASH}
    body = {"users": {name: {"password_hash": h} for name, h in hashes.items()}}
    (tmp / "users.yaml").write_text(yaml.safe_dump(body))
    path = tmp / "mfaproxy.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        preflight.load(path)
    return info.value.problems


def mfaproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mfaproxy", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=60,
    )


# --------------------------------------------------------------------------- files serve opens


def test_a_missing_geoip_database_fails_check_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE
        + """\
access_policies:
  mfa:
    policies:
      - name: abroad
        rules: [{type: geo_ip, countries: [CA], database: geo/absent.mmdb}]
        action_when_matched: mfa_required
""",
    )
    done = mfaproxy("check-config", "--config", str(path))
    assert done.returncode == 1
    assert "access_policies.mfa.policies.0.rules.0.database (line 12)" in done.stderr
    assert str(tmp_path / "geo" / "absent.mmdb") in done.stderr


def test_a_bad_sms_template_fails_check_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE
        + """\
multifactor:
  enabled: [totp, sms]
  sms:
    provider: email_gateway
    email_gateway: {domain: sms.example.com}
    message: "Code: {cod}"
""",
    )
    found = problems_of(path)
    assert found == [
        "multifactor.sms.message (line 13): unknown placeholder(s) ['cod']; use {code}, {minutes}"
    ]


@pytest.mark.parametrize(
    ("value", "ok"),
    [("n" * 253, True), ("n" * 254, False), ("é" * 126, True), ("é" * 127, False)],
    ids=["253-ascii", "254-ascii", "252-octets-utf8", "254-octets-utf8"],
)
def test_nas_identifier_is_limited_to_253_octets(tmp_path: Path, value: str, ok: bool) -> None:
    # RFC 2865 section 5.32: octets, not characters: "é" is two octets in UTF-8.
    path = write(
        tmp_path,
        f"""\
clients: [{{name: vpn, address: 127.0.0.1, secret: a-long-enough-shared-secret}}]
directory:
  backend: radius
  radius:
    servers: [{{host: 127.0.0.1, secret: another-long-secret}}]
    nas_identifier: "{value}"
multifactor:
  enabled: [radius]
  default: radius
  radius:
    server: {{host: 127.0.0.1, secret: another-long-secret}}
    nas_identifier: "{value}"
""",
    )
    if ok:
        preflight.load(path)
        return
    found = problems_of(path)
    assert [p.split(" (line")[0] for p in found] == [
        "directory.radius.nas_identifier",
        "multifactor.radius.nas_identifier",
    ]
    assert all("at most 253" in p for p in found)


def test_a_missing_ca_bundle_fails_check_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
clients: [{name: vpn, address: 127.0.0.1, secret: a-long-enough-shared-secret}]
directory:
  backend: ldap
  ldap:
    servers: ["ldaps://127.0.0.1"]
    user_dn_template: "uid={username},dc=example,dc=org"
    ca_file: certs/absent.pem
""",
    )
    (found,) = problems_of(path)
    assert found.startswith("directory.ldap.ca_file (line 7): cannot load ")
    assert "absent.pem" in found


def test_a_missing_dictionary_file_fails_check_config(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "server: {dictionaries: [dictionary.vendor]}\n")
    (found,) = problems_of(path)
    assert found.startswith("server.dictionaries (line 8): cannot load")


def test_an_unsafe_master_key_fails_check_config_not_only_serve(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "server: {state_dir: state}\n")
    (tmp_path / "state").mkdir()
    key = tmp_path / "state" / "master.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    (found,) = problems_of(path)
    assert "server.state_dir (line 8)" in found and "chmod 600" in found
    key.chmod(0o600)
    preflight.load(path)


def test_check_config_creates_no_key_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "server: {state_dir: state}\n")
    preflight.load(path)
    assert not (tmp_path / "state").exists()


# --------------------------------------------------------------------------- password hashes


@pytest.mark.parametrize(
    "broken",
    [
        GOOD_HASH[:-2],  # truncated mid-character: 41 base64 characters decode to nothing
        GOOD_HASH.rsplit("$", 1)[0] + "$!!!!!!!!",  # not base64
        GOOD_HASH.replace("$v=19$", "$v=21$"),  # unknown version
        GOOD_HASH.replace("m=8,", "m=4,"),  # less memory than one lane needs
        "$argon2id$v=19$m=65536,t=3,p=4$garbage",  # a field is missing
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
    ],
    ids=["truncated", "not-base64", "version", "memory", "missing-part", "bcrypt"],
)
def test_a_corrupt_hash_is_refused_at_load(tmp_path: Path, broken: str) -> None:
    path = write(tmp_path, BASE, users={"alice": GOOD_HASH, "bob": broken})
    (found,) = problems_of(path)
    assert found.startswith("directory.local.users_file (line 7): ")
    assert "users.bob.password_hash (line 5)" in found


@settings(max_examples=200)
@given(position=st.integers(min_value=0), char=st.characters(codec="ascii"))
def test_any_hash_that_passes_the_check_can_be_verified(position: int, char: str) -> None:
    # The attack the check defends against: a hash libargon2 cannot decode rejects the
    # right password fast, unlike a wrong one. Whatever a one-character corruption does
    # to a hash, either the check refuses it or verification really runs.
    index = position % len(GOOD_HASH)
    mutated = GOOD_HASH[:index] + char + GOOD_HASH[index + 1 :]
    if hash_problem(mutated) is not None:
        return
    try:
        CHEAP.verify(mutated, "right password")
    except VerifyMismatchError:
        pass  # a different but well-formed hash: a real verification said no
    except (InvalidHashError, VerificationError) as exc:
        pytest.fail(f"{mutated!r} passed the check but cannot be verified: {exc!r}")


# --------------------------------------------------------------------------- one pass, lines


def test_every_problem_is_reported_in_one_pass_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE
        + """\
server:
  listen: ["127.0.0.1:1812"]
  lissen: 1
replies:
  groups:
    - group: vpn-users
      attributes: {Filter-Idd: x}
""",
        users={"alice": "not-a-hash"},
    )
    found = problems_of(path)
    # The schema error in `server` does not hide the deeper checks of the valid sections.
    assert [p.split(":")[0] for p in found] == [
        "directory.local.users_file (line 7)",
        "server.lissen (line 10)",
        "replies.groups.0.attributes.Filter-Idd (line 14)",
    ]


def test_unknown_keys_get_a_did_you_mean(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
clients:
  - name: vpn
    address: 127.0.0.1
    secrt: a-long-enough-shared-secret
server:
  state_store: {backend: redis, urll: "redis://127.0.0.1"}
directory:
  backend: ldap
  ldap:
    servers: ["ldaps://127.0.0.1"]
    bind_dn: cn=svc
    bind_pasword_file: pw.txt
""",
    )
    found = "\n".join(problems_of(path))
    assert "clients.0.secrt (line 4): unknown key; did you mean 'secret'?" in found
    # The union tag (`redis`) is not in the path: the path is the one in the file.
    assert "server.state_store.urll (line 6): unknown key; did you mean 'url'?" in found
    assert "directory.ldap.bind_pasword_file (line 12): unknown key; did you mean" in found
    assert "'bind_password_file'" in found


def test_an_unknown_key_far_from_any_lists_the_allowed_ones() -> None:
    assert unknown_key_message("zzz", {"host", "port"}) == "unknown key; allowed here: host, port"


def test_a_problem_without_a_line_still_has_its_path() -> None:
    assert Problem(("server", "listen"), "bad").render({}) == "server.listen: bad"


# --------------------------------------------------------------------------- serve = check-config


def test_serve_refuses_what_check_config_refuses_with_the_same_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE + "replies:\n  attributes: {Filter-Idd: x}\n",
        users={"alice": GOOD_HASH[:-2]},
    )
    checked = mfaproxy("check-config", "--config", str(path))
    served = mfaproxy("serve", "--config", str(path))
    assert checked.returncode == served.returncode == 1
    problem_lines = [line for line in checked.stderr.splitlines() if line.startswith("  ")]
    assert len(problem_lines) == 2
    assert problem_lines == [line for line in served.stderr.splitlines() if line.startswith("  ")]


@pytest.mark.e2e
def test_reload_runs_the_same_pipeline(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    config = yaml.safe_load(BASE.replace("users.yaml", str(tmp_path / "users.yaml")))
    with Daemon(tmp_path, config) as daemon:
        assert daemon.proc is not None
        broken = daemon.config_path.read_text() + "replies:\n  attributes: {Filter-Idd: x}\n"
        (tmp_path / "users.yaml").write_text(
            yaml.safe_dump({"users": {"alice": {"password_hash": GOOD_HASH[:-2]}}})
        )
        daemon.config_path.write_text(broken)
        daemon.proc.send_signal(signal.SIGHUP)
        failed = daemon.wait_for(lambda e: e.get("event") == "reload_failed")
    line = len(broken.splitlines())
    assert any(f"replies.attributes.Filter-Idd (line {line})" in p for p in failed["problems"])
    assert any("users.alice.password_hash" in p for p in failed["problems"])


# --------------------------------------------------------------------------- warnings


def test_check_config_prints_each_warning_with_its_line_risk_and_fix() -> None:
    done = mfaproxy("check-config", "--config", str(REPO / "config" / "mfaproxy.yaml"))
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    # the shipped demo keeps only its demo secret; it lets no password holder enrol
    start = out.index("1 warning(s):")
    assert out[start + 1].startswith("  clients.0.secret (line ")
    assert out[start + 2].startswith("    risk: ") and out[start + 3].startswith("    fix: ")
    strict = mfaproxy("check-config", "--strict", "--config", str(REPO / "config/mfaproxy.yaml"))
    assert strict.returncode == 1


@pytest.mark.e2e
def test_serve_logs_each_warning_at_start(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    config = yaml.safe_load(BASE.replace("users.yaml", str(tmp_path / "users.yaml")))
    config["clients"][0]["secret"] = "testing123"
    config["multifactor"] = {"inline_enrolment": {"administrators": True}}
    with Daemon(tmp_path, config) as daemon:
        warned = {e["warning"]: e for e in daemon.events if e.get("event") == "config_warning"}
    assert sorted(warned) == ["demo_shared_secret", "inline_enrolment_administrators"]
    assert warned["demo_shared_secret"]["where"] == "clients.0.secret"
    assert warned["demo_shared_secret"]["level"] == "warning"
    assert all(e["risk"] and e["fix"] for e in warned.values())
    assert "testing123" not in daemon.output  # a warning about a secret never shows it


@pytest.mark.parametrize(("peak", "warned"), [(100_000, True), (1, False)])
def test_check_config_measures_the_hash_cost_against_the_stated_peak(
    tmp_path: Path, peak: int, warned: bool
) -> None:
    # The file's hashes are at argon2-cffi's old default (m=64 MiB, t=3, p=4): about a
    # dozen checks per second on two cores, nowhere near 100,000 logins/s.
    heavy = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4).hash("pw")
    text = BASE.replace(
        "local: {users_file: users.yaml}",
        f"local: {{users_file: users.yaml, peak_logins_per_second: {peak}}}",
    )
    path = write(tmp_path, text, {"alice": heavy, "bob": heavy})
    done = mfaproxy("check-config", "--config", str(path))
    assert done.returncode == 0, done.stderr
    found = "directory.local.peak_logins_per_second" in done.stdout
    assert found is warned, done.stdout
    if warned:
        assert "m=65536,t=3,p=4" in done.stdout and "passwords/s" in done.stdout
