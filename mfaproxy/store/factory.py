"""Open the configured stores: the daemon and the CLI share these so they agree on paths."""

from __future__ import annotations

from pathlib import Path

from mfaproxy.config.schema import Config
from mfaproxy.store.crypto import load_or_create_key
from mfaproxy.store.records import UserRepository
from mfaproxy.store.state import MemoryStateStore, StateStore
from mfaproxy.store.throttle import MemoryThrottle, Throttle
from mfaproxy.store.users import UserStore


def user_store_path(config: Config) -> Path:
    return config.server.user_store.path or config.server.state_dir / "users.sqlite3"


def master_key(config: Config) -> bytes:
    """The key that seals per-user secrets; created (mode 0600) on first use. Every
    instance of a cluster must be given the same key file."""
    return load_or_create_key(config.key_file)


def open_user_store(config: Config, *, migrate_to: int | None = None) -> UserRepository:
    """The configured user store, migrated to the current schema (or to `migrate_to`,
    for a repair that must happen before a later migration)."""
    settings = config.server.user_store
    if settings.backend == "postgres":
        from mfaproxy.store.postgres_users import PostgresUserStore

        assert settings.dsn is not None  # the schema requires it for postgres
        return PostgresUserStore(
            settings.dsn.get_secret_value(), master_key(config), migrate_to=migrate_to
        )
    path = user_store_path(config)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return UserStore(path, master_key(config), migrate_to=migrate_to)


def accounting_spool_path(config: Config) -> Path:
    """Where `answer: at_once` keeps accounting records until an upstream has them."""
    return config.server.state_dir / "accounting-spool.sqlite3"


def state_store_path(config: Config) -> Path:
    settings = config.server.state_store
    path = settings.path if settings.backend == "sqlite" else None
    return path or config.server.state_dir / "shared-state.sqlite3"


def open_state_store(config: Config) -> StateStore:
    settings = config.server.state_store
    if settings.backend == "redis":
        from mfaproxy.store.redis_state import RedisStateStore

        return RedisStateStore(settings)
    if settings.backend == "sqlite":
        from mfaproxy.store.sqlite_state import SqliteStateStore

        return SqliteStateStore(state_store_path(config))
    return MemoryStateStore()


def open_throttle(config: Config, state: StateStore) -> Throttle:
    """The password-guessing counters, beside the (unsealed) state store `state` that
    `open_state_store` opened: in the same Redis for a cluster, in the same SQLite file
    for the workers of one host, in this process otherwise."""
    backend = config.server.state_store.backend
    if backend == "redis":
        from mfaproxy.store.redis_state import RedisStateStore
        from mfaproxy.store.redis_throttle import RedisThrottle

        assert isinstance(state, RedisStateStore)
        return RedisThrottle(state)
    if backend == "sqlite":
        from mfaproxy.store.sqlite_state import SqliteStateStore
        from mfaproxy.store.sqlite_throttle import SqliteThrottle

        assert isinstance(state, SqliteStateStore)
        return SqliteThrottle(state)
    return MemoryThrottle()
