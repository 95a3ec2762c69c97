"""Run a real FreeRADIUS 3.x server for tests and benchmarks.

`FreeRadiusServer` writes a minimal raddb (one radiusd.conf and one users file) into a
temporary directory, starts `/usr/sbin/freeradius -f` on loopback and a free UDP port,
waits until it answers a Status-Server (RFC 5997), and stops it on exit. Nothing is read
from /etc/freeradius; the dictionaries come from /usr/share/freeradius (`-D`).

API::

    from tests.support.freeradius import Challenge, FreeRadiusServer, UserSpec

    users = {
        "alice": UserSpec("alice-pw", reply={"Class": "vpn", "Filter-Id": "staff"}),
        "carol": UserSpec("carol-pw", challenge=Challenge(response="123456")),
    }
    with FreeRadiusServer(users, secret="s3cret") as radius:
        radius.host, radius.port, radius.secret      # "127.0.0.1", 41234, "s3cret"
        radius.address                               # ("127.0.0.1", 41234)
        radius.log_text()                            # the server's log so far

`FreeRadiusServer(users, secret="testing123", *, host="127.0.0.1", port=None,
require_message_authenticator=True, sign_replies=True, threads=4, debug=False,
startup_timeout=10.0)`:

- `users`: name -> `UserSpec(password, reply={}, challenge=None, checks={})`, served by
  the `files` module and checked with `pap`. `reply` values are str (quoted), int or
  bytes (hex) and are sent in the Access-Accept; a list value repeats the attribute.
  `checks` are request attributes the user also needs (`{"NAS-Identifier": "vpn"}`).
  An unknown user, a wrong password or a failed check gets an Access-Reject without
  reply attributes. Thousands of users are fine (the `files` module hashes them by
  name), e.g. for a benchmark.
- `Challenge(response, prompt="Enter your code", state=b"fr-test-state")`: after the
  right password the server answers Access-Challenge with `prompt` as Reply-Message and
  `state` as State; the next Access-Request carrying that State and `response` as
  User-Password gets the Access-Accept with the user's reply attributes.
- `require_message_authenticator`: the client entry's setting (RFC 3579 section 3.2).
- `sign_replies`: add a Message-Authenticator to every reply. FreeRADIUS before 3.2.5
  does not sign Access-Accept/Reject/Challenge by itself; a client that requires it
  (BlastRADIUS, CVE-2024-3596) needs this. Turning it off only removes the attribute on
  those older versions.
- `port=None` picks a free port, and retries with another one if FreeRADIUS loses the
  race for it. `debug=True` runs with `-xx` (per-request debug in the log).
- `accounting=True` adds an accounting listener (`acct_port`, free unless given) whose
  `detail` module writes every Accounting-Request to a file before the server answers:
  `detail_records()` returns them, oldest first, as attribute -> value (radclient's text
  form, quotes removed). `stop()` then `start()` on a server built with fixed ports
  brings the same server back (an upstream outage and its end).

`rfc_dictionary()` returns a pyrad Dictionary with the RFC 2865 and RFC 2869 attributes,
for tests that need one before the shipped dictionaries are loaded.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyrad import packet as radpacket
from pyrad.dictionary import Dictionary

from tests.support.ports import free_udp_port
from tests.support.process import ManagedServer

FREERADIUS = "/usr/sbin/freeradius"
DICTDIR = Path("/usr/share/freeradius")

ReplyValue = str | int | bytes
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def rfc_dictionary() -> Any:
    """A pyrad Dictionary of RFC 2865 (base) and RFC 2869 (Message-Authenticator...)."""
    return Dictionary(str(DICTDIR / "dictionary.rfc2865"), str(DICTDIR / "dictionary.rfc2869"))


@dataclass(frozen=True)
class Challenge:
    response: str
    prompt: str = "Enter your code"
    state: bytes = b"fr-test-state"


@dataclass(frozen=True)
class UserSpec:
    password: str
    reply: Mapping[str, ReplyValue | Sequence[ReplyValue]] = field(default_factory=dict)
    challenge: Challenge | None = None
    # Request attributes the entry also requires (`Name == value` check items).
    checks: Mapping[str, ReplyValue] = field(default_factory=dict)
    # A crypt(3) hash (`$6$...`) checked by `pap` instead of the cleartext `password`.
    crypt_hash: str | None = None


@dataclass(frozen=True)
class LdapBackend:
    """rlm_ldap: search with a pooled service connection, then bind as the user (the
    `authenticate` section), the way a FreeRADIUS operator sets up LDAP passwords."""

    url: str
    identity: str
    password: str
    base_dn: str
    filter: str = "(uid=%{User-Name})"
    pool: int = 16


# --------------------------------------------------------------------------- config text


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _value(value: ReplyValue) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex() if value else '""'
    if isinstance(value, int):
        return str(value)
    return _quote(value)


def _name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"bad attribute name {name!r}")
    return name


def _pairs(reply: Mapping[str, ReplyValue | Sequence[ReplyValue]]) -> list[str]:
    pairs = []
    for name, given in reply.items():
        values = [given] if isinstance(given, str | int | bytes) else list(given)
        # `+=` appends, so a list value repeats the attribute.
        pairs += [f"{_name(name)} += {_value(v)}" for v in values]
    return pairs


def _entry(name: str, checks: list[str], replies: list[str]) -> str:
    lines = [f"{_quote(name)} {', '.join(checks)}"]
    lines += [f"\t{pair}," for pair in replies]
    if len(lines) > 1:
        lines[-1] = lines[-1].rstrip(",")
    return "\n".join(lines) + "\n"


def users_file(users: Mapping[str, UserSpec]) -> str:
    """The `files` module's users file; the first matching entry wins."""
    entries = []
    for name, spec in users.items():
        checks = [f"{_name(k)} == {_value(v)}" for k, v in spec.checks.items()]
        password = (
            f"Crypt-Password := {_quote(spec.crypt_hash)}"
            if spec.crypt_hash is not None
            else f"Cleartext-Password := {_quote(spec.password)}"
        )
        reply = _pairs(spec.reply)
        if spec.challenge is None:
            entries.append(_entry(name, [*checks, password], reply))
            continue
        state = f"0x{spec.challenge.state.hex()}"
        answer = f"Cleartext-Password := {_quote(spec.challenge.response)}"
        entries.append(_entry(name, [f"State == {state}", *checks, answer], reply))
        challenge = [f"State := {state}", f"Reply-Message := {_quote(spec.challenge.prompt)}"]
        to_challenge = [*checks, password, "Response-Packet-Type := Access-Challenge"]
        entries.append(_entry(name, to_challenge, challenge))
    return "\n".join(entries)


