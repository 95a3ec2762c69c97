"""What a reload reports (daemon/changes.py): changes by section and client name, no
secret value whatever the secret, each restart-only setting named when it differs from
what runs, and every server setting classified as reloadable or restart-only."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mfaproxy.config.schema import Config, ServerConfig
from mfaproxy.daemon.changes import RESTART_ONLY, describe, restart_required

BASE: dict[str, Any] = {
    "clients": [
        {"name": "vpn", "address": ["127.0.0.1"], "secret": "a-long-shared-secret"},
        {"name": "wifi", "address": ["10.0.0.0/8"], "secret": "another-long-secret"},
    ],
    "directory": {"backend": "local", "local": {"users_file": "/dev/null"}},
}


def config(change: Callable[[dict[str, Any]], None] | None = None) -> Config:
    data = copy.deepcopy(BASE)
    if change is not None:
        change(data)
    return Config.model_validate(data)


def test_clients_are_named_added_removed_and_changed() -> None:
    def change(data: dict[str, Any]) -> None:
        data["clients"] = [
            {"name": "wifi", "address": ["10.0.0.0/16"], "secret": "a-changed-secret"},
            {"name": "ap", "address": ["192.0.2.1"], "secret": "a-long-shared-secret"},
        ]

    found = describe(config(), config(change))
    assert found.clients.added == ["ap"] and found.clients.removed == ["vpn"]
    assert found.clients.changed == {"wifi": ["address", "secret"]}
    assert found.settings == [
        "clients.ap",
        "clients.vpn",
        "clients.wifi.address",
        "clients.wifi.secret",
    ]
    assert found.sections == {"clients": "changed"}
    assert found.summary() == (
        "clients added: ap; clients removed: vpn; client wifi changed (address, secret)"
    )


def test_a_reordered_client_list_is_no_change() -> None:
    found = describe(config(), config(lambda d: d["clients"].reverse()))
    assert found.settings == [] and found.summary() == "no setting changed"


def test_sections_added_removed_and_changed() -> None:
    def change(data: dict[str, Any]) -> None:
        data["smtp"] = {"host": "mail.example.org", "password": "smtp-password"}
        data["server"] = {"reject_delay": 2}

    old, new = config(), config(change)
    forward = describe(old, new)
    # A part that was off is named once, not with each of its settings.
    assert forward.settings == ["server.reject_delay", "smtp"]
    assert forward.sections == {"server": "added", "smtp": "added"}
    assert forward.summary() == "server added (reject_delay); smtp added"
    backward = describe(new, old)
    assert backward.sections == {"server": "removed", "smtp": "removed"}

    def port(data: dict[str, Any]) -> None:
        change(data)
        data["smtp"]["port"] = 2525

    edited = describe(new, config(port))
    assert edited.sections == {"smtp": "changed"} and edited.settings == ["smtp.port"]


def test_a_secret_read_from_a_file_that_changed_is_a_change(tmp_path: Path) -> None:
    secret = tmp_path / "vpn.secret"
    secret.write_text("the-first-secret\n")

    def from_file(data: dict[str, Any]) -> None:
        del data["clients"][0]["secret"]
        data["clients"][0]["secret_file"] = str(secret)

    before = config(from_file)
    secret.write_text("the-second-secret\n")
    assert describe(before, config(from_file)).clients.changed == {"vpn": ["secret"]}


# Letters, digits and '-': a leak would show in the log text as it is (no escaping).
SECRET_TEXT = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"),
    min_size=16,
    max_size=40,
)


@given(old=SECRET_TEXT, new=SECRET_TEXT)
def test_no_secret_value_is_ever_shown(old: str, new: str) -> None:
    def with_secrets(value: str) -> Callable[[dict[str, Any]], None]:
        def change(data: dict[str, Any]) -> None:
            data["clients"][0]["secret"] = value
            data["smtp"] = {"host": "mail.example.org", "username": "u", "password": value}
            data["server"] = {
                "state_store": {"backend": "redis", "url": "redis://r:6379/0", "password": value},
                "user_store": {"backend": "postgres", "dsn": f"postgresql://u:{value}@db/m"},
            }
            data["directory"] = {
                "backend": "ldap",
                "ldap": {
                    "servers": ["ldaps://ldap.example.org"],
                    "bind_dn": "cn=svc",
                    "bind_password": value,
                },
            }

        return change

    before, after = config(with_secrets(old)), config(with_secrets(new))
    told = str(describe(before, after).log_fields()) + str(restart_required(before, after))
    assert old not in told and new not in told
    if old != new:
        assert "clients.vpn.secret" in told and "server.state_store" in told


# One change per restart-only row: (row, change). Each must be named, and only it.
ROW_CHANGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "server.listen": lambda d: d["server"].update(listen=["0.0.0.0:1812"]),
    "server.metrics": lambda d: d["server"].update(metrics={"listen": "127.0.0.1:9900"}),
    "server.workers": lambda d: d["server"].update(workers=2, state_store={"backend": "sqlite"}),
    "server.state_dir": lambda d: d["server"].update(state_dir="/var/lib/other"),
    "server.secrets_key_file": lambda d: d["server"].update(secrets_key_file="/etc/k.key"),
    "server.state_store": lambda d: d["server"].update(state_store={"backend": "sqlite"}),
    "server.user_store": lambda d: d["server"].update(user_store={"threads": 8}),
    "server.intake_queue": lambda d: d["server"].update(intake_queue=10),
    "server.concurrency": lambda d: d["server"].update(concurrency=10),
    "server.duplicate_cache_seconds": lambda d: d["server"].update(duplicate_cache_seconds=200),
    "server.duplicate_lease_seconds": lambda d: d["server"].update(duplicate_lease_seconds=9),
    "multifactor.challenge.timeout_seconds": lambda d: d.update(
        multifactor={"challenge": {"timeout_seconds": 300}}
    ),
    "server.accounting": lambda d: d["server"].update(accounting={}),
}


@pytest.mark.parametrize("setting", sorted(ROW_CHANGES))
def test_each_restart_only_setting_is_named_when_it_differs(setting: str) -> None:
    def change(data: dict[str, Any]) -> None:
        data.setdefault("server", {})
        ROW_CHANGES[setting](data)

    extra = {"server.workers": ["server.state_store"]}  # two workers need a shared store
    extra["server.duplicate_cache_seconds"] = ["multifactor.challenge.timeout_seconds"]
    found = restart_required(config(), config(change))
    assert [r["setting"] for r in found] == [setting, *extra.get(setting, [])]
    assert all(r["detail"].startswith("restart needed: ") for r in found)
    assert restart_required(config(change), config(change)) == []


def test_accounting_settings_are_named_while_accounting_is_on() -> None:
    def on(**settings: Any) -> Callable[[dict[str, Any]], None]:
        return lambda d: d.update(server={"accounting": settings})

    found = restart_required(config(on()), config(on(listen=["127.0.0.1:1913"], concurrency=2)))
    assert [r["setting"] for r in found] == [
        "server.accounting.listen",
        "server.accounting.concurrency",
    ]
    assert found[0]["running"] == ["127.0.0.1:1813"]
    # Turning it off names the switch, not each of its settings.
    assert [r["setting"] for r in restart_required(config(on()), config())] == ["server.accounting"]


# What a reload applies to new requests (README "Operations", Reload).
RELOADABLE = {
    "log",
    "store_failmode",
    "shutdown_grace_seconds",
    "max_queue_wait",
    "max_queue_wait_second_round",
    "reject_delay",
    "reject_delay_jitter",
    "dictionaries",
}


def test_every_server_setting_is_reloadable_or_named_at_restart() -> None:
    restart = {r.setting.removeprefix("server.") for r in RESTART_ONLY}
    for name in ServerConfig.model_fields:
        assert (name in RELOADABLE) != (name in restart), name


def test_the_users_file_is_counted_not_named() -> None:
    old = {"alice": ("hash-a", ["staff"]), "bob": ("hash-b", []), "carol": ("hash-c", [])}
    new = {"alice": ("hash-a", ["staff", "admins"]), "bob": ("hash-b", []), "dave": ("h", [])}
    found = describe(config(), config(), (old, new))
    assert found.log_fields()["users_file"] == {
        "users": 3,
        "added": 1,
        "removed": 1,
        "changed": 1,
    }
    assert found.summary() == "users file: 1 added, 1 removed, 1 changed"
    assert "dave" not in str(found.log_fields()) and "hash-" not in str(found.log_fields())
    same = describe(config(), config(), (old, old))
    assert same.summary() == "no setting changed"
    both = describe(config(), config(lambda d: d.update(smtp={"host": "m"})), (old, new))
    assert both.summary() == "users file: 1 added, 1 removed, 1 changed; smtp added"
