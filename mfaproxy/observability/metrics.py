"""Every Prometheus metric mfaproxy exports, declared in one place.

Names are prefixed `mfaproxy_`. Labels are bounded sets (client names from the config,
reasons and outcomes from code); never a user name, address or anything a packet
controls, so a hostile NAS cannot blow up the series count.
"""

from __future__ import annotations

from typing import Any, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, Info

from mfaproxy import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

_M = TypeVar("_M")


class _CachedChildren:
    """`labels()` remembers the child of each label set it returned. prometheus_client
    validates the values and takes a lock on every call (a few microseconds, several
    times per request); the label sets are bounded (see above), so is this cache."""

    _cached: dict[tuple[object, ...], Any]

    def labels(self: _M, *values: object, **named: object) -> _M:
        cache: dict[tuple[object, ...], Any] = self.__dict__.setdefault("_cached", {})
        key = values or tuple(named.items())
        found = cache.get(key)
        if found is None:
            found = cache[key] = super().labels(*values, **named)  # type: ignore[misc]
        return found  # type: ignore[no-any-return]


class Counter(_CachedChildren, prometheus_client.Counter):
    pass


class Gauge(_CachedChildren, prometheus_client.Gauge):
    pass


class Histogram(_CachedChildren, prometheus_client.Histogram):
    pass


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

BUILD_INFO = Info("mfaproxy_build", "Version of the running mfaproxy.", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})

