"""Duplicate detection and reply cache (RFC 5080 section 2.2.2). Pure: `now` is passed in.

A NAS retransmits a request it got no answer for, with the same source address and
port, Identifier and Request Authenticator. The first copy is processed; while it is in
flight later copies are ignored; once answered, copies get the same reply bytes from the
cache. A retransmission therefore never repeats a side effect (a push, an SMS, a failure
count). A new Request Authenticator under the same Identifier is a new request.

`ReplayWindow` remembers the Request Authenticators of processed requests for longer
(the challenge lifetime). A NAS never reuses one (RFC 2865 section 3: unpredictable and
unique), so one seen again outside the duplicate window, or from another port or
Identifier, is a captured request played back, and is dropped.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

# (source address, source port, Identifier, Request Authenticator)
RequestKey = tuple[str, int, int, bytes]


class Seen(enum.Enum):
    NEW = "new"
    IN_FLIGHT = "in_flight"
    ANSWERED = "answered"
    REPLAYED = "replayed"  # not a retransmission: the authenticator was used before


@dataclass
class _Entry:
    expires: float
    reply: bytes | None = None
    done: bool = False


@dataclass(frozen=True)
class Lookup:
    seen: Seen
    reply: bytes | None = None


class DuplicateTable:
    """Bounded table of requests in flight and replies recently sent."""

    def __init__(self, reply_ttl: float, in_flight_ttl: float, max_entries: int = 100_000):
        self._reply_ttl = reply_ttl
        # A request still "in flight" after this long is forgotten, so a bug or a hung
        # upstream cannot pin entries forever; it must exceed the longest push wait.
        self._in_flight_ttl = in_flight_ttl
        self._max_entries = max_entries
        self._entries: OrderedDict[RequestKey, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, key: RequestKey, now: float) -> Lookup:
        """Classify a request; a NEW one is recorded as in flight."""
        self.prune(now)
        entry = self._entries.get(key)
        if entry is not None and entry.expires > now:
            if not entry.done:
                return Lookup(Seen.IN_FLIGHT)
            if entry.reply is not None:
                return Lookup(Seen.ANSWERED, entry.reply)
            return Lookup(Seen.IN_FLIGHT)  # finished without an answer: stay silent
        self._entries[key] = _Entry(expires=now + self._in_flight_ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return Lookup(Seen.NEW)

    def finish(self, key: RequestKey, reply: bytes | None, now: float) -> None:
        """Record the reply sent (None: the request was dropped, stay silent on copies)."""
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.done = True
        entry.reply = reply
        entry.expires = now + self._reply_ttl
        self._entries.move_to_end(key)

    def forget(self, key: RequestKey) -> None:
        self._entries.pop(key, None)

    def prune(self, now: float) -> None:
        """Drop expired entries from the oldest end (entries are kept in expiry order
        closely enough: in-flight ones are re-queued when they finish)."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            del self._entries[key]


class ReplayWindow:
    """Request Authenticators seen in the last `ttl` seconds, per scope (the client)."""

    def __init__(self, ttl: float, max_entries: int = 200_000):
        self._ttl = ttl
        self._max_entries = max_entries
        # One ttl for all: insertion order is expiry order.
        self._seen: OrderedDict[tuple[str, bytes], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, scope: str, authenticator: bytes, now: float) -> bool:
        """Record the authenticator; False when it was already seen (a replay)."""
        while self._seen:
            key, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[key]
        if (scope, authenticator) in self._seen:
            return False
        self._seen[(scope, authenticator)] = now + self._ttl
        while len(self._seen) > self._max_entries:
            self._seen.popitem(last=False)
        return True

    def forget(self, scope: str, authenticator: bytes) -> None:
        """A request shed unprocessed: its retransmission is not a replay."""
        self._seen.pop((scope, authenticator), None)
