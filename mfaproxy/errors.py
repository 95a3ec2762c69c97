"""One exception tree for mfaproxy.

Peer faults (a NAS or an upstream server sent something wrong) are separated from our
own faults (bad configuration, a bug) so that callers can decide what to count, what to
log and what to answer without string matching.
"""

from __future__ import annotations

from pathlib import Path

# Process exit codes (README, "Exit codes"): the one table. Only the CLI exits, except
# the daemon's immediate exit on a second SIGTERM/SIGINT.
EXIT_OK = 0
EXIT_INVALID = 1  # the configuration or an input is invalid; radtest: Access-Reject
EXIT_USAGE = 2  # bad command line (argparse's own code)
EXIT_RUNTIME = 3  # could not run: address in use, store or server unreachable; no answer
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a second signal during the drain
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of our output went away (`| head`)


class MfaproxyError(Exception):
    """Base of every error mfaproxy raises on purpose."""


class ConfigError(MfaproxyError):
    """The configuration is invalid; `problems` lists each one with its dotted path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


class PeerError(MfaproxyError):
    """Something a peer sent is unacceptable. `reason` is a short metric label."""

    reason = "malformed"


class MalformedPacket(PeerError):
    """A datagram that does not decode as a RADIUS packet (RFC 2865 section 3)."""

    reason = "malformed"


class UnsupportedCode(PeerError):
    """A packet code this server does not serve (accounting, CoA, replies...)."""

    reason = "unsupported_code"


class TooMuchProxyState(PeerError):
    """More Proxy-State than a reply can echo within 4,096 octets."""

    reason = "proxy_state_too_long"


class ReplyTooLarge(MfaproxyError):
    """The reply to a request would exceed 4,096 octets (RFC 2865 section 3): it is
    dropped, never sent truncated or oversized."""

    reason = "reply_too_large"


class AccountingOnAuthPort(UnsupportedCode):
    """An Accounting-Request sent to an authentication port (FreeRADIUS drops it too)."""

    reason = "accounting_on_auth_port"


class AccessOnAccountingPort(UnsupportedCode):
    """An Access-Request sent to an accounting port (RFC 2866 section 3, port 1813)."""

    reason = "access_on_accounting_port"


class BadRequestAuthenticator(PeerError):
    """An Accounting-Request whose Request Authenticator does not verify (RFC 2866
    section 3): a wrong shared secret, or a forged or altered packet."""

    reason = "bad_request_authenticator"


class BadMessageAuthenticator(PeerError):
    """Message-Authenticator present but wrong (RFC 3579 section 3.2)."""

    reason = "bad_message_authenticator"


class MissingMessageAuthenticator(PeerError):
    """Message-Authenticator required but absent (BlastRADIUS, CVE-2024-3596)."""

    reason = "missing_message_authenticator"


class UnsignedProxyState(MissingMessageAuthenticator):
    """Access-Request with Proxy-State but no Message-Authenticator from a client with
    `limit_proxy_state` (FreeRADIUS semantics): the carrier of the BlastRADIUS attack."""

    reason = "proxy_state_without_message_authenticator"


class BadPassword(PeerError):
    """User-Password cannot be decrypted (RFC 2865 section 5.2 length rules)."""

    reason = "bad_password_attribute"


class Shed(MfaproxyError):
    """Overload: a request refused before it was processed (admission control). No
    answer is sent; the NAS retransmits or fails over. `reason` is the metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(detail or reason)


class UpstreamError(MfaproxyError):
    """An upstream service (directory, OTP server, vendor API) failed to answer."""


class UpstreamUnavailable(UpstreamError):
    """Every configured server of an upstream was unreachable or timed out."""


class UpstreamUnsigned(UpstreamUnavailable):
    """An upstream RADIUS server answered, but without the Message-Authenticator that is
    required of its replies (BlastRADIUS): a configuration mismatch, not an outage."""


# --------------------------------------------------------------------------- stores


class StoreError(MfaproxyError):
    """The user store cannot be used (unknown schema, closed, corrupt)."""


class IdentityCollisionError(StoreError):
    """Stored users the one user-name normaliser would make one: never merged silently.
    `collisions` maps each shared key to the stored names that would share it."""

    def __init__(self, collisions: dict[str, tuple[str, ...]], message: str) -> None:
        super().__init__(message)
        self.collisions = collisions


class KeyFileError(ConfigError):
    """The master key file is unusable (unsafe mode, wrong length, unreadable)."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__([f"secrets key file {path}: {problem}"])


class DecryptionError(MfaproxyError):
    """A sealed record cannot be opened: wrong key, tampered, or moved to another record."""


class UserStoreUnavailable(UpstreamError):
    """The PostgreSQL user store did not answer (down, unreachable, timed out, read-only)."""


class StateStoreUnavailable(UpstreamError):
    """The shared state store did not answer (down, unreachable, timed out, refused)."""


class SpoolUnavailable(UpstreamError):
    """The accounting spool file cannot be written or read (locked too long, disk full,
    I/O error, not a spool): records cannot be taken in, so the NAS is not answered."""


# --------------------------------------------------------------------------- vendors and lookups


class DuoError(MfaproxyError):
    """A Duo call gave no usable answer; the subclass says whose fault it is."""


class DuoFailure(DuoError):
    """Duo could not be reached or answered nonsense (5xx, bad JSON): an outage. Failmode
    applies only when this happens before the user was asked (at preauth)."""


class DuoTimeout(DuoFailure):
    """A call to Duo ran out of time."""


class DuoMisconfigured(DuoError):
    """Duo refused the request itself (HTTP 4xx): credentials, signature, parameters."""


class DuoRateLimited(DuoError):
    """Duo answered HTTP 429: it is up and refuses, so never an outage."""


class DuoBusy(DuoError):
    """Our own bound on concurrent Duo calls is reached, or the client is closed."""


class YubikeyEnrolmentError(MfaproxyError):
    """An operator's enrolment cannot be done (bad OTP, wrong key material, refused)."""


class GeoIpDatabaseError(MfaproxyError):
    """A MaxMind database file cannot be opened or is not a valid database."""


class CountryLookupError(MfaproxyError):
    """A CountryLookup could not answer (unreadable database, wrong IP version)."""
