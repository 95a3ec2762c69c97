"""Building blocks shared by every configuration section: strict models, paths resolved
against the configuration file's folder, and secrets read inline, from a file or from
the environment. Only radius/ (below config/) is imported, so any section module can use it."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.functional_validators import AfterValidator, BeforeValidator

from mfaproxy.radius.constants import MAX_STRING_OCTETS


class Strict(BaseModel):
    """Base of every section: unknown keys are refused, values are not coerced loosely."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    base = context.get("base_dir")
    return Path(base) if base is not None else Path.cwd()


def resolve_path(value: str | Path, info: ValidationInfo) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir(info) / path


def take_secrets(data: Any, names: tuple[str, ...], info: ValidationInfo) -> Any:
    """Turn `<name>_file` / `<name>_env` into `<name>`, refusing ambiguous combinations."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name in names:
        given = [k for k in (name, f"{name}_file", f"{name}_env") if out.get(k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of {', '.join(given)}")
        if f"{name}_file" in out:
            raw = out.pop(f"{name}_file")
            if raw is not None:
                path = resolve_path(str(raw), info)
                try:
                    out[name] = path.read_text(encoding="utf-8").rstrip("\r\n")
                except OSError as exc:
                    raise ValueError(f"{name}_file: cannot read {path}: {exc.strerror}") from exc
        if f"{name}_env" in out:
            env_name = out.pop(f"{name}_env")
            if env_name is not None:
                if str(env_name) not in os.environ:
                    raise ValueError(f"{name}_env: environment variable {env_name} is not set")
                out[name] = os.environ[str(env_name)]
    return out


def parse_host_port(value: str, default_port: int) -> tuple[str, int]:
    """Parse `host:port`, `[v6]:port`, `host` or `[v6]`; the host must be an IP literal."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"{value!r} is not [ipv6]:port")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"{value!r}: {host!r} is not an IP address") from exc
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{value!r}: port must be 1-65535")
        port = int(port_text)
    return host, port


def _resolve_if_path(value: Any, info: ValidationInfo) -> Any:
    return resolve_path(value, info) if isinstance(value, str | Path) else value


# A path in the configuration: relative ones are relative to the configuration file.
ConfigPath = Annotated[Path, BeforeValidator(_resolve_if_path)]


def _fits_one_attribute(value: str) -> str:
    # RFC 2865 section 5: a string attribute holds at most 253 octets (UTF-8 here).
    size = len(value.encode("utf-8"))
    if size > MAX_STRING_OCTETS:
        raise ValueError(
            f"is {size} octets; a RADIUS attribute holds at most {MAX_STRING_OCTETS}"
            " (RFC 2865 section 5)"
        )
    return value


# A value sent as one RADIUS string attribute (NAS-Identifier, RFC 2865 section 5.32).
AttributeString = Annotated[str, AfterValidator(_fits_one_attribute)]


class RadiusServerConfig(Strict):
    """An upstream RADIUS server (primary directory or OTP server)."""

    host: str
    port: int = Field(default=1812, ge=1, le=65535)
    secret: SecretStr

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any, info: ValidationInfo) -> Any:
        return take_secrets(data, ("secret",), info)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        # Replies are matched by source address, so a host name would never match one.
        ipaddress.ip_address(value)
        return value
