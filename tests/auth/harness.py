"""An in-process engine for the second-factor rules: no daemon, no sockets, real parts.

`Harness` builds a real `Engine` from a configuration dict (validated by the real
schema) with the local users file, a SQLite user store and the master key in
`tmp_path`, the memory state store (or the stores given: Redis, PostgreSQL), the
password-guessing counters in memory (or the `Throttle` given), the real factors, and a
virtual clock. Requests are real RADIUS packets (pyrad, signed, User-Password hidden)
decoded by the daemon's own codec, so the engine sees exactly what the runtime would
hand it. Use it as `async with Harness(tmp_path, overrides) as h: await h.login(...)`.
"""

from __future__ import annotations

import copy
import functools
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyotp
import yaml
from argon2 import PasswordHasher

from mfaproxy.adapters.smtp import SmtpSender
from mfaproxy.auth.engine import Engine, RequestContext
from mfaproxy.config.schema import Config, parse_config
from mfaproxy.core.answer import Answer, Outcome
from mfaproxy.directory.registry import build_checker
from mfaproxy.factors.base import FactorServices
from mfaproxy.factors.registry import build_factors
from mfaproxy.radius.codec import RadiusRequest, decode_request
from mfaproxy.store.async_users import AsyncUserStore
from mfaproxy.store.crypto import load_or_create_key
from mfaproxy.store.records import UserRepository
from mfaproxy.store.sealed import SealedStateStore
from mfaproxy.store.state import MemoryStateStore, StateStore
from mfaproxy.store.throttle import Throttle
from mfaproxy.store.users import UserStore
from tests.support.nas import DICTIONARY, access_request

SECRET = "harness-secret"
NAS_ADDRESS = "127.0.0.1"
START = 1_800_000_000.0  # a fixed Unix time, so TOTP steps are reproducible
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

# Users of the local users file; each one's password is "<name>-pw".
USERS: dict[str, dict[str, Any]] = {
    "alice": {"groups": ["vpn-users"], "email": "alice@example.com"},
    "bob": {"groups": ["vpn-users", "mfa-admins"], "email": "bob@example.com"},
    "carol": {"groups": ["vpn-users"]},
    "dave": {"groups": ["vpn-users"], "email": "dave@example.com"},
}

BASE: dict[str, Any] = {
    "clients": [
        {"name": "vpn", "address": ["127.0.0.1/32"], "secret": SECRET},
        {
            "name": "legacy",
            "address": ["127.0.0.3/32"],
            "secret": SECRET,
            "second_factor": "append",
        },
    ],
    "access_policies": {"mfa": {"default_action": "mfa_required"}},
    "multifactor": {
        "enabled": ["totp"],
        "default": "totp",
        "alternate": ["backup_codes"],
        "administrators": {"group": "mfa-admins", "emails": ["security@example.com"]},
        "lockout": {"max_failures": 5, "lockout_seconds": 900},
    },
}


def password(user: str) -> str:
    return f"{user}-pw"


@functools.cache
def password_hash(user: str) -> str:
    return FAST.hash(password(user))


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it, mappings merged key by key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Clock:
    """Virtual Unix time: the engine, the factors and the stores all read it."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        overrides: Mapping[str, Any] | None = None,
        *,
        state: StateStore | None = None,
        open_store: Callable[[bytes], UserRepository] | None = None,
        users: Mapping[str, dict[str, Any]] = USERS,
        throttle: Throttle | None = None,
    ) -> None:
        self.tmp = tmp_path
        self.clock = Clock()
        users_file = tmp_path / "users.yaml"
        entries = {u: {"password_hash": password_hash(u), **v} for u, v in users.items()}
        users_file.write_text(yaml.safe_dump({"users": entries}))
        data = merge(
            BASE, {"directory": {"backend": "local", "local": {"users_file": "users.yaml"}}}
        )
        data = merge(data, {"server": {"state_dir": str(tmp_path / "state")}})
        self.config: Config = parse_config(
            yaml.safe_dump(merge(data, overrides or {})), tmp_path / "mfaproxy.yaml"
        )
        key = load_or_create_key(self.config.key_file)
        # Several harnesses on one tmp_path share the SQLite file: several daemons.
        # `open_store(master_key)`: another backend (PostgreSQL)
        path = tmp_path / "state" / "users.sqlite3"
        self.store = open_store(key) if open_store else UserStore(path, key)
        # Sealed, as the daemon does it (daemon/server.open_shared).
        inner = state if state is not None else MemoryStateStore()  # an empty one is falsy
        self.state: StateStore = SealedStateStore(inner, key)
        mail = SmtpSender(self.config.smtp) if self.config.smtp is not None else None
        self.services = FactorServices(
            AsyncUserStore(self.store), self.state, mail, DICTIONARY, key
        )
        self.factors = build_factors(self.config.multifactor, self.services)
        checker = build_checker(self.config.directory, DICTIONARY)
        self.engine = Engine(
            self.config, checker, self.factors, self.services, clock=self.clock, throttle=throttle
        )
        self.totp_secrets: dict[str, str] = {}

    async def __aenter__(self) -> Harness:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.engine.close()
        await self.state.close()
        await self.services.users.close()

    # ------------------------------------------------------------------ set-up

    def enrol_totp(self, user: str) -> str:
        """Enrol `user` in TOTP as `mfaproxy users enroll` would; returns the key."""
        secret = pyotp.random_base32()
        self.store.set_totp_secret(user, secret, self.clock.now)
        self.store.set_method(user, "totp", self.clock.now)
        self.totp_secrets[user] = secret
        return secret

    async def write(self, change: Callable[[UserRepository], object]) -> None:
        """Change the user store as the daemon's own calls do (through its pool, which
        empties its read cache): what a test writes between two logins is seen at once.
        Writes straight to `store` are seen only when the cache next asks SQLite."""
        await self.services.users.run(change)

    def code(self, user: str, offset_steps: int = 0) -> str:
        period = self.config.multifactor.totp.period
        return pyotp.TOTP(self.totp_secrets[user]).at(self.clock.now + offset_steps * period)

    # ------------------------------------------------------------------ requests

    def request(
        self,
        user: str,
        typed: str,
        state: bytes | None = None,
        *,
        client: str = "vpn",
        **attributes: Any,
    ) -> tuple[RequestContext, RadiusRequest]:
        """A signed Access-Request as the NAS would send it, decoded by our codec."""
        packet = access_request(SECRET, user, typed, sign=False, **attributes)
        if state is not None:
            packet.AddAttribute("State", state)
        packet.add_message_authenticator()
        decoded = decode_request(packet.RequestPacket(), SECRET.encode(), DICTIONARY, True)
        entry = next(c for c in self.config.clients if c.name == client)
        source = str(entry.address[0].network_address)
        return RequestContext(secrets.token_hex(8), entry, source, 50_000), decoded

    async def send(
        self, user: str, typed: str, state: bytes | None = None, **options: Any
    ) -> Answer:
        ctx, request = self.request(user, typed, state, **options)
        answer = await self.engine.handle(ctx, request)
        self.last_audit = ctx.audit
        return answer

    async def login(self, user: str, typed: str, *responses: str, **options: Any) -> Answer:
        """The password, then one response per Access-Challenge; the last answer."""
        answer = await self.send(user, typed, **options)
        for response in responses:
            if answer.outcome is not Outcome.CHALLENGE:
                return answer
            answer = await self.send(user, response, answer.state, **options)
        return answer
