"""The README's install section, run as written, under a fake root.

The block between `<!-- install:begin -->` and `<!-- install:end -->` is executed line
by line by bash, with three kinds of change, all mechanical:

- paths under /etc, /usr/lib and /var/lib go to a temporary root, and systemd-sysusers
  and systemd-tmpfiles get `--root=` it (they resolve users in that root, as they
  would in the real one);
- the group name `mfaproxy` becomes the fake root's gid (the host has no such group);
- what this machine cannot do without changing itself is skipped and listed: Debian
  packages, the venv and pip (the test's own environment is used), the symlink into
  /usr/local/bin, `mfaproxy doctor` (it would talk to the example's directory),
  systemctl. Files the operator brings (`/path/to/...`) are made here.

The operator's one edit (the configuration's example values) is the test's too: the
paths the configuration names are pointed into the fake root. Then the result must
hold: check-config passes without a warning, the enrolment ran before any start, and
every file in the state directory belongs to the service user (the CLI ran as root),
and `serve` starts on the result as that user.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.ops.test_systemd_unit import colon_file, local_copy, parse_unit, tool, verify
from tests.support.daemon import REPO
from tests.support.ports import free_port, free_udp_port
from tests.support.slapd import CertificateAuthority

README = REPO / "README.md"
SKIPPED = (
    "apt-get ",
    "python3 -m venv ",
    "/opt/mfaproxy/bin/pip ",
    "ln ",
    "mfaproxy doctor ",  # it talks to the directory and mail server of the example
    "systemctl ",
)
FAKE_PATHS = re.compile(r"(?<![\w/.])/(etc|usr/lib|var/lib)/")
ANSWERS = "service-account-password\nsmtp-password\n"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the install runs as root (chgrp, tmpfiles ownership)"
)


def install_block() -> list[str]:
    text = README.read_text()
    block = text.split("<!-- install:begin -->", 1)[1].split("<!-- install:end -->", 1)[0]
    lines = block.strip().removeprefix("```sh").removesuffix("```").strip().splitlines()
    return [line for line in lines if line.strip()]


def console_script() -> str:
    found = Path(sys.executable).parent / "mfaproxy"
    return str(found if found.exists() else shutil.which("mfaproxy"))


class Install:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.skipped: list[str] = []
        self.ca = root.parent / "your-ldap-ca.pem"
        CertificateAuthority.create().write(self.ca)

    def gid(self) -> str:
        return colon_file(self.root / "etc/group")["mfaproxy"][2]

    def translate(self, line: str) -> str | None:
        if line.lstrip().startswith(SKIPPED):
            self.skipped.append(line)
            return None
        if line.startswith("# Now edit /etc/mfaproxy/mfaproxy.yaml"):
            return self.edit_config()
        if line.startswith("#"):
            return None
        line = FAKE_PATHS.sub(lambda m: f"{self.root}/{m.group(1)}/", line)
        line = line.replace("/path/to/your-ldap-ca.pem", str(self.ca))
        for tool_name in ("systemd-sysusers", "systemd-tmpfiles"):
            line = line.replace(f"{tool_name} ", f"{tool(tool_name)} --root={self.root} ", 1)
        if line.startswith("mfaproxy "):
            line = console_script() + line.removeprefix("mfaproxy")
        # Looked up when the line runs: systemd-sysusers creates the group on the way.
        gid = f'"$(awk -F: \'$1 == "mfaproxy" {{print $3}}\' {self.root}/etc/group)"'
        line = line.replace("-g mfaproxy ", f"-g {gid} ")
        return line.replace("chgrp mfaproxy ", f"chgrp {gid} ")

    def edit_config(self) -> str:
        # The operator's edit: here, the absolute paths of the file into the fake root.
        config = self.root / "etc/mfaproxy/mfaproxy.yaml"
        moves = f"s#/etc/mfaproxy/#{self.root}/etc/mfaproxy/#g; s#/var/lib/#{self.root}/var/lib/#g"
        return f"sed -i '{moves}' {config}"

    def run(self) -> subprocess.CompletedProcess[str]:
        (self.root / "etc").mkdir(parents=True)
        for directory in ("etc/systemd/system", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d"):
            (self.root / directory).mkdir(parents=True, exist_ok=True)
        script = []
        for line in install_block():
            translated = self.translate(line)
            if translated is not None:
                script.append(translated)
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", "\n".join(script)],
            input=ANSWERS,
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
            timeout=300,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    install = Install(tmp_path_factory.mktemp("install") / "root")
    done = install.run()
    assert done.returncode == 0, done.stdout + done.stderr
    install.output = done.stdout + done.stderr  # type: ignore[attr-defined]
    return install


def test_only_what_needs_the_real_machine_is_skipped(installed: Install) -> None:
    assert [line.split(" ")[0] for line in installed.skipped] == [
        "apt-get",
        "python3",
        "/opt/mfaproxy/bin/pip",
        "ln",
        "mfaproxy",
        "systemctl",
        "systemctl",
    ]


def test_the_state_directory_exists_before_the_first_start(installed: Install) -> None:
    state = installed.root / "var/lib/mfaproxy"
    uid = colon_file(installed.root / "etc/passwd")["mfaproxy"][2]
    info = state.stat()
    assert (str(info.st_uid), stat.S_IMODE(info.st_mode)) == (uid, 0o700)


def test_files_the_root_cli_wrote_belong_to_the_service_user(installed: Install) -> None:
    state = installed.root / "var/lib/mfaproxy"
    uid = int(colon_file(installed.root / "etc/passwd")["mfaproxy"][2])
    files = sorted(p.name for p in state.iterdir())
    assert "master.key" in files and "users.sqlite3" in files
    for path in state.iterdir():
        assert path.stat().st_uid == uid, f"{path} is owned by {path.stat().st_uid}"
    assert stat.S_IMODE((state / "master.key").stat().st_mode) == 0o600


def test_config_and_secrets_are_root_owned_and_group_readable(installed: Install) -> None:
    gid = int(installed.gid())
    for path in (installed.root / "etc/mfaproxy").iterdir():
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (0, gid), path
        assert stat.S_IMODE(info.st_mode) == 0o640, path


def test_the_installed_config_passes_check_config_without_warnings(installed: Install) -> None:
    config = installed.root / "etc/mfaproxy/mfaproxy.yaml"
    done = subprocess.run(
        [console_script(), "check-config", "--strict", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 warning(s)" in done.stdout


def test_the_installed_unit_verifies(installed: Install, tmp_path: Path) -> None:
    unit = installed.root / "etc/systemd/system/mfaproxy.service"
    assert unit.read_text() == (REPO / "systemd/mfaproxy.service").read_text()
    result = verify(local_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_and_the_config_agree_on_the_state_directory() -> None:
    service = parse_unit((REPO / "systemd/mfaproxy.service").read_text())["Service"]
    assert service["StateDirectory"] == ["mfaproxy"]  # /var/lib/mfaproxy
    text = (REPO / "config/production.yaml").read_text()
    assert re.search(r"^  state_dir: /var/lib/mfaproxy$", text, re.MULTILINE)
    tmpfiles = (REPO / "systemd/mfaproxy.tmpfiles").read_text()
    assert "d /var/lib/mfaproxy 0700 mfaproxy mfaproxy -" in tmpfiles


def test_the_installed_service_starts_as_the_service_user(installed: Install) -> None:
    """What systemd would run, as it would run it: `serve` on the installed file as the
    mfaproxy user and group (setpriv: no capability left), against the state the root
    CLI prepared (a root-owned master.key fails here). Only the ports move (1812 and
    9812 may be taken on this machine); the example's directory is not reachable here,
    which serve tolerates (readiness says so)."""
    passwd = colon_file(installed.root / "etc/passwd")["mfaproxy"]
    uid, gid = passwd[2], passwd[3]
    # The fake root lies under pytest's private temporary directory: let the service
    # user traverse down to it (execute only), as it can traverse / on a real host.
    for parent in [installed.root, *installed.root.parents]:
        if parent == Path(tempfile.gettempdir()):
            break
        parent.chmod(parent.stat().st_mode | 0o111)
    config = installed.root / "etc/mfaproxy/mfaproxy.yaml"
    data = yaml.safe_load(config.read_text())
    port = free_udp_port()
    data["server"]["listen"] = [f"127.0.0.1:{port}"]
    data["server"]["metrics"] = {"listen": f"127.0.0.1:{free_port()}"}
    started = config.with_name("started.yaml")
    started.write_text(yaml.safe_dump(data))
    shutil.copymode(config, started)
    os.chown(started, 0, int(gid))
    command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all"]
    command += [console_script(), "serve", "--config", str(started)]
    service = subprocess.Popen(
        command, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    try:
        assert service.stdout is not None
        for line in service.stdout:
            lines.append(line)
            if '"event": "listening"' in line:
                break
        else:
            raise AssertionError("".join(lines))
    finally:
        service.send_signal(signal.SIGTERM)
        rest, _ = service.communicate(timeout=30)
    assert service.returncode == 0, "".join(lines) + rest
    assert f"127.0.0.1:{port}" in "".join(lines)