_SIGN = """update reply {
\t\t\tMessage-Authenticator := 0x00
\t\t}"""


def _ldap_module(ldap: LdapBackend) -> str:
    return f"""
\tldap {{
\t\tserver = {_quote(ldap.url)}
\t\tidentity = {_quote(ldap.identity)}
\t\tpassword = {_quote(ldap.password)}
\t\tbase_dn = {_quote(ldap.base_dn)}
\t\tuser {{
\t\t\tbase_dn = {_quote(ldap.base_dn)}
\t\t\tfilter = {_quote(ldap.filter)}
\t\t}}
\t\toptions {{
\t\t\tchase_referrals = no
\t\t\tnet_timeout = 3
\t\t\tres_timeout = 5
\t\t\tsrv_timelimit = 5
\t\t}}
\t\tpool {{
\t\t\tstart = {ldap.pool}
\t\t\tmin = {ldap.pool}
\t\t\tmax = {ldap.pool}
\t\t\tspare = {ldap.pool}
\t\t\tuses = 0
\t\t\tlifetime = 0
\t\t\tidle_timeout = 0
\t\t}}
\t}}
"""


_LDAP_AUTHORIZE = """
\t\tldap
\t\tif ((ok || updated) && User-Password) {
\t\t\tupdate control {
\t\t\t\tAuth-Type := ldap
\t\t\t}
\t\t}"""

_LDAP_AUTHENTICATE = """
\t\tAuth-Type LDAP {
\t\t\tldap
\t\t}"""


def _accounting_blocks(
    root: Path, family: str, host: str, acct_port: int | None
) -> tuple[str, str]:
    """The accounting listener and sections, and the detail module (or nothing)."""
    if acct_port is None:
        return "", ""
    module = f"""
\tdetail {{
\t\tfilename = {root}/detail
\t\tescape_filenames = no
\t\tpermissions = 0600
\t\theader = "%t"
\t\tlocking = no
\t}}"""
    server = f"""
\tlisten {{
\t\ttype = acct
\t\t{family} = {host}
\t\tport = {acct_port}
\t}}
\taccounting {{
\t\tdetail
\t}}"""
    return module, server


