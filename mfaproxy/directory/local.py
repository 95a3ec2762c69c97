"""The local users file: argon2id password hashes, groups, email and mobile.

Hash verification costs tens of milliseconds by design, so it runs in a small bounded
thread pool, never on the event loop. An unknown user costs the same as a known one
(a dummy hash is verified) so response time does not reveal which names exist.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog
import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pydantic import Field, ValidationError, field_validator

from mfaproxy.config.base import Strict
from mfaproxy.config.schema import validation_problems, yaml_line_map
from mfaproxy.core.identity import name_problem, normalise
from mfaproxy.core.primary import PrimaryOutcome, PrimaryResult
from mfaproxy.errors import ConfigError

log = structlog.get_logger(__name__)

HASHER = PasswordHasher()


class LocalUser(Strict):
    password_hash: str = Field(min_length=1)
    groups: list[str] = Field(default_factory=list)
    email: str | None = None
    mobile: str | None = None

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: str) -> str:
        if not value.startswith("$argon2"):
            raise ValueError("must be an argon2 hash from `mfaproxy users hash-password`")
        return value


class UsersFile(Strict):
    users: dict[str, LocalUser] = Field(default_factory=dict)


def load_users_file(path: Path) -> dict[str, LocalUser]:
    """Read and validate the users file; problems are reported with dotted paths."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    try:
        parsed = UsersFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            [f"{path}: {p}" for p in validation_problems(exc, yaml_line_map(text))]
        ) from exc
    users: dict[str, LocalUser] = {}
    first: dict[str, str] = {}
    problems: list[str] = []
    for name, user in parsed.users.items():
        # A key must be a name a user could type: the same checks as a User-Name.
        problem = name_problem(name)
        key = normalise(name)
        if problem is not None:
            problems.append(f"{path}: users.{name!r}: not usable as a user name ({problem})")
        elif key in users:
            problems.append(
                f"{path}: users.{name}: the same user name as users.{first[key]} ({key!r})"
            )
        first.setdefault(key, name)
        users[key] = user
    if problems:
        raise ConfigError(problems)
    return users


def hash_password(password: str) -> str:
    return HASHER.hash(password)


class LocalChecker:
    """Checks passwords against the local users file."""

    name = "local"

    def __init__(self, users_file: Path, workers: int = 2):
        self._users = load_users_file(users_file)
        self._dummy_hash = HASHER.hash("mfaproxy timing equaliser")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")

    @property
    def users(self) -> dict[str, LocalUser]:
        return self._users

    def _verify(self, stored_hash: str, password: str) -> bool:
        try:
            return HASHER.verify(stored_hash, password)
        except VerifyMismatchError:
            return False
        except (VerificationError, InvalidHashError):
            log.warning("local_hash_unusable")
            return False

    async def authenticate(self, username: str, password: str) -> PrimaryResult:
        key = normalise(username)
        user = self._users.get(key)
        stored = user.password_hash if user else self._dummy_hash
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._pool, self._verify, stored, password)
        if user is None:
            return PrimaryResult(PrimaryOutcome.REJECT, self.name, reason="no_such_user")
        if not ok or not password:
            return PrimaryResult(PrimaryOutcome.REJECT, self.name, reason="bad_password")
        return PrimaryResult(
            PrimaryOutcome.ACCEPT,
            self.name,
            reason="password_ok",
            groups=frozenset(user.groups),
            email=user.email,
            mobile=user.mobile,
            user_id=key,
        )

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
