"""`mfaproxy doctor` against the real peers: slapd, aiosmtpd (STARTTLS, AUTH), FreeRADIUS
(upstream and OTP server), and the Duo, Twilio and YubiCloud fakes. Every dependency is
reported reachable; then each is stopped in turn and doctor names it."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.daemon import REPO
from tests.support.duo_fake import FakeDuo
from tests.support.freeradius import FreeRadiusServer, UserSpec
from tests.support.slapd import ALICE, SlapdServer
from tests.support.smtp import SmtpServer
from tests.support.twilio_fake import TwilioFake
from tests.support.yubicloud import FakeYubicloud

RADIUS_SECRET = "doctor-radius-secret"
RADIUS_USERS = {"rita": UserSpec("rita-pw", reply={"Class": b"staff"})}
YUBI_ID, YUBI_KEY = "4242", base64.b64encode(b"doctor yubicloud key").decode()
SMTP_USER, SMTP_PASSWORD = "mailer", "mailer-password"


def doctor(config: Path, *args: str, password: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mfaproxy", "doctor", "--config", str(config), *args],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=120,
    )


def lines(done: subprocess.CompletedProcess[str], status: str) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith(status)]


def write_config(tmp: Path, directory: dict[str, Any], **sections: Any) -> Path:
    config = {
        "server": {"state_dir": str(tmp / "state")},
        "clients": [{"name": "vpn", "address": "127.0.0.1", "secret": "x" * 24}],
        "directory": directory,
        **sections,
    }
    path = tmp / "mfaproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ldap_directory(slapd: SlapdServer) -> dict[str, Any]:
    return {
        "backend": "ldap",
        "ldap": {
            "servers": [slapd.ldap_url],
            "start_tls": True,
            "ca_file": str(slapd.ca_file),
            "base_dn": slapd.base_dn,
            "bind_dn": slapd.service_dn,
            "bind_password": slapd.service_password,
            "user_filter": "(uid={username})",
            "group_base_dn": "ou=groups,dc=example,dc=org",
        },
    }


def everything(
    tmp: Path,
    slapd: SlapdServer,
    smtp: SmtpServer,
    radius: FreeRadiusServer,
    duo: FakeDuo,
    twilio: TwilioFake,
    cloud: FakeYubicloud,
) -> Path:
    multifactor = {
        "enabled": ["totp", "duo", "radius", "sms", "yubikey", "email"],
        "default": "totp",
        "duo": {
            "integration_key": duo.ikey,
            "secret_key": duo.skey,
            "api_hostname": duo.api_hostname,
            "ca_file": str(duo.ca_file),
        },
        "radius": {
            "server": {"host": radius.host, "port": radius.port, "secret": RADIUS_SECRET},
            "timeout": 1,
            "retries": 0,
        },
        "sms": {
            "provider": "twilio",
            "twilio": {
                "account_sid": twilio.account_sid,
                "auth_token": twilio.auth_token,
                "from_number": "+15005550006",
                "base_url": twilio.base_url,
            },
        },
        "yubikey": {
            "validation": "yubicloud",
            "client_id": YUBI_ID,
            "api_key": YUBI_KEY,
            "api_urls": [cloud.url],
        },
    }
    smtp_section = {
        "host": "127.0.0.1",
        "port": smtp.port,
        "security": "starttls",
        "ca_file": str(smtp.ca_file),
        "username": SMTP_USER,
        "password": SMTP_PASSWORD,
        "from": "mfaproxy@example.com",
    }
    return write_config(tmp, ldap_directory(slapd), multifactor=multifactor, smtp=smtp_section)


@pytest.mark.e2e
def test_doctor_reports_each_dependency_then_names_the_one_stopped(tmp_path: Path) -> None:
    with (
        SlapdServer() as slapd,
        SmtpServer(tls_dir=tmp_path, users={SMTP_USER: SMTP_PASSWORD}) as smtp,
        FreeRadiusServer(RADIUS_USERS, secret=RADIUS_SECRET) as radius,
        FakeDuo() as duo,
        TwilioFake() as twilio,
        FakeYubicloud(YUBI_ID, YUBI_KEY) as cloud,
    ):
        config = everything(tmp_path, slapd, smtp, radius, duo, twilio, cloud)
        done = doctor(config, "--user", ALICE.uid)
        assert done.returncode == 0, done.stdout + done.stderr
        passed = "\n".join(lines(done, "pass"))
        for expected in (
            f"ldap {slapd.ldap_url}: connect:",
            f"ldap {slapd.ldap_url}: StartTLS: certificate verified",
            f"ldap {slapd.ldap_url}: service bind: as {slapd.service_dn}",
            f"ldap {slapd.ldap_url}: user search: uid=alice,ou=people,{slapd.base_dn}",
            f"ldap {slapd.ldap_url}: groups: cn=mfa-admins,ou=groups,dc=example,dc=org,"
            " cn=vpn-users,ou=groups,dc=example,dc=org, mfa-admins, vpn-users",
            f"smtp 127.0.0.1:{smtp.port}: connect: 220",
            f"smtp 127.0.0.1:{smtp.port}: STARTTLS: certificate verified",
            f"smtp 127.0.0.1:{smtp.port}: auth: as {SMTP_USER}",
            f"duo {duo.api_hostname}: /auth/v2/check: keys valid",
            f"otp radius {radius.host}:{radius.port}: Status-Server: Access-Accept",
            f"twilio 127.0.0.1:{twilio.port}: credentials: account {twilio.account_sid}",
            f"yubicloud {cloud.url}: verify: answered, signed with our API key",
        ):
            assert expected in passed, done.stdout
        assert lines(done, "FAIL") == []

        # Each dependency stopped in turn is the one named; the others still pass.
        stops = [
            (slapd.kill, f"FAIL  ldap {slapd.ldap_url}: connect:"),
            (smtp.stop, f"FAIL  smtp 127.0.0.1:{smtp.port}: connect:"),
            (radius.stop, f"FAIL  otp radius {radius.host}:{radius.port}: Status-Server:"),
            (duo.stop, f"FAIL  duo {duo.api_hostname}: /auth/v2/check:"),
        ]
        for count, (stop, named) in enumerate(stops, start=1):
            stop()
            done = doctor(config, "--user", ALICE.uid)
            assert done.returncode == 3, done.stdout
            failed = lines(done, "FAIL")
            assert any(line.startswith(named) for line in failed), done.stdout
            assert len(failed) == count, done.stdout  # only what is stopped fails
            assert f"{len(failed)} failed" in done.stdout


@pytest.mark.e2e
def test_doctor_names_a_wrong_service_password_and_an_unknown_user(tmp_path: Path) -> None:
    with SlapdServer() as slapd:
        directory = ldap_directory(slapd)
        config = write_config(tmp_path, directory)
        done = doctor(config, "--user", "nobody-by-that-name")
        assert done.returncode == 3
        assert f"FAIL  ldap {slapd.ldap_url}: user search: (uid=nobody-by-that-name)" in done.stdout
        assert "no_such_user" in done.stdout
        directory["ldap"]["bind_password"] = "not-the-service-password"
        config = write_config(tmp_path, directory)
        done = doctor(config)
        assert f"FAIL  ldap {slapd.ldap_url}: service bind:" in done.stdout
        assert "not-the-service-password" not in done.stdout + done.stderr


@pytest.mark.e2e
def test_doctor_test_login_against_ldap(tmp_path: Path) -> None:
    with SlapdServer() as slapd:
        config = write_config(tmp_path, ldap_directory(slapd))
        done = doctor(config, "--user", ALICE.uid, "--login", password=ALICE.password)
        assert done.returncode == 0, done.stdout
        assert "pass  login ldap: test login: alice accepted by ldap" in done.stdout
        wrong = doctor(config, "--user", ALICE.uid, "--login", password="wrong")
        assert wrong.returncode == 3
        assert "FAIL  login ldap: test login: alice: reject (bad_password)" in wrong.stdout


@pytest.mark.e2e
def test_doctor_upstream_radius_status_server_and_login(tmp_path: Path) -> None:
    with FreeRadiusServer(RADIUS_USERS, secret=RADIUS_SECRET) as radius:
        directory: dict[str, Any] = {
            "backend": "radius",
            "radius": {
                "servers": [{"host": radius.host, "port": radius.port, "secret": RADIUS_SECRET}],
                "timeout": 1,
                "retries": 0,
            },
        }
        config = write_config(tmp_path, directory)
        done = doctor(config, "--user", "rita", "--login", password="rita-pw")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"pass  radius {radius.host}:{radius.port}: Status-Server: Access-Accept" in (
            done.stdout
        )
        assert "pass  login radius: test login: rita accepted by radius" in done.stdout
        directory["radius"]["servers"][0]["secret"] = "another-secret-entirely"
        done = doctor(write_config(tmp_path, directory))
        assert done.returncode == 3
        assert f"FAIL  radius {radius.host}:{radius.port}: Status-Server: no valid answer" in (
            done.stdout
        )
