"""The `directory` section: where the primary password is checked (the local users
file, LDAP / Active Directory, an upstream RADIUS server)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from mfaproxy.config.base import (
    AttributeString,
    ConfigPath,
    RadiusServerConfig,
    Strict,
    take_secrets,
)


class LocalDirectoryConfig(Strict):
    users_file: ConfigPath
    # The busiest login rate this server must serve (a shift change, a VPN reconnect
    # storm): check-config warns when the users file's hash cost cannot serve it here.
    peak_logins_per_second: float | None = Field(default=None, gt=0, le=1_000_000)
    # argon2 verifications run on this many threads (each uses its parallelism in
    # lanes); at most `hash_queue` wait for one before new first rounds are shed.
    hash_threads: int = Field(default=2, ge=1, le=64)
    hash_queue: int = Field(default=1024, ge=1, le=100_000)


class LdapGroupSearchConfig(Strict):
    """Find groups by searching for entries that list the user as a member."""

    base_dn: str
    filter: str = "(&(objectClass=groupOfNames)(member={user_dn}))"
    name_attribute: str = "cn"


class LdapAttributesConfig(Strict):
    email: str = "mail"
    mobile: str = "mobile"
    groups: str = "memberOf"


# One assertion of an RFC 4515 filter: `(attr=value)`, `(attr~=value)`, `(attr:rule:=v)`.
_ASSERTION = re.compile(
    r"\(\s*([A-Za-z0-9][A-Za-z0-9.-]*)(?:;[^=()]*)?(?::[^=()]*)?[~<>]?=([^()]*)\)"
)


def username_attributes(user_filter: str) -> list[str]:
    """The attributes `user_filter` compares with `{username}`, in order, once each."""
    named: dict[str, str] = {}  # attribute names are case-insensitive (RFC 4512 2.5)
    for match in _ASSERTION.finditer(user_filter):
        if "{username}" in match.group(2):
            named.setdefault(match.group(1).casefold(), match.group(1))
    return list(named.values())


class LdapConfig(Strict):
    servers: list[str] = Field(min_length=1)
    base_dn: str = ""
    # search-then-bind: a service account finds the user's entry with user_filter.
    bind_dn: str | None = None
    bind_password: SecretStr | None = None
    user_filter: str = "(uid={username})"
    # direct bind: the user's DN is built from this template; no service account.
    user_dn_template: str | None = None
    start_tls: bool = False
    ca_file: ConfigPath | None = None
    verify_certificate: bool = True
    connect_timeout: float = Field(default=3.0, gt=0, le=60)
    timeout: float = Field(default=5.0, gt=0, le=120)
    pool_size: int = Field(default=8, ge=1, le=256)
    # LDAP attempts that may wait for one of the pool_size threads (then shed).
    queue: int = Field(default=1024, ge=1, le=100_000)
    attributes: LdapAttributesConfig = LdapAttributesConfig()
    group_search: LdapGroupSearchConfig | None = None
    # The attribute of the user's entry that is their identity (the key of their MFA
    # record): `uid`, `sAMAccountName`... Default: the attribute user_filter (or the
    # first RDN of user_dn_template) compares with {username}; required when the filter
    # compares several. An entry without it is known by its DN.
    identity_attribute: str | None = Field(default=None, min_length=1)
    # Groups named by DN (memberOf) match configured group names only when they lie
    # under this base (`ou=groups,dc=example,dc=com`); anywhere else they match by full
    # DN only, so a group of the same name in another part of the tree is not the same
    # group. group_search results are under its own base_dn.
    group_base_dn: str | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _secrets(cls, data: Any, info: ValidationInfo) -> Any:
        return take_secrets(data, ("bind_password",), info)

    @field_validator("servers")
    @classmethod
    def _check_servers(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("ldap://", "ldaps://")):
                raise ValueError(f"{url!r}: use an ldap:// or ldaps:// URL")
        return value

    @model_validator(mode="after")
    def _check_mode(self) -> LdapConfig:
        if self.user_dn_template is None and self.bind_dn is None:
            raise ValueError("set bind_dn (search then bind) or user_dn_template (direct bind)")
        if self.user_dn_template is not None and "{username}" not in self.user_dn_template:
            raise ValueError("user_dn_template must contain {username}")
        if "{username}" not in self.user_filter:
            raise ValueError("user_filter must contain {username}")
        if self.identity_attribute is None:
            object.__setattr__(self, "identity_attribute", self._default_identity())
        return self

    def _default_identity(self) -> str:
        if self.user_dn_template is not None:
            return self.user_dn_template.partition("=")[0].strip()
        named = username_attributes(self.user_filter)
        if len(named) == 1:
            return named[0]
        # Two attributes (uid and mail, sAMAccountName and userPrincipalName) are two
        # spellings of one user: which one is the identity must be said, not guessed.
        raise ValueError(
            f"user_filter compares {{username}} with {', '.join(named) or 'no attribute'}:"
            " set identity_attribute to the attribute whose value is the user's identity"
        )

    @property
    def identity(self) -> str:
        assert self.identity_attribute is not None  # set by the validator
        return self.identity_attribute


class RadiusDirectoryConfig(Strict):
    servers: list[RadiusServerConfig] = Field(min_length=1)
    timeout: float = Field(default=3.0, gt=0, le=60)
    retries: int = Field(default=2, ge=0, le=10)
    nas_identifier: AttributeString | None = None
    # Attributes of the upstream Access-Accept copied into our Access-Accept.
    pass_through_attributes: list[str] = Field(default_factory=list)
    # The Accept's attribute whose values are the user's groups (Class, Filter-Id...).
    # Unset: the upstream gives no group data, and group and administrator rules are
    # unknown (their stricter outcome applies), never "not a member".
    group_attribute: str | None = Field(default=None, min_length=1)
    # Refuse upstream replies that lack a Message-Authenticator (BlastRADIUS).
    require_message_authenticator: bool = True


class RealmRule(Strict):
    """A form of user name that carries a realm, as FreeRADIUS's realm module reads it:
    `prefix` (`EXAMPLE\\sam`, delimiter `\\`) or `suffix` (`sam@example.org`, `@`).
    A name in one of `realms` (compared like user names) is the same user as the bare
    name; names in other realms are left whole for the directory to judge."""

    format: Literal["prefix", "suffix"]
    # Default: `\\` for prefix, `@` for suffix.
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)
    realms: list[str] = Field(min_length=1)
    # Ask the directory about the bare name (the default), or about the name as typed
    # (an upstream RADIUS server that wants the realm). The identity is the same.
    strip: bool = True

    @field_validator("realms")
    @classmethod
    def _check_realms(cls, value: list[str]) -> list[str]:
        for realm in value:
            if not realm.strip() or realm != realm.strip():
                raise ValueError(f"{realm!r}: a realm is a name without surrounding spaces")
        return value

    @model_validator(mode="after")
    def _default_delimiter(self) -> RealmRule:
        if self.delimiter is None:
            default = "\\" if self.format == "prefix" else "@"
            object.__setattr__(self, "delimiter", default)
        return self

    @property
    def separator(self) -> str:
        assert self.delimiter is not None  # set by the validator
        return self.delimiter


class DirectoryConfig(Strict):
    backend: Literal["local", "ldap", "radius"] = "local"
    # Realm forms that name the same user (see RealmRule); the first that matches applies.
    realms: list[RealmRule] = Field(default_factory=list)
    local: LocalDirectoryConfig | None = None
    ldap: LdapConfig | None = None
    radius: RadiusDirectoryConfig | None = None

    @model_validator(mode="after")
    def _selected_present(self) -> DirectoryConfig:
        if getattr(self, self.backend) is None:
            raise ValueError(
                f"backend is {self.backend!r} but the {self.backend!r} section is missing"
            )
        return self
