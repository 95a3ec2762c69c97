"""The systemd unit, sysusers and tmpfiles snippets, checked by systemd's own tools.

systemd-analyze, systemd-sysusers and systemd-tmpfiles (Debian package `systemd`) all
work offline, without systemd running as PID 1. On CI a missing tool fails the test
instead of skipping it, so the checks cannot silently stop running.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD_DIR / "mfaproxy.service"
SYSUSERS = SYSTEMD_DIR / "mfaproxy.sysusers"
TMPFILES = SYSTEMD_DIR / "mfaproxy.tmpfiles"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: install the Debian package 'systemd'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    # No pager, no colour, and nothing from the caller's terminal settings in the output.
    env = {**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values in order (keys such as Environment= may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        assert not line.endswith("\\"), "continuation lines are not used in this unit"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def installed_console_script() -> Path:
    """The mfaproxy entry point of the environment running the tests."""
    beside_python = Path(sys.executable).parent / "mfaproxy"
    found = beside_python if beside_python.exists() else shutil.which("mfaproxy")
    assert found is not None, "the mfaproxy console script is not installed (pip install -e .)"
    return Path(found)


def local_copy(tmp_path: Path, extra: str = "") -> Path:
    """The unit with ExecStart= pointing at a binary that exists on this machine, since
    verify checks that it does; `extra` lines are appended to [Install] (the last section).
    """
    lines = []
    for line in UNIT.read_text().splitlines():
        if line.startswith(("ExecStart=", "ExecReload=/usr/local/bin/mfaproxy ")):
            key, _, rest = line.partition("=")
            _, _, args = rest.partition(" ")
            lines.append(f"{key}={installed_console_script()} {args}")
        else:
            lines.append(line)
    path = tmp_path / "mfaproxy.service"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    # --man=no: we ship no man page. --recursive-errors=no: judge this unit only, not
    # whatever other units the machine has (their warnings still print; we filter them).
    return run(tool("systemd-analyze"), "verify", "--man=no", "--recursive-errors=no", str(path))


def lines_about(result: subprocess.CompletedProcess[str], name: str) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if name in line]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = verify(local_copy(tmp_path))
    assert lines_about(result, "mfaproxy.service") == []
    assert result.returncode == 0, result.stdout + result.stderr


def test_verify_does_report_a_bad_line(tmp_path: Path) -> None:
    # The check above is only worth something if verify complains about our file.
    result = verify(local_copy(tmp_path, extra="ProtectSystm=strict\n"))
    assert any("ProtectSystm" in line for line in lines_about(result, "mfaproxy.service"))


def test_shipped_exec_start_is_the_documented_command() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    assert service["ExecStart"] == [
        "/usr/local/bin/mfaproxy serve --config /etc/mfaproxy/mfaproxy.yaml"
    ]
    # The file is validated before the daemon is signalled: a broken one fails the reload.
    assert service["ExecReload"] == [
        "/usr/local/bin/mfaproxy check-config --config /etc/mfaproxy/mfaproxy.yaml",
        "/bin/kill -HUP $MAINPID",
    ]


EXPECTED_SERVICE = {
    "Type": ["notify"],
    "NotifyAccess": ["main"],
    "WatchdogSec": ["30s"],
    "Restart": ["on-failure"],
    "User": ["mfaproxy"],
    "Group": ["mfaproxy"],
    "StateDirectory": ["mfaproxy"],
    "StateDirectoryMode": ["0700"],
    "ConfigurationDirectory": ["mfaproxy"],
    "UMask": ["0077"],
    "CapabilityBoundingSet": [""],
    "AmbientCapabilities": [""],
    "NoNewPrivileges": ["yes"],
    "ProtectSystem": ["strict"],
    "ProtectHome": ["yes"],
    "PrivateTmp": ["yes"],
    "PrivateDevices": ["yes"],
    "ProtectKernelTunables": ["yes"],
    "ProtectKernelModules": ["yes"],
    "ProtectKernelLogs": ["yes"],
    "ProtectControlGroups": ["yes"],
    "ProtectClock": ["yes"],
    "ProtectHostname": ["yes"],
    "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
    "RestrictNamespaces": ["yes"],
    "RestrictRealtime": ["yes"],
    "RestrictSUIDSGID": ["yes"],
    "LockPersonality": ["yes"],
    "MemoryDenyWriteExecute": ["yes"],
    "SystemCallFilter": ["@system-service", "~@privileged"],
    "SystemCallArchitectures": ["native"],
}


@pytest.mark.parametrize(("key", "values"), sorted(EXPECTED_SERVICE.items()))
def test_service_setting(key: str, values: list[str]) -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    assert service.get(key) == values


def test_stop_timeout_is_set() -> None:
    [timeout] = parse_unit(UNIT.read_text())["Service"]["TimeoutStopSec"]
    assert timeout.rstrip("s").isdigit()


def test_exposure_score_stays_low(tmp_path: Path) -> None:
    # systemd's own hardening score, 0 (locked down) to 100, printed as 0.0-10.0. The unit
    # scores 1.4 with systemd 252; dropping a few hardening lines pushes it over 2.0.
    result = run(
        tool("systemd-analyze"),
        "security",
        "--offline=yes",
        "--no-pager",
        "--threshold=20",
        str(local_copy(tmp_path)),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Overall exposure level for mfaproxy.service:" in result.stdout


def colon_file(path: Path) -> dict[str, list[str]]:
    """/etc/passwd or /etc/group as name -> fields."""
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()}


def test_sysusers_creates_a_system_user_without_a_shell(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = run(tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSUSERS))
    assert result.returncode == 0, result.stderr
    _, _, uid, gid, _, home, shell = colon_file(tmp_path / "etc/passwd")["mfaproxy"]
    assert int(uid) < 1000  # the system range (SYS_UID_MAX on Debian is 999)
    assert (home, shell) == ("/var/lib/mfaproxy", "/usr/sbin/nologin")
    assert colon_file(tmp_path / "etc/group")["mfaproxy"][2] == gid


@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfiles needs root to chown under --root")
def test_tmpfiles_makes_the_config_dir_group_readable_only(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    assert run(tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSUSERS)).returncode == 0
    result = run(tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create", str(TMPFILES))
    assert result.returncode == 0, result.stderr
    info = (tmp_path / "etc/mfaproxy").stat()
    gid = colon_file(tmp_path / "etc/group")["mfaproxy"][2]
    assert stat.S_IMODE(info.st_mode) == 0o750
    assert (info.st_uid, str(info.st_gid)) == (0, gid)


# Runs in a child process that first turns on the kernel's equivalent of
# MemoryDenyWriteExecute= (prctl PR_SET_MDWE, Linux >= 6.3; systemd uses it too when
# available), then does what the daemon's dependencies do. It prints "ok" when all of it
# worked and the restriction was demonstrably in force.
MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print("unsupported"); sys.exit(0)

    import asyncio, ssl, sqlite3
    import uvloop
    from argon2 import PasswordHasher
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    import pyrad.packet, ldap, pyotp, segno, aiosmtplib, maxminddb, structlog, yaml
    import mfaproxy.observability.metrics

    PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("pw")
    AESGCM(AESGCM.generate_key(bit_length=128)).encrypt(b"0" * 12, b"secret", b"id")
    ssl.create_default_context()
    sqlite3.connect(":memory:").execute("select 1")
    uvloop.run(asyncio.sleep(0))

    # Proof the restriction is on: cffi ABI-mode callbacks need W+X memory and fail.
    import cffi
    try:
        cffi.FFI().callback("int(void)", lambda: 1)
    except MemoryError:
        print("ok")
    else:
        print("MDWE not in force")
    """
)


def test_dependencies_run_under_memory_deny_write_execute() -> None:
    result = run(sys.executable, "-c", MDWE_PROBE)
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() == "unsupported":
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert result.stdout.strip() == "ok", result.stdout + result.stderr
