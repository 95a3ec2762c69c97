"""`server.state_store` and `server.user_store`: where challenges and enrolments live."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from mfaproxy.config.base import ConfigPath, Strict, take_secrets

DEFAULT_SENTINEL_PORT = 26379


class RedisSettings(Strict):
    """`server.state_store` when `backend: redis`. Give `url`, or `sentinels` and
    `service_name`. Secrets: `password`, `password_file` or `password_env`."""

    backend: Literal["redis"] = "redis"
    # redis://[user:password@]host:port/db, rediss://... (TLS), unix:///path?db=0
    url: str | None = None
    # Sentinel form: "host:port" (port 26379 when omitted) and the monitored master name.
    sentinels: list[str] = Field(default_factory=list)
    service_name: str | None = None
    db: int = Field(default=0, ge=0)  # Sentinel form only; a URL carries its own db
    tls: bool = False  # Sentinel form only (sentinels and master); a URL says rediss://
    username: str | None = None
    password: SecretStr | None = None  # overrides a password in the URL
    tls_ca_file: ConfigPath | None = None  # CA bundle to verify the server (system CAs if unset)
    key_prefix: str = Field(default="mfaproxy", min_length=1)
    socket_timeout: float = Field(default=1.0, gt=0, le=30)

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any, info: ValidationInfo) -> Any:
        return take_secrets(data, ("password",), info)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        return value

    @field_validator("sentinels")
    @classmethod
    def _check_sentinels(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_sentinel(item)
        return value

    @model_validator(mode="after")
    def _one_form(self) -> RedisSettings:
        if (self.url is None) == (not self.sentinels):
            raise ValueError("give either url or sentinels (with service_name)")
        if self.sentinels and not self.service_name:
            raise ValueError("sentinels need service_name (the monitored master's name)")
        if self.url is not None and (self.service_name or self.tls or self.db):
            raise ValueError("service_name, tls and db belong to the sentinels form")
        if self.tls_ca_file is not None and not (self.tls or self.url_uses_tls()):
            raise ValueError("tls_ca_file needs a rediss:// url or tls: true")
        return self

    def url_uses_tls(self) -> bool:
        return self.url is not None and urlsplit(self.url).scheme == "rediss"

    def server_label(self) -> str:
        """Where the store lives, for the `server` metric label (never a password)."""
        if self.url is None:
            return f"sentinel/{self.service_name}"
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname}:{parts.port or 6379}"


def parse_sentinel(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `host` (port 26379)."""
    host, port = value.strip(), ""
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"{value!r} is not host:port")
    return host, int(port) if port else DEFAULT_SENTINEL_PORT


class MemoryStateStoreConfig(Strict):
    """Challenges and counters in this process: one instance (the default)."""

    backend: Literal["memory"] = "memory"


class SqliteStateStoreConfig(Strict):
    """Challenges and counters in one SQLite file shared by the `server.workers`
    processes of one host (store/sqlite_state.py); not for several hosts."""

    backend: Literal["sqlite"] = "sqlite"
    # Default: state_dir/shared-state.sqlite3. A tmpfs (/run) path is fine: it is
    # never fsynced, and nothing in it needs to outlive a reboot.
    path: ConfigPath | None = None


StateStoreConfig = Annotated[
    MemoryStateStoreConfig | SqliteStateStoreConfig | RedisSettings,
    Field(discriminator="backend"),
]


class UserStoreConfig(Strict):
    # sqlite: a file under state_dir (one host); postgres: shared by a cluster.
    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: ConfigPath | None = None
    dsn: SecretStr | None = None  # postgresql://user@host/db (password via dsn_file/env)
    # The bounded pool the daemon calls the store through (admission/pool.py): threads,
    # and calls that may wait for one before new first rounds are shed.
    threads: int = Field(default=4, ge=1, le=64)
    queue: int = Field(default=1024, ge=1, le=100_000)

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any, info: ValidationInfo) -> Any:
        return take_secrets(data, ("dsn",), info)

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> UserStoreConfig:
        if self.backend == "postgres" and self.dsn is None:
            raise ValueError("backend postgres needs dsn (or dsn_file / dsn_env)")
        return self
