"""One exception tree for mfaproxy.

Peer faults (a NAS or an upstream server sent something wrong) are separated from our
own faults (bad configuration, a bug) so that callers can decide what to count, what to
log and what to answer without string matching.
"""

from __future__ import annotations


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


class BadMessageAuthenticator(PeerError):
    """Message-Authenticator present but wrong (RFC 3579 section 3.2)."""

    reason = "bad_message_authenticator"


class MissingMessageAuthenticator(PeerError):
    """Message-Authenticator required but absent (BlastRADIUS, CVE-2024-3596)."""

    reason = "missing_message_authenticator"


class BadPassword(PeerError):
    """User-Password cannot be decrypted (RFC 2865 section 5.2 length rules)."""

    reason = "bad_password_attribute"


class UpstreamError(MfaproxyError):
    """An upstream service (directory, OTP server, vendor API) failed to answer."""


class UpstreamUnavailable(UpstreamError):
    """Every configured server of an upstream was unreachable or timed out."""
