"""Commands that write state run as the state directory's owner, or do not run.

The service runs as its own user (`mfaproxy`, README "Install as a service"); operators
run `mfaproxy users ...` as root or as themselves. Run as root, a command gives the
files it created to the directory's owner (store/ownership.py), and gives back state
files an earlier root run left root-owned (the service refuses a key it cannot read),
saying so. Run as another ordinary user who cannot write there (the shipped mode is
0700), it refuses and says whom to run as, rather than failing on "permission denied".

Only known state files are touched (the key, the SQLite stores and their -wal, -shm and
-journal files), and only regular files with one link that belong to root: the service
user owns the directory, so it could plant a hard link or a symlink there, and root
must not be made to chown what it points at.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mfaproxy.config.schema import Config
from mfaproxy.store.factory import accounting_spool_path, state_store_path, user_store_path

_SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


class NotTheServiceUser(Exception):
    """The state directory belongs to another user than the one running the command."""


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def state_files(config: Config) -> list[Path]:
    files = [config.key_file]
    databases = [state_store_path(config)]
    if config.server.accounting is not None:
        databases.append(accounting_spool_path(config))
    if config.server.user_store.backend == "sqlite":
        databases.append(user_store_path(config))
    for database in databases:
        files += [database.with_name(database.name + suffix) for suffix in _SQLITE_COMPANIONS]
    return files


def give_back(config: Config) -> list[str]:
    """Chown root-owned state files to the state directory's owner; one note each."""
    directory = config.server.state_dir
    try:
        owner = directory.stat()
    except FileNotFoundError:
        return []
    if os.geteuid() != 0 or owner.st_uid == 0:
        return []
    notes = []
    for path in state_files(config):
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != 0:
            continue
        os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)
        notes.append(
            f"{path} belonged to root; given to {_name(owner.st_uid)}, who owns {directory}"
            " (the service could not read it otherwise)"
        )
    return notes


def check_owner(config: Config) -> None:
    """Refuse to write state as an ordinary user who neither owns the state directory
    nor may write to it, naming the user who can."""
    directory = config.server.state_dir
    try:
        owner = directory.stat().st_uid
    except FileNotFoundError:
        return  # created now, by whoever runs this (the demo's ./state)
    me = os.geteuid()
    if me in (0, owner) or os.access(directory, os.W_OK | os.X_OK):
        # Root gives its files back; a user who may write there shares the directory
        # on purpose (a container's group-writable volume, where the CLI runs as the
        # service's own uid).
        return
    service = _name(owner)
    raise NotTheServiceUser(
        f"{directory} belongs to {service}, not to {_name(me)}: files this command writes"
        f" there would not be readable by the service. Run it as {service}"
        f" (sudo -u {service} mfaproxy ...) or as root"
    )


@contextmanager
def as_state_owner(config: Config, note: Callable[[str], None]) -> Iterator[None]:
    """Around a command that writes state: refuse, or give files back before and after."""
    check_owner(config)
    for message in give_back(config):
        note(message)
    try:
        yield
    finally:
        for message in give_back(config):
            note(message)
