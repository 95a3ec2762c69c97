"""A real OpenLDAP slapd on loopback for tests, with TLS and memberOf.

Usage, in a test module or a conftest::

    @pytest.fixture(scope="session")
    def slapd() -> Iterator[SlapdServer]:
        with SlapdServer() as server:
            yield server

or ``slapd_fixture = pytest.fixture(scope="session")(run_slapd)``.

The server listens on ``ldap_url`` (plain, StartTLS offered) and ``ldaps_url`` (TLS
from the first byte), both on 127.0.0.1 and free ports, in a private temporary
directory. Its certificate is issued by a CA generated per server (``ca_file``) for
IP 127.0.0.1 and DNS ``localhost``. The directory holds, under ``dc=example,dc=org``:

- ``ou=people``: ALICE (groups vpn-users and mfa-admins, mail, mobile), BOB (vpn-users,
  mail only), CAROL (no groups, no mail, no mobile), DAVE (uid ``dave (ops), jr+1``,
  vpn-users, mail: a name that needs escaping); passwords in the constants below.
- ``ou=groups``: groupOfNames ``vpn-users`` and ``mfa-admins``; the memberof overlay
  fills each user's ``memberOf``.
- ``ou=services``: SERVICE_DN, a read-only search account for search-then-bind.

Access control follows a hardened deployment: passwords are only usable to bind,
anonymous users read nothing, authenticated users read the tree.

Requires the Debian packages ``slapd`` and ``ldap-utils`` (``make test`` installs them).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from ldap3 import Connection, Server
from ldap3.core.exceptions import LDAPException

from tests.support.ports import free_port
from tests.support.process import ManagedServer

SLAPD = Path("/usr/sbin/slapd")
LDAPADD = "ldapadd"
MODULE_PATH = Path("/usr/lib/ldap")
SCHEMA_DIR = Path("/etc/ldap/schema")

BASE_DN = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "admin-Secret-1"
SERVICE_DN = f"cn=mfaproxy,ou=services,{BASE_DN}"
SERVICE_PASSWORD = "service-Secret-2"
PEOPLE_DN = f"ou=people,{BASE_DN}"
GROUPS_DN = f"ou=groups,{BASE_DN}"

ALICE_PASSWORD = "alice-Pa55word!"
BOB_PASSWORD = "bob-Pa55word!"
CAROL_PASSWORD = "carol-Pa55word!"
DAVE_PASSWORD = "dave-Pa55word!"

STARTUP_TIMEOUT = 20.0


@dataclass(frozen=True)
class LdapTestUser:
    uid: str
    password: str
    groups: tuple[str, ...] = ()
    mail: str | None = None
    mobile: str | None = None

    @property
    def dn(self) -> str:
        return f"uid={escape_dn_value(self.uid)},{PEOPLE_DN}"


def escape_dn_value(value: str) -> str:
    """RFC 4514 section 2.4, enough for the names used here."""
    escaped = "".join(f"\\{char}" if char in '\\,+"<>;=' else char for char in value)
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    return escaped[:-1] + "\\ " if escaped.endswith(" ") else escaped


ALICE = LdapTestUser(
    "alice", ALICE_PASSWORD, ("vpn-users", "mfa-admins"), "alice@example.org", "+15551230001"
)
BOB = LdapTestUser("bob", BOB_PASSWORD, ("vpn-users",), "bob@example.org")
CAROL = LdapTestUser("carol", CAROL_PASSWORD)
# A name with characters special in filters (RFC 4515) and DNs (RFC 4514): found and
# bound only when the client escapes them.
DAVE = LdapTestUser("dave (ops), jr+1", DAVE_PASSWORD, ("vpn-users",), "dave@example.org")
USERS = (ALICE, BOB, CAROL, DAVE)
GROUPS = ("vpn-users", "mfa-admins")


def ssha(password: str) -> str:
    """A salted SHA-1 userPassword value, the scheme slapd verifies natively."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


# --------------------------------------------------------------------------- TLS


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, common_name: str = "mfaproxy test CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue_server(self, cert_path: Path, key_path: Path) -> None:
        """A server certificate for 127.0.0.1 and localhost (RFC 6125 checks the SAN)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        san = x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# --------------------------------------------------------------------------- config and data


def _slapd_conf(root: Path) -> str:
    schemas = "".join(
        f"include {SCHEMA_DIR / name}.schema\n" for name in ("core", "cosine", "inetorgperson")
    )
    return f"""{schemas}
modulepath {MODULE_PATH}
moduleload back_mdb
moduleload memberof
pidfile {root}/slapd.pid
argsfile {root}/slapd.args
TLSCACertificateFile {root}/ca.pem
TLSCertificateFile {root}/server.pem
TLSCertificateKeyFile {root}/server.key

database mdb
maxsize 16777216
suffix "{BASE_DN}"
rootdn "{ADMIN_DN}"
rootpw {ssha(ADMIN_PASSWORD)}
directory {root}/db
index objectClass eq
index uid eq
index member eq

overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE

