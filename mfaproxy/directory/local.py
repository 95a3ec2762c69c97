"""The local users file: argon2id password hashes, groups, email and mobile.

Hash verification costs tens of milliseconds by design, so it runs in a small bounded
thread pool, never on the event loop (argon2-cffi releases the GIL, so the pool's
threads use every core). Only a hash cheaper than the hop to a thread and back (at most
INLINE_MAX_KIB_PASSES, far below any production cost) is verified on the loop. An
unknown user costs the same as a known one (a dummy hash at the file's most common cost
is verified) so response time does not reveal which names exist.

The cost. An authentication server verifies a hash on every login, so the hash is sized
for that job: the default is OWASP's minimum for argon2id (m = 19 MiB, t = 2, p = 1,
about 30 ms of one core here), not argon2-cffi's default (m = 64 MiB, t = 3, p = 4,
about 170 ms of CPU), which would hold a 2-core server to ~12 logins/s. Every hash
carries its own parameters and is verified at them, so a file can mix costs and an
operator can raise the cost (`users hash-password --cost`) user by user.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import structlog
import yaml
from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pydantic import Field, ValidationError, field_validator

from mfaproxy.admission.pool import BoundedPool
from mfaproxy.config.base import Strict
from mfaproxy.config.problems import not_utf8, render_all, schema_problems, yaml_line_map
from mfaproxy.core.identity import name_problem, normalise
from mfaproxy.core.primary import (
    IdentityLookup,
    Located,
    LookupStatus,
    PrimaryOutcome,
    PrimaryResult,
)
from mfaproxy.errors import ConfigError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class HashCost:
    """argon2id parameters: passes, memory in KiB, lanes (RFC 9106 section 3.1)."""

    time_cost: int
    memory_kib: int
    parallelism: int

    def __str__(self) -> str:
        return f"m={self.memory_kib},t={self.time_cost},p={self.parallelism}"


# Named costs for `users hash-password --cost`. OWASP's argon2id table lists equally
# strong pairs (19 MiB x 2 passes, 46 MiB x 1 pass, ...); `rfc9106-low-memory` is
# argon2-cffi's own default and RFC 9106's second recommended option.
COSTS: dict[str, HashCost] = {
    "owasp-minimum": HashCost(time_cost=2, memory_kib=19 * 1024, parallelism=1),
    "owasp-46mib": HashCost(time_cost=1, memory_kib=46 * 1024, parallelism=1),
    "rfc9106-low-memory": HashCost(time_cost=3, memory_kib=64 * 1024, parallelism=4),
}
DEFAULT_COST_NAME = "owasp-minimum"
DEFAULT_COST = COSTS[DEFAULT_COST_NAME]
_EXPLICIT = re.compile(r"^m=(\d+),t=(\d+),p=(\d+)$")
# argon2 itself needs m >= 8p KiB; below OWASP's floor a hash is cheap to brute force.
MIN_MEMORY_KIB = 8


def parse_cost(text: str) -> HashCost:
    """A cost name from COSTS, or `m=KIB,t=PASSES,p=LANES`; ValueError otherwise."""
    if text in COSTS:
        return COSTS[text]
    match = _EXPLICIT.match(text.replace(" ", ""))
    if match is None:
        names = ", ".join(COSTS)
        raise ValueError(f"cost must be one of {names} or m=KIB,t=PASSES,p=LANES")
    memory, passes, lanes = (int(group) for group in match.groups())
    if not (1 <= lanes <= 16 and 1 <= passes <= 20 and 8 * lanes <= memory <= 4 * 1024 * 1024):
        raise ValueError("cost out of range: 1 <= p <= 16, 1 <= t <= 20, 8p <= m <= 4 GiB")
    return HashCost(time_cost=passes, memory_kib=memory, parallelism=lanes)


def hasher_for(cost: HashCost) -> PasswordHasher:
    return PasswordHasher(
        time_cost=cost.time_cost,
        memory_cost=cost.memory_kib,
        parallelism=cost.parallelism,
        type=Type.ID,
    )


def cost_of(stored_hash: str) -> HashCost | None:
    """The parameters a stored hash was made with (None when it cannot be parsed)."""
    try:
        params = extract_parameters(stored_hash)
    except InvalidHashError:
        return None
    return HashCost(params.time_cost, params.memory_cost, params.parallelism)


# Threads verifying hashes at once (each check runs on one core at p=1).
HASH_THREADS = 2
# At or below this memory x passes (KiB), verifying costs less than handing the check
# to a thread and back (tens of microseconds against ~0.1 ms of CPU and a wake-up):
# such a hash is verified on the event loop. No hash a production file should hold is
# this cheap (the default is 19 MiB x 2); test fixtures and benchmarks use them.
INLINE_MAX_KIB_PASSES = 64


def verified_inline(stored_hash: str) -> bool:
    """Whether a hash is cheap enough to verify without a thread hop."""
    cost = cost_of(stored_hash)
    return cost is not None and cost.memory_kib * cost.time_cost <= INLINE_MAX_KIB_PASSES


def checks_per_second(cost: HashCost, cpus: int, threads: int = HASH_THREADS) -> float:
    """How many checks at `cost` this host can do per second: bounded by the CPU one
    check takes over all cores, and by the threads' wall time (measured, not guessed:
    it reads the clock, so it is called by check-config only)."""
    hasher = hasher_for(cost)
    stored = hasher.hash("mfaproxy cost probe")
    cpu, wall = time.process_time(), time.perf_counter()
    with contextlib.suppress(VerificationError):
        hasher.verify(stored, "mfaproxy cost probe")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    by_cpu = cpus / cpu if cpu > 0 else float("inf")
    by_threads = min(threads, cpus) / wall if wall > 0 else float("inf")
    return min(by_cpu, by_threads)


# Verification reads the parameters from each hash; this instance's own only matter
# for hashing.
HASHER = hasher_for(DEFAULT_COST)

# libargon2's limits (argon2.h: ARGON2_MIN_SALT_LENGTH, ARGON2_MIN_OUTLEN, and at least
# 8 KiB of memory per lane): a hash outside them can never verify.
MIN_SALT_OCTETS = 8
MIN_HASH_OCTETS = 4
_BASE64 = re.compile(r"[A-Za-z0-9+/]+")
# The PHC string layout libargon2 decodes (argon2.h decode_string): argon2-cffi's
# parameter extraction is looser (it takes `v=19,m=8,...` for `v=19$m=8,...`).
_PHC = re.compile(r"\$argon2(?:id|i|d)(?:\$v=[0-9]+)?\$m=[0-9]+,t=[0-9]+,p=[0-9]+\$[^$]+\$[^$]+")
_HASH_ADVICE = "make one with `mfaproxy users hash-password`"


def _unpadded_base64(text: str) -> bytes | None:
    """The PHC string format's base64 (no padding, RFC 4648 alphabet); None if not."""
    if not _BASE64.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    # libargon2 refuses a last character with unused bits set (a non-canonical form).
    return decoded if base64.b64encode(decoded).rstrip(b"=").decode() == text else None


