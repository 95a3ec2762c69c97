"""The configuration schema: one YAML file, validated strictly.

Unknown keys are errors. Every problem is reported with its dotted path (and the YAML
line where it can be found) so an operator can fix a file in one pass. Relative paths
are resolved against the directory of the configuration file. Secrets may be given
inline, from a file (`<name>_file`) or from an environment variable (`<name>_env`) so
the YAML itself can stay world-readable.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    SecretStr,
    TypeAdapter,
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
from mfaproxy.config.problems import (
    LineMap,
    not_utf8,
    render_all,
    schema_problems,
    yaml_line_map,
)
from mfaproxy.config.prompts import (
    ClientPromptsConfig,
    MaxPrompt,
    PromptProfileConfig,
)
from mfaproxy.config.stores import MemoryStateStoreConfig, StateStoreConfig, UserStoreConfig
from mfaproxy.config.throttle import PasswordThrottleConfig
from mfaproxy.errors import ConfigError
from mfaproxy.radius.text import fits_reply_message

DEFAULT_CONFIG_PATH = Path("/etc/mfaproxy/mfaproxy.yaml")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# How the second factor reaches this NAS: Access-Challenge, or appended to the password.
# challenge: Access-Challenge rounds; append: `password,code` (or a challenge when the
# method needs one); auto: the NAS cannot show a challenge at all: the method's
# out-of-band check (a Duo push) starts on the first request, or the code is appended.
SecondFactorMode = Literal["challenge", "append", "auto"]


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
    # state store (sqlite on one host, redis), since a NAS may send the answer to a
    # challenge to any of them.
    workers: int = Field(default=1, ge=1, le=64)
    # RFC 5080 section 2.2.2: keep replies long enough to answer every retransmission a
    # NAS can send (its timeout x retries); 30 s is what FreeRADIUS and Duo use.
    duplicate_cache_seconds: float = Field(default=30.0, gt=0, le=600)
    # With a shared state store: seconds after an instance's last sign of life that a
    # request it held (a pending push) is taken over by the instance the NAS's
    # retransmission reaches (store/duplicates.py). Below the NAS's retransmit interval
    # x retries, or the login is lost with the instance.
    duplicate_lease_seconds: float = Field(default=6.0, ge=1, le=60)
    # Requests waiting for a worker; beyond this a datagram is dropped and counted.
    intake_queue: int = Field(default=1024, ge=1, le=1_000_000)
    # Requests processed concurrently (each may wait on a directory or a push).
    concurrency: int = Field(default=256, ge=1, le=100_000)
    # On SIGTERM, how long requests in flight may take to finish before we exit.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=600)
    # Admission control (README "Operations"): a first-round request still waiting for
    # a worker or a pool this long after it arrived is shed unprocessed (its NAS has
    # retransmitted or given up by then); answers to a challenge may wait longer.
    max_queue_wait: float = Field(default=2.0, gt=0, le=60)
    max_queue_wait_second_round: float = Field(default=5.0, gt=0, le=120)
    # Access-Reject is sent this long after it is decided (FreeRADIUS reject_delay),
    # plus up to reject_delay_jitter at random; 0 sends at once. A timer holds it, not
    # a worker; retransmissions meanwhile are ignored.
    reject_delay: float = Field(default=1.0, ge=0, le=10)
    reject_delay_jitter: float = Field(default=0.5, ge=0, le=10)
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
            raise ValueError(
                "workers > 1 needs a shared state_store: backend sqlite (one host) or "
                "redis (challenges are shared)"
            )
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
    # How an appended response reaches us: plain (`password,code`, or password and code
    # run together when the code's length is known) or scrv1 (OpenVPN's static
    # challenge, `SCRV1:<base64 password>:<base64 response>`, as radiusplugin sends it;
    # a password not in that form is read as plain). Only for append and auto.
    append_format: Literal["plain", "scrv1"] = "plain"
    # How long this NAS waits for an answer before it gives up (its timeout x (retries
    # + 1)). Only checked against the methods' waits (check-config warns); not enforced.
    nas_timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    # The wording of this NAS's challenge prompts (config/prompts.py): a profile's name
    # (default, short, openvpn, or one of prompt_profiles) or a mapping with templates.
    prompts: ClientPromptsConfig = ClientPromptsConfig()
    # The longest Reply-Message this NAS shows; unset: its prompt profile's.
    max_prompt: MaxPrompt | None = None

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

    @model_validator(mode="after")
    def _scrv1_appends(self) -> ClientConfig:
        if self.append_format == "scrv1" and self.second_factor == "challenge":
            raise ValueError(
                "append_format scrv1 needs second_factor append or auto (the static-challenge"
                " response comes with the password)"
            )
        return self

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


# A named prompt profile; names of the built-in ones are refused (daemon/preflight.py).
ProfileName = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]


class Config(Strict):
    server: ServerConfig = ServerConfig()
    clients: list[ClientConfig] = Field(min_length=1)
    directory: DirectoryConfig
    replies: RepliesConfig = RepliesConfig()
    access_policies: AccessPoliciesConfig = AccessPoliciesConfig()
    multifactor: MultifactorConfig = MultifactorConfig()
    smtp: SmtpConfig | None = None
    password_throttle: PasswordThrottleConfig = PasswordThrottleConfig()
    # Named prompt profiles the clients refer to (`clients[].prompts: NAME`).
    prompt_profiles: dict[ProfileName, PromptProfileConfig] = Field(default_factory=dict)
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


@dataclass(frozen=True)
class Document:
    """A configuration file read and parsed as YAML, not yet validated."""

    path: Path | None
    text: str
    data: dict[str, Any]

    @functools.cached_property
    def lines(self) -> LineMap:
        return yaml_line_map(self.text)


def parse_document(text: str, path: Path | None = None) -> Document:
    where = str(path) if path else "<config>"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError([f"{where}{line}: not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise ConfigError([f"{where}: the top level must be a mapping"])
    return Document(path, text, data)


def read_document(path: Path) -> Document:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([not_utf8(path, exc)]) from exc
    return parse_document(text, path)


def _context(path: Path | None) -> dict[str, Path]:
    return {"base_dir": path.resolve().parent if path else Path.cwd()}


def validate_document(document: Document) -> Config:
    """The whole document as a Config; raises pydantic's ValidationError."""
    config = Config.model_validate(document.data, context=_context(document.path))
    return config.model_copy(update={"source": document.path})


def valid_sections(document: Document) -> dict[str, Any]:
    """Each top-level section that is valid on its own (an absent one gets its default),
    so that the deeper checks of the valid sections still run when others are broken:
    every problem is then reported in one pass."""
    found: dict[str, Any] = {}
    for name, info in Config.model_fields.items():
        if info.exclude:
            continue
        if name not in document.data or info.annotation is None:
            if not info.is_required():
                found[name] = info.get_default(call_default_factory=True)
            continue
        try:
            found[name] = TypeAdapter(info.annotation).validate_python(
                document.data[name], context=_context(document.path)
            )
        except ValidationError:
            continue
    return found


def config_from(document: Document) -> Config:
    """Validate a document; raise ConfigError listing every schema problem
    (daemon/preflight.py adds the checks that read files or build backends)."""
    try:
        return validate_document(document)
    except ValidationError as exc:
        raise ConfigError(render_all(schema_problems(exc, Config), document.lines)) from exc


def parse_config(text: str, path: Path | None = None) -> Config:
    return config_from(parse_document(text, path))


def load_config(path: Path) -> Config:
    return config_from(read_document(path))
