"""A real ocserv (Debian 1.1.6, RADIUS through radcli 1.2.11) on loopback and a real
openconnect (9.01) client, for the end-to-end test of the NAS whose radcli keeps
attributes as C strings (README: Pointing a NAS at mfaproxy, ocserv).

ocserv runs in the foreground (`-f`) with a throwaway certificate, TCP only on a free
port, and `auth = "radius[config=...]"` pointing at a radiusclient.conf of its own (the
daemon's port, the shared secret in a servers file, the recommended timeouts). The
client runs `openconnect --authenticate`: it logs in, prints the cookie ocserv issued
and exits, so no tunnel (and no tun device) is ever opened. It answers the password
form and every form after it (ocserv shows an Access-Challenge's Reply-Message as a new
password prompt) from stdin, one line per form.

What this container needed: the workers run as `nobody` (`run-as-user`) and reach
sec-mod through the socket file, so that lives in a directory of its own that `nobody`
can traverse (pytest's tmp_path is 0700); no `udp-port` (DTLS carries only the tunnel);
no occtl socket; bans, the per-IP rate limit and the client limits are off, since every
login comes from 127.0.0.1. Progress is observed on ocserv's output, never through sleeps.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.pki import pin_sha256, write_pki
from tests.support.ports import free_port
from tests.support.process import ManagedServer, WatchedProcess

OCSERV = Path("/usr/sbin/ocserv")
OPENCONNECT = Path("/usr/sbin/openconnect")
RADCLI_DICTIONARY = Path("/etc/radcli/dictionary")
RUN_AS = "nobody"
# What the README recommends for codes typed at a challenge: 5-10 s, 2-3 tries.
RADIUS_TIMEOUT = 5
RADIUS_RETRIES = 2


def unusable() -> str | None:
    """Why ocserv and openconnect cannot run here, or None."""
    if not OCSERV.exists() or not OPENCONNECT.exists():
        return "ocserv and openconnect are not installed (make deb-packages)"
    if not RADCLI_DICTIONARY.exists():
        return f"radcli's dictionary {RADCLI_DICTIONARY} is missing (libradcli4)"
    if os.geteuid() != 0:
        return "ocserv needs root to run its workers as another user (run-as-user)"
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        return f"ocserv's workers run as {RUN_AS!r}, and there is no such user"
    return None


@dataclass(frozen=True)
class Login:
    """How one `openconnect --authenticate` ended."""

    returncode: int
    stdout: str  # COOKIE=..., HOST=..., FINGERPRINT=... on success
    stderr: str  # progress, and every prompt ocserv showed

    @property
    def authenticated(self) -> bool:
        return self.returncode == 0 and "COOKIE=" in self.stdout


class OcservServer(ManagedServer):
    """`ocserv -f` on 127.0.0.1, authenticating through RADIUS at 127.0.0.1:`radius_port`
    with `secret` (radcli cannot sign: its mfaproxy client needs
    `require_message_authenticator: false`)."""

    def __init__(self, workdir: Path, radius_port: int, secret: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.radius_port, self.secret = radius_port, secret
        self._process: WatchedProcess | None = None
        self._sockets: Path | None = None
        self.pin = ""

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        _, cert, key = write_pki(self.workdir)
        self.pin = pin_sha256(cert)
        servers = self.workdir / "servers"
        servers.write_text(f"127.0.0.1 {self.secret}\n", encoding="utf-8")
        servers.chmod(0o600)
        radcli = self.workdir / "radiusclient.conf"
        radcli.write_text(self.radiusclient_conf(servers), encoding="utf-8")
        self._sockets = Path(tempfile.mkdtemp(prefix="mfaproxy-ocserv-"))
        self._sockets.chmod(0o711)  # the workers (nobody) connect to sec-mod's socket
        conf = self.workdir / "ocserv.conf"
        conf.write_text(self._ocserv_conf(radcli, cert, key), encoding="utf-8")
        self._process = WatchedProcess(
            [str(OCSERV), "-f", "-d", "2", "-c", str(conf)], self.workdir
        )
        self._process.wait_for("initialized ocserv")

    def radiusclient_conf(self, servers: Path) -> str:
        """The radcli configuration (the keys the README gives for ocserv)."""
        return f"""nas-identifier ocserv-test
authserver 127.0.0.1:{self.radius_port}
servers {servers}
dictionary {RADCLI_DICTIONARY}
radius_timeout {RADIUS_TIMEOUT}
radius_retries {RADIUS_RETRIES}
bindaddr *
"""

    def _ocserv_conf(self, radcli: Path, cert: Path, key: Path) -> str:
        assert self._sockets is not None
        return f"""auth = "radius[config={radcli}]"
listen-host = 127.0.0.1
tcp-port = {self.port}
server-cert = {cert}
server-key = {key}
socket-file = {self._sockets / "ocserv.sock"}
pid-file = {self.workdir / "ocserv.pid"}
run-as-user = {RUN_AS}
run-as-group = {grp.getgrgid(pwd.getpwnam(RUN_AS).pw_gid).gr_name}
use-occtl = false
max-clients = 0
max-same-clients = 0
rate-limit-ms = 0
max-ban-score = 0
auth-timeout = 60
device = vpns
ipv4-network = 192.168.243.0/24
"""

    def login(self, user: str, *lines: str, timeout: float = 60) -> Login:
        """`openconnect --authenticate` as `user`, typing `lines` one per form: the
        password, then the answer to each challenge. It stops at the first form it has
        no line for (stdin at its end), or when ocserv refuses."""
        done = subprocess.run(
            [
                str(OPENCONNECT),
                "--authenticate",
                "--passwd-on-stdin",
                f"--user={user}",
                f"--servercert={self.pin}",
                f"https://127.0.0.1:{self.port}/",
            ],
            input="".join(f"{line}\n" for line in lines),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            cwd=self.workdir,
            check=False,
        )
        return Login(done.returncode, done.stdout, done.stderr)

    @property
    def output(self) -> str:
        return self._process.output if self._process else ""

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)
            self._sockets = None