def radiusd_conf(
    root: Path,
    host: str,
    port: int,
    secret: str,
    *,
    require_ma: bool,
    sign: bool,
    threads: int,
    ldap: LdapBackend | None = None,
    acct_port: int | None = None,
) -> str:
    """A self-contained radiusd.conf: no user/group, so it runs as whoever starts it."""
    family = "ipv6addr" if ":" in host else "ipaddr"
    sign_block = _SIGN if sign else "# replies left unsigned"
    ldap_module = _ldap_module(ldap) if ldap is not None else ""
    ldap_authorize = _LDAP_AUTHORIZE if ldap is not None else ""
    ldap_authenticate = _LDAP_AUTHENTICATE if ldap is not None else ""
    acct_module, acct_server = _accounting_blocks(root, family, host, acct_port)
    return f"""
prefix = /usr
exec_prefix = /usr
sysconfdir = {root}
localstatedir = {root}
sbindir = /usr/sbin
logdir = {root}
raddbdir = {root}
radacctdir = {root}
name = freeradius
confdir = {root}
run_dir = {root}
db_dir = {root}
libdir = /usr/lib/freeradius
pidfile = {root}/radiusd.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 65536
hostname_lookups = no
log {{
\tdestination = stdout
\tauth = yes
}}
security {{
\tallow_core_dumps = no
\tmax_attributes = 200
\treject_delay = 0
\tstatus_server = yes
}}
thread pool {{
\tstart_servers = {threads}
\tmax_servers = {threads}
\tmin_spare_servers = 1
\tmax_spare_servers = {threads}
\tmax_requests_per_server = 0
}}
client test {{
\t{family} = {host}
\tsecret = {_quote(secret)}
\trequire_message_authenticator = {"yes" if require_ma else "no"}
}}
modules {{
\tpap {{
\t\tnormalise = no
\t}}
\tfiles {{
\t\tfilename = {root}/users
\t}}{ldap_module}{acct_module}
}}
server default {{
\tlisten {{
\t\ttype = auth
\t\t{family} = {host}
\t\tport = {port}
\t}}{acct_server}
\tauthorize {{
\t\tfiles{ldap_authorize}
\t\tpap
\t}}
\tauthenticate {{
\t\tAuth-Type PAP {{
\t\t\tpap
\t\t}}{ldap_authenticate}
\t}}
\tpost-auth {{
\t\t{sign_block}
\t\tPost-Auth-Type REJECT {{
\t\t\tupdate {{
\t\t\t\t&reply: !* ANY
\t\t\t}}
\t\t\t{sign_block}
\t\t}}
\t\tPost-Auth-Type Challenge {{
\t\t\t{sign_block}
\t\t}}
\t}}
}}
"""


# --------------------------------------------------------------------------- process


def status_server_answered(host: str, port: int, secret: str, wait: float) -> bool:
    """Send one Status-Server (RFC 5997) and say whether a verified reply came back."""
    request = radpacket.AuthPacket(code=radpacket.StatusServer, secret=secret.encode())
    request.add_message_authenticator()
    raw = request.RequestPacket()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        try:
            sock.connect((host, port))
            sock.send(raw)
            data = sock.recv(4096)
        except OSError:  # timeout, or ICMP port unreachable while it starts
            return False
    try:
        reply = request.CreateReply(packet=data)
    except radpacket.PacketError:
        return False
    return bool(request.VerifyReply(reply, data))


class FreeRadiusServer(ManagedServer):
    """A FreeRADIUS process on loopback; see the module docstring."""

    def __init__(
        self,
        users: Mapping[str, UserSpec],
        secret: str = "testing123",
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        require_message_authenticator: bool = True,
        sign_replies: bool = True,
        threads: int = 4,
        debug: bool = False,
        startup_timeout: float = 10.0,
        ldap: LdapBackend | None = None,
        accounting: bool = False,
        acct_port: int | None = None,
    ) -> None:
        self.users = dict(users)
        self._ldap = ldap
        self.secret = secret
        self.host = host
        self.port = port or 0
        self._fixed_port = port is not None
        self._require_ma = require_message_authenticator
        self._sign = sign_replies
        self._threads = threads
        self._debug = debug
        self._startup_timeout = startup_timeout
        self._accounting = accounting or acct_port is not None
        self.acct_port = acct_port or 0
        self._fixed_acct_port = acct_port is not None
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="mfaproxy-freeradius-"))
        (self._root / "users").write_text(users_file(self.users), encoding="utf-8")
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_udp_port(self.host)
            if self._accounting and not self._fixed_acct_port:
                self.acct_port = free_udp_port(self.host)
            if self._launch():
                return
            if attempt + 1 < attempts and "Address already in use" in self.log_text():
                continue
            break
        log = self.log_text()
        self.stop()
        raise RuntimeError(f"FreeRADIUS did not become ready on {self.address}:\n{log[-4000:]}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def detail_records(self) -> list[dict[str, str]]:
        """The accounting records the detail module wrote, oldest first."""
        path = self._root / "detail" if self._root else None
        if path is None or not path.exists():
            return []
        records: list[dict[str, str]] = []
        for block in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            pairs = [line.strip().partition(" = ") for line in block.splitlines()[1:]]
            record = {name: value.strip('"') for name, _, value in pairs if name}
            if record:
                records.append(record)
        return records

    def log_text(self) -> str:
        path = self._root / "radiusd.log" if self._root else None
        if path is None or not path.exists():
            return ""
        return path.read_text(encoding="utf-8", errors="replace")

    def _launch(self) -> bool:
        """Start the process and poll it with Status-Server until it answers or dies."""
        assert self._root is not None
        conf = radiusd_conf(
            self._root,
            self.host,
            self.port,
            self.secret,
            require_ma=self._require_ma,
            sign=self._sign,
            threads=self._threads,
            ldap=self._ldap,
            acct_port=self.acct_port if self._accounting else None,
        )
        (self._root / "radiusd.conf").write_text(conf, encoding="utf-8")
        argv = [FREERADIUS, "-f", "-d", str(self._root), "-D", str(DICTDIR), "-l", "stdout"]
        argv += ["-xx"] if self._debug else []
        with (self._root / "radiusd.log").open("wb") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                return False
            if status_server_answered(self.host, self.port, self.secret, wait=0.05):
                return True
        return False