REQUESTS = Counter(
    "mfaproxy_requests",
    "RADIUS packets accepted for processing, by client and packet code.",
    ["client", "code"],
    registry=REGISTRY,
)
DECISIONS = Counter(
    "mfaproxy_decisions",
    "Answers sent, by outcome (accept, reject, challenge) and reason.",
    ["outcome", "reason"],
    registry=REGISTRY,
)
PACKETS_DROPPED = Counter(
    "mfaproxy_packets_dropped",
    "Datagrams dropped without an answer, by reason.",
    ["reason"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "mfaproxy_duplicates",
    "Retransmissions detected (RFC 5080): answered_from_cache, ignored_in_flight, "
    "taken_over (its instance died: processed here), held_session_continued (a held "
    "check of a dead instance continued here).",
    ["action"],
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "mfaproxy_request_duration_seconds",
    "Time from datagram received to answer sent.",
    ["code"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_LATENCY = Histogram(
    "mfaproxy_upstream_duration_seconds",
    "Time spent waiting on an upstream service, by service and result.",
    ["service", "result"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_UP = Gauge(
    "mfaproxy_upstream_up",
    "1 when the last exchange with an upstream server succeeded, 0 when it failed.",
    ["service", "server"],
    registry=REGISTRY,
)
SECOND_FACTOR_ATTEMPTS = Counter(
    "mfaproxy_second_factor_attempts",
    "Second-factor attempts by method and result.",
    ["method", "result"],
    registry=REGISTRY,
)
DUO_PUSHES = Counter(
    "mfaproxy_duo_pushes",
    "Duo pushes and phone calls: sent, limited (push fatigue cap), refused_pending (one "
    "already waits on the user), continued (a retransmission on another node took over), "
    "approved, denied, timeout, error.",
    ["result"],
    registry=REGISTRY,
)
CHALLENGES_PENDING = Gauge(
    "mfaproxy_challenges_pending",
    "Access-Challenge sessions waiting for an answer.",
    registry=REGISTRY,
)
CHALLENGES_RETIRED = Counter(
    "mfaproxy_challenges_retired_total",
    "Open challenge sessions retired because their user opened more than"
    " multifactor.challenge.max_open_per_user.",
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "mfaproxy_requests_in_flight",
    "Requests being processed now.",
    registry=REGISTRY,
)
STORE_FAILMODE = Counter(
    "mfaproxy_store_failmode",
    "Requests answered by the store failmode because a state or user store was down.",
    ["action"],
    registry=REGISTRY,
)
PASSWORD_THROTTLE = Counter(
    "mfaproxy_password_throttle",
    "Password guessing: failures counted and attempts refused (no password checked), by"
    " counter scope (user, identity, known_source, source) and event (failure, refused).",
    ["scope", "event"],
    registry=REGISTRY,
)
STATE_REJECTED = Counter(
    "mfaproxy_state_rejected",
    "Values read back from the state store that failed authentication (edited, moved,"
    " forged or replayed), by namespace and reason (malformed, unauthentic, expired).",
    ["namespace", "reason"],
    registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "mfaproxy_config_reloads",
    "Configuration reloads by result.",
    ["result"],
    registry=REGISTRY,
)
CONFIG_LAST_RELOAD = Gauge(
    "mfaproxy_config_last_reload_success_timestamp_seconds",
    "Unix time of the last successful configuration load.",
    registry=REGISTRY,
)
ACCOUNTING_RECORDS = Counter(
    "mfaproxy_accounting_records",
    "Accounting-Requests accepted for processing (retransmissions excluded), by client and"
    " Acct-Status-Type (start, stop, interim_update, accounting_on, accounting_off, failed,"
    " other).",
    ["client", "status_type"],
    registry=REGISTRY,
)
ACCOUNTING_OUTCOMES = Counter(
    "mfaproxy_accounting_outcomes",
    "What became of each accounting record, by Acct-Status-Type and outcome: recorded (logged,"
    " no upstream), forwarded (an upstream acknowledged it), upstream_unavailable (no upstream"
    " answered, NAS not answered), spool_full / spool_unavailable (answer: at_once, not taken"
    " in, NAS not answered), expired (spooled, never acknowledged within max_age_seconds).",
    ["status_type", "outcome"],
    registry=REGISTRY,
)
ACCOUNTING_FORWARDS_PENDING = Gauge(
    "mfaproxy_accounting_forwards_pending",
    "Accounting records this process is forwarding from the spool now (answer: at_once).",
    registry=REGISTRY,
)
ACCOUNTING_SPOOLED = Counter(
    "mfaproxy_accounting_spooled",
    "Accounting records this process wrote to the spool before answering (answer: at_once).",
    registry=REGISTRY,
)
ACCOUNTING_SPOOL_FULL = Counter(
    "mfaproxy_accounting_spool_full",
    "Accounting records refused because the spool held max_records: the NAS was not"
    " answered (it retransmits or fails over).",
    registry=REGISTRY,
)
ACCOUNTING_SPOOL_RETRIES = Counter(
    "mfaproxy_accounting_spool_retries",
    "Spooled records given back for a later try because no upstream acknowledged them.",
    registry=REGISTRY,
)
ACCOUNTING_SPOOL_DISCARDED = Counter(
    "mfaproxy_accounting_spool_discarded",
    "Spooled records deleted without being forwarded, by reason: expired (older than"
    " max_age_seconds), unauthentic (a row that does not open: edited, moved or forged),"
    " malformed (not a row mfaproxy wrote).",
    ["reason"],
    registry=REGISTRY,
)
ACCOUNTING_SPOOL_PENDING = Gauge(
    "mfaproxy_accounting_spool_pending",
    "Accounting records waiting in the spool (the whole file, shared by the workers).",
    registry=REGISTRY,
)
ACCOUNTING_SPOOL_OLDEST = Gauge(
    "mfaproxy_accounting_spool_oldest_seconds",
    "Age of the oldest record waiting in the spool, 0 when it is empty.",
    registry=REGISTRY,
)

# --------------------------------------------------------------------------- admission

REQUESTS_SHED = Counter(
    "mfaproxy_requests_shed",
    "Requests refused unprocessed under overload, by where and why: intake_full (the"
    " intake queue was full), intake_wait (waited past server.max_queue_wait), and"
    " <pool>_full / <pool>_wait for the hash, ldap and user_store pools.",
    ["reason"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "mfaproxy_queue_wait_seconds",
    "Time from datagram received to the start of its processing, by round.",
    ["round"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
INTAKE_DEPTH = Gauge(
    "mfaproxy_intake_queue_depth",
    "Datagrams waiting for a worker.",
    registry=REGISTRY,
)
POOL_BUSY = Gauge(
    "mfaproxy_pool_busy_threads",
    "Threads of a bounded pool running a call now.",
    ["pool"],
    registry=REGISTRY,
)
POOL_WAITING = Gauge(
    "mfaproxy_pool_waiting",
    "Calls waiting for a thread of a bounded pool.",
    ["pool"],
    registry=REGISTRY,
)
RECEIVE_BUFFER_DROPS = Counter(
    "mfaproxy_receive_buffer_drops",
    "Datagrams the kernel dropped because a listening socket's receive buffer was full"
    " (from /proc/net/udp): load the daemon never saw.",
    registry=REGISTRY,
)
REPLIES_DELAYED = Gauge(
    "mfaproxy_replies_delayed",
    "Access-Rejects computed and waiting for server.reject_delay to pass.",
    registry=REGISTRY,
)

TRUSTED_RECONNECTS = Counter(
    "mfaproxy_trusted_reconnects",
    "Trusted reconnects: trusted (second factor skipped), recorded (a window started),"
    " revoked (a user's windows ended), no_station (no Calling-Station-Id to trust).",
    ["result"],
    registry=REGISTRY,
)