access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"""


def _entry(dn: str, *lines: str) -> str:
    return "\n".join((f"dn: {dn}", *lines)) + "\n"


def _user_entry(user: LdapTestUser) -> str:
    lines = [
        "objectClass: inetOrgPerson",
        f"uid: {user.uid}",
        f"cn: {user.uid.title()}",
        f"sn: {user.uid.title()}",
        f"userPassword: {ssha(user.password)}",
    ]
    lines += [f"mail: {user.mail}"] if user.mail else []
    lines += [f"mobile: {user.mobile}"] if user.mobile else []
    return _entry(user.dn, *lines)


def build_ldif(users: Sequence[LdapTestUser] = USERS) -> str:
    """Users before groups: the memberof overlay needs the member entries to exist."""
    entries = [
        _entry(BASE_DN, "objectClass: dcObject", "objectClass: organization", "o: Example"),
        *(
            _entry(f"ou={ou},{BASE_DN}", "objectClass: organizationalUnit", f"ou: {ou}")
            for ou in ("people", "groups", "services")
        ),
        _entry(
            SERVICE_DN,
            "objectClass: organizationalRole",
            "objectClass: simpleSecurityObject",
            "cn: mfaproxy",
            f"userPassword: {ssha(SERVICE_PASSWORD)}",
        ),
        *(_user_entry(user) for user in users),
    ]
    for group in GROUPS:
        members = [f"member: {user.dn}" for user in users if group in user.groups]
        entries.append(
            _entry(f"cn={group},{GROUPS_DN}", "objectClass: groupOfNames", f"cn: {group}", *members)
        )
    return "\n".join(entries)


# --------------------------------------------------------------------------- the server


class SlapdServer(ManagedServer):
    """A slapd subprocess; a context manager that starts it and always stops it."""

    base_dn = BASE_DN
    admin_dn = ADMIN_DN
    admin_password = ADMIN_PASSWORD
    service_dn = SERVICE_DN
    service_password = SERVICE_PASSWORD

    def __init__(self, extra_users: Sequence[LdapTestUser] = (), log_level: str = "stats") -> None:
        """`extra_users` join the four test users (a benchmark loads a thousand);
        `log_level` is slapd's `-d` level (`stats` logs every operation, `0` nothing)."""
        self.users = (*USERS, *extra_users)
        self._log_level = log_level
        self._tmp = tempfile.TemporaryDirectory(prefix="mfaproxy-slapd-")
        self.root = Path(self._tmp.name)
        self.ldap_port = free_port()
        self.ldaps_port = free_port()
        self.ldap_url = f"ldap://127.0.0.1:{self.ldap_port}"
        self.ldaps_url = f"ldaps://127.0.0.1:{self.ldaps_port}"
        self.ca_file = self.root / "ca.pem"
        self.log_file = self.root / "slapd.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not SLAPD.exists() or shutil.which(LDAPADD) is None:
            raise RuntimeError(
                "slapd and ldap-utils are required: apt-get install slapd ldap-utils"
            )
        ca = CertificateAuthority.create()
        ca.write(self.ca_file)
        ca.issue_server(self.root / "server.pem", self.root / "server.key")
        (self.root / "db").mkdir()
        (self.root / "slapd.conf").write_text(_slapd_conf(self.root))
        self._launch()
        self._load(build_ldif(self.users))

    def _launch(self) -> None:
        urls = f"{self.ldap_url}/ {self.ldaps_url}/"
        # -d keeps slapd in the foreground so this object owns the process; "stats"
        # logs each connection and operation, useful when a test fails.
        conf = self.root / "slapd.conf"
        command = [str(SLAPD), "-f", str(conf), "-h", urls, "-d", self._log_level]
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def kill(self) -> None:
        """Stop the process abruptly (SIGKILL): its connections die without a word."""
        self._terminate(kill=True)

    def restart(self, *, kill: bool = False) -> None:
        """Stop the process and start it again on the same ports with the same data:
        every connection a client held is gone, the directory is not."""
        self._terminate(kill=kill)
        self._launch()

    def resume(self) -> None:
        """Start the process again after `kill()` (same ports, same data)."""
        self._launch()

    def _terminate(self, *, kill: bool = False) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            if kill:
                process.kill()
            else:
                process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        self._terminate()
        self._tmp.cleanup()

    def _wait_ready(self) -> None:
        """Poll an admin bind until it works; fail fast if slapd exits."""
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"slapd exited ({self._process.returncode}):\n{self.log()}")
            try:
                server = Server(self.ldap_url, connect_timeout=1)
                conn = Connection(server, self.admin_dn, self.admin_password, receive_timeout=2)
                if conn.bind():
                    conn.unbind()
                    return
            except LDAPException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"slapd not ready after {STARTUP_TIMEOUT} s:\n{self.log()}")
            # Waiting on the process doubles as the poll interval and notices an exit.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=0.05)

    def add(self, ldif: str) -> None:
        """Add more entries (LDIF) as the admin, for a test's own cases."""
        self._load(ldif)

    def _load(self, ldif: str) -> None:
        """Add entries over LDAP, not slapadd, so the memberof overlay sees them."""
        command = [LDAPADD, "-x", "-H", self.ldap_url, "-D", self.admin_dn, "-w", ADMIN_PASSWORD]
        done = subprocess.run(command, input=ldif.encode(), capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ldapadd failed: {done.stderr.decode(errors='replace')}")

    def log_text(self) -> str:
        """The whole log (with `log_level="stats"`: one line per connection and operation)."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


def run_slapd() -> Iterator[SlapdServer]:
    """Generator for a pytest fixture: one slapd for the fixture's scope."""
    with SlapdServer() as server:
        yield server
