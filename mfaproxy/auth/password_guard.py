"""Password guessing (finding 4): wrong primary passwords are counted and throttled.

Before a password is checked, the attempt is reserved on its counters in one atomic
store call (store/throttle.py). When a counter refuses, nothing is checked at all (no
directory bind, no argon2): the engine answers Reject `password_throttled`. Afterwards
a wrong password keeps its reservation (a counted failure); a right one, or a
directory outage, releases it. The rule of each counter is core/throttle.py.

A login is checked in two phases (directory/base.py): the directory locates the user
without the password (the users file's entry; the LDAP service account's search, made
anyway), then verifies the password. Between the two the attempt is also reserved, in
a second atomic call, on the counter of the identity the directory found: so every
alias of one entry (`sam`, `sam@example.org` under a two-attribute LDAP filter, any
spelling the directory matches and core/identity.py does not fold) is counted on one
counter before any of its passwords is tested, whether the user ever logged in or not,
and a concurrent burst under fresh aliases cannot get more than one budget. When that
counter refuses, the first reservation is given back (a refused attempt is never
recorded) and no password is tested.

The counters of an attempt (README "Security" states the rule with its numbers):

- `source:` NAS entry plus Calling-Station-Id, for every user named from it (password
  spraying). None without a Calling-Station-Id: the NAS alone would lump all its users
  together, and one guesser could lock them all out.
- `user:` the normalised typed name, at sources the user has not logged in from
  (unknown sources), plus the counter of the identity (scope `identity`; it is
  `user:<identity>`, so `sam` typed as such and the aliases `sam@example.org` and
  `EXAMPLE\\sam` of one entry all add up on `user:sam`): the located identity, or,
  where the directory cannot locate without the password (an upstream RADIUS server,
  an LDAP direct bind without a service account), the identity learnt for the name
  from an earlier answer. A name the directory does not know has only its own counter
  (the same reply as a wrong password, and nothing stored for it but that counter).
- `known_source:` (user, source) at a known source: one where the user's password was right in
  the last `known_source_days` (recorded for the typed name and the identity). The user
  counter does not apply there, so guessing from
  elsewhere can lock the user out of new sources only, never out of one they use; a
  success there forgets that counter's failures (NIST SP 800-63B section 5.2.2 asks to
  disregard earlier failures from the place of a success). The located identity's
  (identity, source) counter is reserved too, so aliases add up there as well; and a
  name new at a source its identity knows (located, or learnt) is judged as at that
  known source, on the identity's counter: a user is never locked out of a source they
  use by the name they type there.

Known sources and the name-to-identity map are values in the state store (sealed).
When that store is down the guard follows `server.store_failmode`: `secure` lets the
store error through (the engine rejects); `safe` checks the password unthrottled,
logged and counted as `mfaproxy_store_failmode_total{action="unthrottled"}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import structlog

from mfaproxy.config.throttle import PasswordThrottleConfig
from mfaproxy.core.identity import LoginName
from mfaproxy.core.primary import PrimaryOutcome, PrimaryResult
from mfaproxy.core.throttle import Rule
from mfaproxy.directory.base import PasswordChecker
from mfaproxy.errors import UpstreamError
from mfaproxy.observability import metrics
from mfaproxy.store.ids import unique_token
from mfaproxy.store.state import StateStore
from mfaproxy.store.throttle import Counter, Throttle

log = structlog.get_logger(__name__)

KNOWN_SOURCES = "password_known_source"
IDENTITIES = "password_identity"
MSG_THROTTLED = "Too many failed password attempts. Try again later."

Scope = Literal["user", "identity", "known_source", "source"]


@dataclass(frozen=True)
class Throttled:
    """A counter refused the attempt: which kind, and for how many more seconds."""

    scope: Scope
    retry_after: float


@dataclass
class Attempt:
    """One reserved password attempt, until its outcome is known."""

    token: str
    user: str  # the normalised typed name
    source: str | None
    known: bool  # the user has logged in from this source before
    identity: str | None = None  # learnt before this attempt
    located: str | None = None  # found by the directory before the password was tested
    reserved: list[tuple[Scope, str]] = field(default_factory=list)

    def counts(self, identity: str) -> bool:
        """Whether this attempt is already counted on `identity`'s user counter."""
        return identity in (self.user, self.identity, self.located)


def pair(user: str, source: str) -> str:
    """One key for (user, source): the user is length-prefixed, so a `|` in a name
    cannot make two pairs share a key."""
    return f"{len(user)}:{user}|{source}"


def source_of(client: str, calling_station_id: str | None) -> str | None:
    """The source a guess comes from, or None when the NAS does not say who is calling."""
    if not calling_station_id:
        return None
    return f"{client}|{calling_station_id}"


