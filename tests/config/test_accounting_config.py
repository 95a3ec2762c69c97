"""`server.accounting` and the per-client `limit_proxy_state` setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mfaproxy.config.schema import parse_config
from mfaproxy.errors import ConfigError
from tests.support.daemon import REPO

CLIENTS = """
clients:
  - name: vpn
    address: 127.0.0.1
    secret: s3cret
    {extra}
directory:
  backend: local
  local: {{users_file: users.yaml}}
"""


def config_text(server: str = "", client: tuple[str, ...] = ()) -> str:
    return CLIENTS.format(extra="\n    ".join(client)) + server


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.problems


@pytest.mark.parametrize(
    ("client", "limited"),
    [
        ((), False),  # Message-Authenticator required: the check is moot
        (("require_message_authenticator: false",), True),  # the BlastRADIUS fallback
        (("require_message_authenticator: false", "limit_proxy_state: false"), False),
        (("limit_proxy_state: true",), True),
    ],
)
def test_limit_proxy_state_defaults_on_exactly_when_signing_is_not_required(
    client: tuple[str, ...], limited: bool
) -> None:
    assert parse_config(config_text(client=client)).clients[0].limits_proxy_state is limited


def test_accounting_is_off_unless_configured() -> None:
    assert parse_config(config_text()).server.accounting is None


def test_accounting_listeners_default_to_port_1813_and_take_ipv6() -> None:
    server = "server:\n  accounting: {listen: ['127.0.0.1', '[::1]', '0.0.0.0:1646']}\n"
    accounting = parse_config(config_text(server)).server.accounting
    assert accounting is not None
    assert accounting.listen_addresses() == [("127.0.0.1", 1813), ("::1", 1813), ("0.0.0.0", 1646)]
    assert accounting.upstream is None


def test_upstream_servers_default_to_1813_and_answer_after_upstream() -> None:
    server = """
server:
  accounting:
    upstream:
      servers: [{host: 10.0.0.5, secret: up}, {host: "2001:db8::5", port: 1646, secret: up}]
"""
    accounting = parse_config(config_text(server)).server.accounting
    assert accounting is not None and accounting.upstream is not None
    assert [s.port for s in accounting.upstream.servers] == [1813, 1646]
    assert accounting.upstream.answer == "after_upstream"


def test_bad_accounting_settings_are_refused_with_dotted_paths() -> None:
    server = """
server:
  accounting:
    listen: ["radius.example.com:1813"]
    upstream: {servers: [], answer: later, timeout: 0}
    extra: 1
"""
    found = "\n".join(problems(config_text(server)))
    assert "server.accounting.listen" in found
    assert "server.accounting.upstream.servers" in found
    assert "server.accounting.upstream.answer" in found
    assert "server.accounting.upstream.timeout" in found
    assert "server.accounting.extra" in found


def test_accounting_may_not_share_a_port_with_authentication() -> None:
    server = "server:\n  listen: ['127.0.0.1:1812']\n  accounting: {listen: ['127.0.0.1:1812']}\n"
    found = "\n".join(problems(config_text(server)))
    assert "accounting.listen" in found and "own port" in found


@pytest.mark.parametrize("example", ["mfaproxy.yaml", "production.yaml"])
def test_the_commented_accounting_examples_are_valid(
    example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block in each shipped example, uncommented, is a valid `server.accounting`
    (its secret file moved under a temporary directory)."""
    monkeypatch.setenv("ACCT_SECRET", "from-the-environment")
    (tmp_path / "accounting.secret").write_text("a-long-accounting-secret\n", encoding="utf-8")
    lines = (REPO / "config" / example).read_text(encoding="utf-8").splitlines()
    start = lines.index("  # accounting:")
    block = ["  accounting:"]
    for line in lines[start + 1 :]:
        if not line.startswith("  #   "):
            break
        block.append("  " + line[len("  # ") :].replace("/etc/mfaproxy/", f"{tmp_path}/"))
    config = parse_config(config_text("server:\n" + "\n".join(block) + "\n"))
    assert config.server.accounting is not None
    assert config.server.accounting.listen_addresses()[0][1] == 1813
    upstream = config.server.accounting.upstream
    assert upstream is not None and upstream.answer == "after_upstream"
    assert upstream.servers[0].port == 1813


def test_check_config_summarises_accounting_and_the_proxy_state_limit(tmp_path: Path) -> None:
    (tmp_path / "users.yaml").write_text("users: {}\n", encoding="utf-8")
    server = """
server:
  accounting:
    listen: ["127.0.0.1:1813"]
    upstream: {servers: [{host: 10.0.0.5, secret: a-long-upstream-secret}], answer: at_once}
"""
    text = config_text(server, client=("require_message_authenticator: false",))
    path = tmp_path / "mfaproxy.yaml"
    path.write_text(text.replace("s3cret", "a-long-client-secret-x"), encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "mfaproxy", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    ).stdout
    assert "accounting: 127.0.0.1:1813; forwarded to 10.0.0.5:1813 (answer at_once)" in out
    assert "Message-Authenticator NOT required; unsigned Proxy-State dropped" in out
