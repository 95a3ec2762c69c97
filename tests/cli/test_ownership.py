"""State files belong to the state directory's owner, whoever runs the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mfaproxy.cli.ownership import NotTheServiceUser, check_owner, give_back
from mfaproxy.config.schema import Config, parse_config
from tests.support.daemon import REPO

SERVICE_UID = 65534  # nobody: any user other than root stands in for `mfaproxy`
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def config_in(tmp: Path) -> Config:
    text = yaml.safe_dump(
        {
            "server": {"state_dir": str(tmp / "state")},
            "clients": [{"name": "vpn", "address": "127.0.0.1", "secret": "x" * 20}],
            "directory": {"backend": "local", "local": {"users_file": "users.yaml"}},
        }
    )
    (tmp / "mfaproxy.yaml").write_text(text)
    (tmp / "users.yaml").write_text("users: {}\n")
    return parse_config(text, tmp / "mfaproxy.yaml")


def service_state(tmp: Path) -> Path:
    state = tmp / "state"
    state.mkdir(mode=0o700)
    os.chown(state, SERVICE_UID, SERVICE_UID)
    return state


@as_root
def test_root_created_files_are_given_back_with_a_note(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    state = service_state(tmp_path)
    (state / "master.key").write_bytes(b"k" * 32)  # what an older root run left behind
    notes = give_back(config)
    assert (state / "master.key").stat().st_uid == SERVICE_UID
    assert len(notes) == 1 and "master.key belonged to root" in notes[0]
    assert give_back(config) == []  # nothing left to fix


@as_root
def test_links_the_service_user_planted_are_not_followed(tmp_path: Path) -> None:
    # The service user owns the directory: it could point names there at root's files.
    config = config_in(tmp_path)
    state = service_state(tmp_path)
    precious = tmp_path / "shadow"
    precious.write_text("root's")
    os.link(precious, state / "master.key")
    (state / "users.sqlite3").symlink_to(precious)
    assert give_back(config) == []
    assert precious.stat().st_uid == 0


def test_another_ordinary_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_in(tmp_path)
    (tmp_path / "state").mkdir()
    owner = (tmp_path / "state").stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 4242)
    monkeypatch.setattr(os, "access", lambda *_a, **_k: False)  # as mode 0700 makes it
    with pytest.raises(NotTheServiceUser, match=r"belongs to .*Run it as"):
        check_owner(config)
    # A user who may write there (a shared, group-writable volume) is let through.
    monkeypatch.setattr(os, "access", lambda *_a, **_k: True)
    check_owner(config)


def test_the_owner_and_root_may_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_in(tmp_path)
    check_owner(config)  # the directory does not exist yet: whoever runs creates it
    (tmp_path / "state").mkdir()
    owner = (tmp_path / "state").stat().st_uid
    for uid in (0, owner):
        monkeypatch.setattr(os, "geteuid", lambda uid=uid: uid)
        check_owner(config)


@as_root
def test_root_running_users_commands_leaves_nothing_root_owned(tmp_path: Path) -> None:
    config_in(tmp_path)
    state = service_state(tmp_path)
    (state / "master.key").write_bytes(os.urandom(32))
    (state / "master.key").chmod(0o600)
    argv = [sys.executable, "-m", "mfaproxy", "--config", str(tmp_path / "mfaproxy.yaml")]
    done = subprocess.run(
        [*argv, "users", "backup-codes", "alice"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "master.key belonged to root; given to" in done.stderr
    owners = {path.name: path.stat().st_uid for path in state.iterdir()}
    assert owners and set(owners.values()) == {SERVICE_UID}, owners
