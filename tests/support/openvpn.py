"""A real OpenVPN server with radiusplugin (Debian `openvpn-auth-radius`) and a real
OpenVPN client, on loopback, for the end-to-end test of a NAS nobody on the project
wrote: radiusplugin sends the Access-Request, then Accounting Start, Interim-Update
every Acct-Interim-Interval seconds and Stop when the client leaves.

The server needs a tun device (root or CAP_NET_ADMIN, /dev/net/tun); it is created
without addresses or routes (`ifconfig-noexec`, `route-noexec`), so nothing on the host
changes. `unusable()` says why the test cannot run here, or None.

radiusplugin 2.1 keeps only the first four digits of a port from its configuration
(28212 becomes 2821), so its RADIUS ports must be below 10000: `free_short_udp_port`.
Progress is observed on the processes' output, never through sleeps.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from pathlib import Path

from tests.support.pki import write_pki
from tests.support.ports import free_short_port
from tests.support.process import ManagedServer, WatchedProcess

OPENVPN = "/usr/sbin/openvpn"
PLUGIN = Path("/usr/lib/openvpn/radiusplugin.so")
AUTH_PAM = Path("/usr/lib/openvpn/openvpn-plugin-auth-pam.so")
PAM_RADIUS = Path("/lib/x86_64-linux-gnu/security/pam_radius_auth.so")
PAM_DIR = Path("/etc/pam.d")


def unusable() -> str | None:
    if shutil.which("openvpn") is None or not PLUGIN.exists():
        return "openvpn and openvpn-auth-radius (radiusplugin) are not installed"
    if not os.path.exists("/dev/net/tun") or os.geteuid() != 0:
        return "an OpenVPN server needs /dev/net/tun and root (CAP_NET_ADMIN)"
    return None


def pam_unusable() -> str | None:
    """Why the auth-pam + pam_radius_auth set-up cannot run here, or None."""
    if unusable() is not None:
        return unusable()
    if not AUTH_PAM.exists() or not PAM_RADIUS.exists():
        return "openvpn's auth-pam plugin and libpam-radius-auth are not installed"
    return None


class PamRadiusService:
    """A PAM service (a file in /etc/pam.d, removed on exit) whose only auth module is
    pam_radius_auth asking `port` on 127.0.0.1, with `max_challenge=1` (README: OpenVPN)."""

    def __init__(self, workdir: Path, port: int, secret: str) -> None:
        self.name = f"mfaproxy-test-{secrets.token_hex(4)}"
        self.conf = workdir / "pam_radius_auth.conf"
        self.conf.write_text(f"127.0.0.1:{port} {secret} 10\n", encoding="utf-8")
        self.conf.chmod(0o600)
        self.path = PAM_DIR / self.name

    def __enter__(self) -> PamRadiusService:
        self.path.write_text(
            f"auth required {PAM_RADIUS} conf={self.conf} max_challenge=1\n"
            "account required pam_permit.so\n",
            encoding="utf-8",
        )
        return self

    def __exit__(self, *_: object) -> None:
        self.path.unlink(missing_ok=True)


def free_short_udp_port(host: str = "127.0.0.1") -> int:
    """A free UDP port below 10000 (radiusplugin reads at most four digits)."""
    return free_short_port(socket.SOCK_DGRAM, host)


class OpenVpnServer(ManagedServer):
    """`openvpn --mode server` on 127.0.0.1 with radiusplugin asking `auth_port` and
    `acct_port` (both below 10000) on 127.0.0.1 with `secret`."""

    def __init__(
        self,
        workdir: Path,
        auth_port: int,
        acct_port: int,
        secret: str,
        pam_service: str | None = None,
    ) -> None:
        """With `pam_service`, the server authenticates through the auth-pam plugin
        and that PAM service (pam_radius_auth) instead of radiusplugin."""
        self.pam_service = pam_service
        self.workdir = workdir
        self.port = free_short_udp_port()
        self.auth_port, self.acct_port, self.secret = auth_port, acct_port, secret
        self._process: WatchedProcess | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca, cert, key = write_pki(self.workdir)
        for sub in ("ccd", "tmp"):
            (self.workdir / sub).mkdir(exist_ok=True)
        conf = self.workdir / "server.conf"
        conf.write_text(self._server_conf(ca, cert, key), encoding="utf-8")
        (self.workdir / "radiusplugin.cnf").write_text(self._plugin_conf(conf), encoding="utf-8")
        self._process = WatchedProcess([OPENVPN, "--config", str(conf)], self.workdir)
        self._process.wait_for("Initialization Sequence Completed")

    def _server_conf(self, ca: Path, cert: Path, key: Path) -> str:
        w = self.workdir
        return f"""mode server
tls-server
proto udp4
local 127.0.0.1
port {self.port}
dev tun
disable-dco
topology subnet
ifconfig 10.201.0.1 255.255.255.0
ifconfig-pool 10.201.0.10 10.201.0.100 255.255.255.0
ifconfig-noexec
route-noexec
ca {ca}
cert {cert}
key {key}
dh none
verify-client-cert none
username-as-common-name
client-config-dir {w / "ccd"}
tmp-dir {w / "tmp"}
{self._plugin_line()}
status {w / "status.log"} 1
status-version 1
verb 3
"""

    def _plugin_line(self) -> str:
        if self.pam_service is None:
            return f"plugin {PLUGIN} {self.workdir / 'radiusplugin.cnf'}"
        # auth-pam answers each PAM question whose first word starts with a name with
        # its value: the user name, the password, and OTP (the static-challenge response
        # it takes out of a SCRV1 password).
        return f'plugin {AUTH_PAM} "{self.pam_service} login USERNAME password PASSWORD otp OTP"'

    def _plugin_conf(self, server_conf: Path) -> str:
        return f"""NAS-Identifier=openvpn-test
Service-Type=5
Framed-Protocol=1
NAS-Port-Type=5
NAS-IP-Address=127.0.0.1
OpenVPNConfig={server_conf}
subnet=255.255.255.0
overwriteccfiles=false
server
{{
	acctport={self.acct_port}
	authport={self.auth_port}
	name=127.0.0.1
	retry=2
	wait=3
	sharedsecret={self.secret}
}}
"""

    def client(self, user: str, password: str) -> OpenVpnClient:
        return OpenVpnClient(self, user, password)

    @property
    def output(self) -> str:
        return self._process.output if self._process else ""

    def wait_for(self, text: str, timeout: float = 30) -> None:
        assert self._process is not None
        self._process.wait_for(text, timeout)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None


class OpenVpnClient:
    """A client that logs in with a user name and password (auth-user-pass)."""

    def __init__(self, server: OpenVpnServer, user: str, password: str) -> None:
        self.server = server
        directory = server.workdir / f"client-{user}"
        directory.mkdir(exist_ok=True)
        creds = directory / "creds.txt"
        creds.write_text(f"{user}\n{password}\n", encoding="utf-8")
        creds.chmod(0o600)
        conf = directory / "client.conf"
        conf.write_text(
            f"""client
dev null
proto udp4
remote 127.0.0.1 {server.port}
nobind
ca {server.workdir / "ca.crt"}
auth-user-pass {creds}
auth-nocache
ifconfig-noexec
route-noexec
explicit-exit-notify 1
verb 3
""",
            encoding="utf-8",
        )
        self._process = WatchedProcess([OPENVPN, "--config", str(conf)], directory)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        self._process.wait_for(text, timeout)

    @property
    def output(self) -> str:
        return self._process.output

    def stop(self) -> None:
        """SIGTERM: the client tells the server it leaves (explicit-exit-notify)."""
        self._process.stop()