def hash_problem(value: str) -> str | None:
    """Why `value` is not a usable argon2 hash, or None when it is one.

    argon2-cffi's parameter extraction reads the type, version and costs; the salt and
    the hash themselves are decoded here, since a hash libargon2 cannot decode is
    refused at verification in microseconds: the right password would be rejected as
    a wrong one, and faster than a wrong one, which tells an attacker the user exists.
    """
    try:
        if not _PHC.fullmatch(value):
            raise InvalidHashError(value)
        params = extract_parameters(value)
    except InvalidHashError:
        return f"not an argon2 hash ($argon2id$v=19$m=...,t=...,p=...$salt$hash); {_HASH_ADVICE}"
    salt_text, hash_text = value.split("$")[-2:]
    salt, digest = _unpadded_base64(salt_text), _unpadded_base64(hash_text)
    if salt is None or digest is None:
        return f"the salt or hash part is not base64; {_HASH_ADVICE}"
    if len(salt) < MIN_SALT_OCTETS or len(digest) < MIN_HASH_OCTETS:
        return f"the salt or hash part is too short (truncated?); {_HASH_ADVICE}"
    if params.version not in (0x10, 0x13):
        return f"argon2 version {params.version} is unknown (19 is current)"
    if params.time_cost < 1 or not 1 <= params.parallelism < 2**24:
        return "t must be at least 1 and p between 1 and 16777215"
    if params.memory_cost < 8 * params.parallelism:
        return "m must be at least 8 KiB per lane (8 x p)"
    return None


