"""Open the configured stores: the daemon and the CLI share these so they agree on paths."""

from __future__ import annotations

from pathlib import Path

from mfaproxy.config import Config
from mfaproxy.store.crypto import load_or_create_key
from mfaproxy.store.users import UserStore


def user_store_path(config: Config) -> Path:
    return config.server.user_store.path or config.server.state_dir / "users.sqlite3"


def master_key(config: Config) -> bytes:
    """The key that seals per-user secrets; created (mode 0600) on first use."""
    return load_or_create_key(config.key_file)


def open_user_store(config: Config) -> UserStore:
    path = user_store_path(config)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return UserStore(path, master_key(config))
