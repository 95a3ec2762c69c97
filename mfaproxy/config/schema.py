"""The configuration schema: one YAML file, validated strictly.

Unknown keys are errors. Every problem is reported with its dotted path (and the YAML
line where it can be found) so an operator can fix a file in one pass. Relative paths
are resolved against the directory of the configuration file. Secrets may be given
inline, from a file (`<name>_file`) or from an environment variable (`<name>_env`) so
the YAML itself can stay world-readable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mfaproxy.config.accounting import AccountingConfig
from mfaproxy.config.base import ConfigPath, Strict, parse_host_port, take_secrets
from mfaproxy.config.directory import DirectoryConfig
from mfaproxy.config.multifactor import MultifactorConfig, SmtpConfig
from mfaproxy.config.policies import AccessPoliciesConfig
from mfaproxy.config.stores import MemoryStateStoreConfig, StateStoreConfig, UserStoreConfig
from mfaproxy.errors import ConfigError
from mfaproxy.radius.text import fits_reply_message

DEFAULT_CONFIG_PATH = Path("/etc/mfaproxy/mfaproxy.yaml")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# How the second factor reaches this NAS: Access-Challenge, or appended to the password.
SecondFactorMode = Literal["challenge", "append"]


# --------------------------------------------------------------------------- server


class SyslogConfig(Strict):
    """Audit events (one per decision) also go to syslog, as JSON, for a SIEM."""

    # A local socket path (/dev/log) or host:port for UDP syslog.
    address: str = "/dev/log"
    facility: Literal[
        "auth",
        "authpriv",
        "daemon",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ] = "authpriv"

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        if not value.startswith("/"):
            parse_host_port(value, 514)
        return value


class LogConfig(Strict):
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"
    syslog: SyslogConfig | None = None


class MetricsConfig(Strict):
    listen: str = "127.0.0.1:9812"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_host_port(value, 9812)
        return value


class ServerConfig(Strict):
    listen: list[str] = Field(default_factory=lambda: ["127.0.0.1:1812"], min_length=1)
    log: LogConfig = LogConfig()
    metrics: MetricsConfig | None = None
    # Relative to the configuration file, like every path in it (the default too).
    state_dir: ConfigPath = Field(default=Path("./state"), validate_default=True)
    secrets_key_file: ConfigPath | None = None
    state_store: StateStoreConfig = MemoryStateStoreConfig()
    user_store: UserStoreConfig = UserStoreConfig()
    # When the state or user store cannot be reached: secure rejects; safe accepts on
    # the primary check alone (logged and metered), like Duo's failmode.
    store_failmode: Literal["secure", "safe"] = "secure"
    # Processes serving the same UDP ports (SO_REUSEPORT); more than one needs a shared
    # state store, since a NAS may send the answer to a challenge to any of them.
    workers: int = Field(default=1, ge=1, le=64)
    # RFC 5080 section 2.2.2: keep replies long enough to answer every retransmission a
    # NAS can send (its timeout x retries); 30 s is what FreeRADIUS and Duo use.
    duplicate_cache_seconds: float = Field(default=30.0, gt=0, le=600)
    # Requests waiting for a worker; beyond this a datagram is dropped and counted.
    intake_queue: int = Field(default=1024, ge=1, le=1_000_000)
    # Requests processed concurrently (each may wait on a directory or a push).
    concurrency: int = Field(default=256, ge=1, le=100_000)
    # On SIGTERM, how long requests in flight may take to finish before we exit.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=600)
    # Extra FreeRADIUS-format dictionary files loaded after the shipped ones.
    dictionaries: list[ConfigPath] = Field(default_factory=list)
    # RADIUS accounting listeners (RFC 2866) and where records are forwarded; off unless set.
    accounting: AccountingConfig | None = None

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_host_port(item, 1812)
        return value

    @model_validator(mode="after")
    def _workers_share_state(self) -> ServerConfig:
        if self.workers > 1 and self.state_store.backend == "memory":
            raise ValueError("workers > 1 needs state_store backend redis (challenges are shared)")
        return self

    @model_validator(mode="after")
    def _ports_distinct(self) -> ServerConfig:
        if self.accounting is not None:
            shared = set(self.listen_addresses()) & set(self.accounting.listen_addresses())
            if shared:
                host, port = sorted(shared)[0]
                raise ValueError(
                    f"accounting.listen: {host} port {port} is also an authentication"
                    " listener; accounting needs its own port (1813 by convention)"
                )
        return self

    def listen_addresses(self) -> list[tuple[str, int]]:
        return [parse_host_port(item, 1812) for item in self.listen]


# --------------------------------------------------------------------------- clients


class ClientConfig(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    address: list[IPNetwork] = Field(min_length=1)
    secret: SecretStr
    require_message_authenticator: bool = True
    # FreeRADIUS's BlastRADIUS fallback for a NAS that cannot sign: an Access-Request
    # without Message-Authenticator may not carry Proxy-State. Unset: on exactly when
    # Message-Authenticator is not required (with it required the check is moot).
    limit_proxy_state: bool | None = None
    second_factor: SecondFactorMode = "challenge"
    append_delimiter: str = Field(default=",", min_length=1, max_length=4)

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any, info: ValidationInfo) -> Any:
        return take_secrets(data, ("secret",), info)

    @field_validator("address", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list):
            return [ipaddress.ip_network(str(v), strict=False) for v in value]
        return value

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("the shared secret must not be empty (RFC 2865 section 3)")
        return value

    @property
    def limits_proxy_state(self) -> bool:
        """Whether unsigned Access-Requests carrying Proxy-State are dropped."""
        if self.limit_proxy_state is None:
            return not self.require_message_authenticator
        return self.limit_proxy_state


# --------------------------------------------------------------------------- replies

AttributeValue = str | int | list[str | int]


class GroupReplyConfig(Strict):
    group: str = Field(min_length=1)
    attributes: dict[str, AttributeValue] = Field(min_length=1)


class RepliesConfig(Strict):
    accept_message: str | None = None
    reject_message: str = "Authentication failed"
    # Attributes added to every Access-Accept.
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)
    # Attributes added when the user is in a group, in list order; a VPN assigns roles
    # from Class or Filter-Id, or from a vendor attribute.
    groups: list[GroupReplyConfig] = Field(default_factory=list)

    @field_validator("accept_message", "reject_message")
    @classmethod
    def _fits(cls, value: str | None) -> str | None:
        if value is not None and not fits_reply_message(value):
            raise ValueError(
                "must be one line of printable ASCII, at most 253 characters"
                " (one Reply-Message, RFC 2865 section 5.18)"
            )
        return value


# --------------------------------------------------------------------------- root


class Config(Strict):
    server: ServerConfig = ServerConfig()
    clients: list[ClientConfig] = Field(min_length=1)
    directory: DirectoryConfig
    replies: RepliesConfig = RepliesConfig()
    access_policies: AccessPoliciesConfig = AccessPoliciesConfig()
    multifactor: MultifactorConfig = MultifactorConfig()
    smtp: SmtpConfig | None = None
    # Where the file was read from; relative paths were resolved against its folder.
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _unique_clients(self) -> Config:
        names = [c.name for c in self.clients]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"clients: duplicate names {', '.join(dupes)}")
        unknown = sorted(set(self.access_policies.referenced_clients()) - set(names))
        if unknown:
            names_text = ", ".join(unknown)
            raise ValueError(f"access_policies: clients rules name unknown clients {names_text}")
        return self

    @property
    def key_file(self) -> Path:
        return self.server.secrets_key_file or self.server.state_dir / "master.key"


# --------------------------------------------------------------------------- loading


def yaml_line_map(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each dotted location in the YAML document to its 1-based line number."""
    lines: dict[tuple[str | int, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> Iterator[None]:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value
                lines[(*path, name)] = key.start_mark.line + 1
                yield from walk(value, (*path, name))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                yield from walk(item, (*path, index))
        yield None

    if root is not None:
        for _ in walk(root, ()):
            pass
    return lines


def validation_problems(exc: ValidationError, lines: dict[tuple[str | int, ...], int]) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        dotted = ".".join(str(part) for part in loc) or "(top level)"
        line = None
        for cut in range(len(loc), -1, -1):
            line = lines.get(loc[:cut])
            if line is not None:
                break
        where = f" (line {line})" if line else ""
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{dotted}{where}: {message}")
    return problems


def parse_config(text: str, path: Path | None = None) -> Config:
    """Validate configuration text; raise ConfigError listing every problem."""
    where = str(path) if path else "<config>"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError([f"{where}{line}: not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise ConfigError([f"{where}: the top level must be a mapping"])
    base_dir = path.resolve().parent if path else Path.cwd()
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, yaml_line_map(text))) from exc
    return config.model_copy(update={"source": path})


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    return parse_config(text, path)