class LocalUser(Strict):
    password_hash: str = Field(min_length=1)
    groups: list[str] = Field(default_factory=list)
    email: str | None = None
    mobile: str | None = None

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: str) -> str:
        problem = hash_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class UsersFile(Strict):
    users: dict[str, LocalUser] = Field(default_factory=dict)


def load_users_file(path: Path) -> dict[str, LocalUser]:
    """Read and validate the users file; problems are reported with dotted paths."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([not_utf8(path, exc)]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    if data is None:
        # A file emptied by a half-done write (`>` redirect, a full disk, a copy in
        # progress) would otherwise reload as "no users" and reject everyone.
        raise ConfigError([f"{path}: empty; a file without users says `users: {{}}`"])
    try:
        parsed = UsersFile.model_validate(data)
    except ValidationError as exc:
        found = render_all(schema_problems(exc, UsersFile), yaml_line_map(text))
        raise ConfigError([f"{path}: {p}" for p in found]) from exc
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


def hash_password(password: str, cost: HashCost = DEFAULT_COST) -> str:
    return hasher_for(cost).hash(password)


def typical_cost(users: dict[str, LocalUser]) -> HashCost:
    """The most common cost in a users file (the default for an empty file)."""
    counts = Counter(cost_of(user.password_hash) for user in users.values())
    known = [(cost, n) for cost, n in counts.most_common() if cost is not None]
    return known[0][0] if known else DEFAULT_COST


@functools.cache
def _dummy_hash(cost: HashCost) -> str:
    # One per cost and process: a reload (or a CLI command) does not hash again.
    return hash_password("mfaproxy timing equaliser", cost)


class LocalChecker:
    """Checks passwords against the local users file."""

    name = "local"

    def __init__(self, users_file: Path, threads: int = HASH_THREADS, queue: int = 1024):
        self._users = load_users_file(users_file)
        # Unknown users cost what most known users cost: timing tells no names.
        self._dummy_hash = _dummy_hash(typical_cost(self._users))
        self._inline = frozenset(
            stored
            for stored in {user.password_hash for user in self._users.values()} | {self._dummy_hash}
            if verified_inline(stored)
        )
        # Bounded and fair (admission/pool.py): under a flood of logins, hashes nobody
        # waits for any more are shed, never queued without end.
        self._pool = BoundedPool("hash", threads, queue)

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
        return await self.verify(await self.locate(username), password)

    async def locate(self, username: str) -> Located:
        """The file's key for the name, when it has that entry; an unknown name gets no
        answer yet: `verify` still spends a (dummy) hash on it."""
        key = normalise(username)
        return Located(username, identity=key if key in self._users else None)

    async def verify(self, located: Located, password: str) -> PrimaryResult:
        key = located.identity
        user = self._users.get(key) if key is not None else None
        stored = user.password_hash if user else self._dummy_hash
        if stored in self._inline:
            ok = self._verify(stored, password)
        else:
            ok = await self._pool.run(self._verify, stored, password)
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
            identity=key,
        )

    async def health(self) -> str | None:
        return None  # the file was read at start: nothing to be down

    async def find_identity(self, username: str) -> IdentityLookup:
        key = normalise(username)
        if key in self._users:
            return IdentityLookup(LookupStatus.FOUND, key)
        return IdentityLookup(LookupStatus.NOT_FOUND)

    async def close(self) -> None:
        await self._pool.close()