class PasswordGuard:
    def __init__(
        self,
        settings: PasswordThrottleConfig,
        throttle: Throttle,
        state: StateStore,
        failmode: Literal["secure", "safe"] = "secure",
    ) -> None:
        self.settings = settings
        self.throttle = throttle
        self.state = state
        self.failmode = failmode
        self.user_rule = Rule.from_settings(settings.user)
        self.source_rule = Rule.from_settings(settings.source)
        # How long a known source and a learnt identity are remembered.
        self.memory_seconds = max(settings.known_source_days * 86400, settings.user.window_seconds)

    # ------------------------------------------------------------------ counters

    def _counter(self, scope: Scope, name: str) -> Counter:
        """A user and an identity share one namespace: the identity `sam` is counted
        where the typed name `sam` is, so failures under every alias add up there."""
        rule = self.source_rule if scope == "source" else self.user_rule
        prefix = "user" if scope == "identity" else scope
        return (f"{prefix}:{name}", rule)

    def _names(self, attempt: Attempt) -> list[str]:
        return [self._counter(scope, name)[0] for scope, name in attempt.reserved]

    def _planned(self, attempt: Attempt) -> list[tuple[Scope, str]]:
        user, source = attempt.user, attempt.source
        if attempt.known:
            assert source is not None  # only a source can be known
            plan: list[tuple[Scope, str]] = [("known_source", pair(user, source))]
            if attempt.identity is not None and attempt.identity != user:
                plan.append(("known_source", pair(attempt.identity, source)))
        else:
            plan = [("user", user)]
            if attempt.identity is not None and attempt.identity != user:
                plan.append(("identity", attempt.identity))
        if source is not None:
            plan.append(("source", source))
        return plan

    async def _known(self, user: str, source: str | None, now: float) -> bool:
        if source is None or self.settings.known_source_days <= 0:
            return False
        return await self.state.get(KNOWN_SOURCES, pair(user, source), now) is not None

    async def _identity(self, user: str, now: float) -> str | None:
        found = await self.state.get(IDENTITIES, user, now)
        identity = found.get("identity") if found is not None else None
        return identity if isinstance(identity, str) else None

    # ------------------------------------------------------------------ steps

    async def begin(self, user: str, source: str | None, now: float) -> Attempt | Throttled:
        """Reserve an attempt for `user` from `source`, or say why it must wait."""
        attempt = Attempt(unique_token(), user, source, known=False)
        if not self.settings.enabled:
            return attempt
        try:
            attempt.identity = await self._identity(user, now)
            attempt.known = await self._known(user, source, now) or (
                attempt.identity is not None and await self._known(attempt.identity, source, now)
            )
            plan = self._planned(attempt)
            counters = [self._counter(scope, name) for scope, name in plan]
            refusal = await self.throttle.reserve(counters, attempt.token, now)
        except UpstreamError as exc:
            if self.failmode != "safe":
                raise
            log.error("password_throttle_unavailable", error=str(exc), failmode="safe")
            metrics.STORE_FAILMODE.labels(action="unthrottled").inc()
            return Attempt(attempt.token, user, source, known=False)
        if refusal is not None:
            scope = plan[refusal.index][0]
            metrics.PASSWORD_THROTTLE.labels(scope=scope, event="refused").inc()
            return Throttled(scope, max(0.0, refusal.retry_at - now))
        attempt.reserved = plan
        return attempt

    async def check(
        self,
        checker: PasswordChecker,
        login: LoginName,
        source: str | None,
        password: str,
        now: float,
    ) -> PrimaryResult | Throttled:
        """The directory's answer about `password`, or the counter that refused the
        attempt (then no password was tested)."""
        attempt = await self.begin(login.key, source, now)
        if isinstance(attempt, Throttled):
            return attempt
        try:
            located = await checker.locate(login.directory_name)
            if located.identity is not None:
                refused = await self.located(attempt, located.identity, now)
                if refused is not None:
                    return refused
            primary = located.answer or await checker.verify(located, password)
        except BaseException:
            # No outcome (shed under overload, cancelled at shutdown, a bug): the password
            # was never judged, so the attempt must not count as a failure.
            await self.abandoned(attempt)
            raise
        if primary.outcome is PrimaryOutcome.UNAVAILABLE:
            await self.abandoned(attempt)
        elif primary.outcome is PrimaryOutcome.REJECT:
            await self.failed(attempt, primary.identity or located.identity, now)
        else:
            throttled = await self.succeeded(attempt, primary.identity, now)
            if throttled is not None:
                return throttled
        return primary

    async def located(self, attempt: Attempt, identity: str, now: float) -> Throttled | None:
        """The directory found `identity` before the password is tested: reserve the
        attempt on its counter too, atomically, or give the whole attempt back. A name
        new at a source the identity knows is judged as at that known source."""
        if not attempt.reserved:
            return None  # not throttled (disabled, or the store was down under `safe`)
        extra = self._located_counter(attempt, identity)
        attempt.located = identity
        try:
            fresh_here = not attempt.known and identity != attempt.user
            if fresh_here and await self._known(identity, attempt.source, now):
                return await self._known_by_identity(attempt, identity, now)
            if extra is None:
                return None
            refusal = await self.throttle.reserve([self._counter(*extra)], attempt.token, now)
            if refusal is not None:
                await self.throttle.release(self._names(attempt), attempt.token)
        except UpstreamError as exc:
            if self.failmode != "safe":
                raise
            log.error("password_throttle_unavailable", error=str(exc), failmode="safe")
            metrics.STORE_FAILMODE.labels(action="unthrottled").inc()
            return None
        if refusal is not None:
            return self._refused(attempt, extra[0], refusal.retry_at, now)
        attempt.reserved.append(extra)
        return None

    def _located_counter(self, attempt: Attempt, identity: str) -> tuple[Scope, str] | None:
        """The identity's counter of this attempt's kind, unless already reserved."""
        if attempt.known:
            assert attempt.source is not None  # only a source can be known
            counter: tuple[Scope, str] = ("known_source", pair(identity, attempt.source))
            return None if identity == attempt.user or counter in attempt.reserved else counter
        return None if attempt.counts(identity) else ("identity", identity)

    async def _known_by_identity(
        self, attempt: Attempt, identity: str, now: float
    ) -> Throttled | None:
        """The typed name is new at this source, the identity is not: the user counter
        does not apply (guessing elsewhere never locks a user out of a source they
        use, under whatever name), the identity's known-source counter does."""
        assert attempt.source is not None  # only a source can be known
        await self.throttle.release(self._names(attempt), attempt.token)
        attempt.reserved = []
        plan: list[tuple[Scope, str]] = [
            ("known_source", pair(identity, attempt.source)),
            ("source", attempt.source),
        ]
        counters = [self._counter(scope, name) for scope, name in plan]
        refusal = await self.throttle.reserve(counters, attempt.token, now)
        if refusal is not None:
            return self._refused(attempt, plan[refusal.index][0], refusal.retry_at, now)
        attempt.known, attempt.reserved = True, plan
        return None

    def _refused(self, attempt: Attempt, scope: Scope, retry_at: float, now: float) -> Throttled:
        attempt.reserved = []
        metrics.PASSWORD_THROTTLE.labels(scope=scope, event="refused").inc()
        return Throttled(scope, max(0.0, retry_at - now))

    async def failed(self, attempt: Attempt, identity: str | None, now: float) -> None:
        """A wrong password: the reservation stands. When the directory named the
        identity, it is counted there too and remembered for the name."""
        for scope, _name in attempt.reserved:
            metrics.PASSWORD_THROTTLE.labels(scope=scope, event="failure").inc()
        if not attempt.reserved or identity is None or attempt.known:
            return
        try:
            if not attempt.counts(identity):
                await self.throttle.add(self._counter("identity", identity), attempt.token, now)
                metrics.PASSWORD_THROTTLE.labels(scope="identity", event="failure").inc()
            await self._remember_identity(attempt, identity, now)
        except UpstreamError as exc:
            log.warning("password_failure_not_counted", error=str(exc))  # still a Reject

    async def succeeded(
        self, attempt: Attempt, identity: str | None, now: float
    ) -> Throttled | None:
        """A right password: release the reservation, forget the failures at this known
        source, remember the source and the identity. Throttled when the identity (an
        alias typed for the first time) is itself waiting."""
        if not attempt.reserved:
            return None
        try:
            return await self._succeeded(attempt, identity, now)
        except UpstreamError as exc:
            if self.failmode != "safe":
                raise
            log.warning("password_success_not_recorded", error=str(exc))
            return None

    async def _succeeded(
        self, attempt: Attempt, identity: str | None, now: float
    ) -> Throttled | None:
        await self.throttle.release(self._names(attempt), attempt.token)
        if attempt.known:
            for scope, name in attempt.reserved:
                if scope == "known_source":
                    await self.throttle.clear(self._counter(scope, name)[0])
        elif identity is not None and not attempt.counts(identity):
            retry_at = await self.throttle.check(self._counter("identity", identity), now)
            if retry_at is not None:
                metrics.PASSWORD_THROTTLE.labels(scope="identity", event="refused").inc()
                return Throttled("identity", max(0.0, retry_at - now))
        if identity is not None:
            await self._remember_identity(attempt, identity, now)
        if attempt.source is not None and self.settings.known_source_days > 0:
            # Known for the name typed and for the identity: typing the identity's own
            # spelling there later is known too.
            for name in dict.fromkeys(filter(None, (attempt.user, identity))):
                key = pair(name, attempt.source)
                await self.state.put(KNOWN_SOURCES, key, {"since": now}, self.memory_seconds, now)
        return None

    async def abandoned(self, attempt: Attempt) -> None:
        """No answer about the password (the directory is down): not a guess."""
        if not attempt.reserved:
            return
        try:
            await self.throttle.release(self._names(attempt), attempt.token)
        except UpstreamError as exc:
            log.warning("password_attempt_not_released", error=str(exc))

    async def _remember_identity(self, attempt: Attempt, identity: str, now: float) -> None:
        if identity not in (attempt.user, attempt.identity):
            value = {"identity": identity}
            await self.state.put(IDENTITIES, attempt.user, value, self.memory_seconds, now)
