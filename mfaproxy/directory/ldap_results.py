"""What LDAP answers mean: result codes (RFC 4511 appendix A), Active Directory's
sub-codes, and how a server's failure is told apart from a refusal (directory/ldap.py).
The password never reaches an exception message: only class names and codes do."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import ldap
import ldap.dn

from mfaproxy.directory.ldap_pool import TlsFailure, Unreachable

T = TypeVar("T")

# Result codes, RFC 4511 appendix A.
INVALID_CREDENTIALS = 49
# Codes that say the server, not the user, has a problem: try the next server.
# strongerAuthRequired (8) and confidentialityRequired (13) mean TLS is needed: a
# configuration fault, not a wrong password.
SERVER_TROUBLE = frozenset({1, 2, 3, 8, 11, 12, 13, 51, 52, 80})

# Active Directory explains invalidCredentials with "data <hex>" in the diagnostic
# message; the values are Win32 error codes (MS-ERREF section 2.2). An operator acts
# differently on a locked or expired account than on a typo.
AD_REASONS = {
    "525": "no_such_user",
    "52e": "bad_password",
    "530": "logon_hours",
    "531": "workstation_restricted",
    "532": "password_expired",
    "533": "account_disabled",
    "701": "account_expired",
    "773": "must_change_password",
    "775": "account_locked",
}
_AD_DATA = re.compile(r"\bdata ([0-9a-f]{3})\b", re.IGNORECASE)


class RejectError(Exception):
    """The directory answered, and the answer is no."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ServerError(Exception):
    """This server could not answer; the next one is tried."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(reason)
        self.reason = reason
        # An exception class or result-code name: never a message, which may echo input.
        self.error = error


def on_server(work: Callable[[], T]) -> T:
    """`work` against one server, its failures as ServerError (try the next one);
    RejectError (the directory said no) passes through."""
    try:
        return work()
    except Unreachable:
        raise ServerError("unreachable", "SERVER_DOWN") from None
    except TlsFailure:
        raise ServerError("tls_error", "TLS") from None
    except (ldap.TIMEOUT, ldap.TIMELIMIT_EXCEEDED) as exc:
        raise ServerError("timeout", type(exc).__name__) from None
    except ldap.LDAPError as exc:
        raise ServerError("server_error", error_name(exc)) from None


def info(exc: ldap.LDAPError) -> str:
    detail = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return str(detail.get("info") or "")


def user_bind(conn: Any, user_dn: str, secret: bytes) -> None:
    """Bind as the user. ldap.INVALID_CREDENTIALS passes through (the pool keeps the
    connection: a refused bind says nothing about it); other refusals become
    RejectError or, when the server is in trouble, ServerError."""
    try:
        conn.simple_bind_s(user_dn, secret)
    except (ldap.INVALID_CREDENTIALS, ldap.SERVER_DOWN, ldap.TIMEOUT):
        raise
    except ldap.LDAPError as exc:
        detail = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        code = detail.get("result")
        if code in SERVER_TROUBLE:
            raise ServerError("bind_failed", error_name(exc)) from None
        raise RejectError(bind_reject_reason(code, info(exc))) from None


def bind_reject_reason(code: object, message: str) -> str:
    """The reason for a refused user bind, with Active Directory's sub-codes."""
    if code != INVALID_CREDENTIALS:
        return "bind_refused"
    match = _AD_DATA.search(message)
    if match is None:
        return "bad_password"
    return AD_REASONS.get(match.group(1).lower(), "bad_password")


def first_rdn_value(dn: str) -> str:
    """`cn=VPN Users,ou=Groups,...` -> `VPN Users`, unescaped (RFC 4514 section 2.4)."""
    try:
        rdns = ldap.dn.str2dn(dn)
    except ldap.DECODING_ERROR:
        return dn
    if not rdns or not rdns[0]:
        return dn
    value: str = rdns[0][0][1]
    return value


def error_name(exc: BaseException) -> str:
    """The exception class and result code: never its message, which may echo input."""
    detail = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    code = detail.get("result")
    return f"{type(exc).__name__}({code})" if code is not None else type(exc).__name__
