"""RADIUS numbers: packet codes, attribute types and length limits, in one place.

RFC 2865 section 3 (codes, lengths), section 5 (attribute types), RFC 2866 (accounting),
RFC 2869 (Gigawords, Event-Timestamp), RFC 5997 (Status-Server), RFC 3579 (EAP-Message,
Message-Authenticator), RFC 3162 (NAS-IPv6-Address), RFC 6911 (Framed-IPv6-Address).
"""

from __future__ import annotations

from typing import Final

ACCESS_REQUEST: Final = 1
ACCESS_ACCEPT: Final = 2
ACCESS_REJECT: Final = 3
ACCOUNTING_REQUEST: Final = 4
ACCOUNTING_RESPONSE: Final = 5
ACCESS_CHALLENGE: Final = 11
STATUS_SERVER: Final = 12

# Metric labels and log values (`code=access_request`).
CODE_LABELS: Final = {
    ACCESS_REQUEST: "access_request",
    ACCESS_ACCEPT: "access_accept",
    ACCESS_REJECT: "access_reject",
    ACCOUNTING_REQUEST: "accounting_request",
    ACCOUNTING_RESPONSE: "accounting_response",
    ACCESS_CHALLENGE: "access_challenge",
    STATUS_SERVER: "status_server",
}
# The names the RFCs and radclient print (`Access-Accept`).
CODE_TITLES: Final = {
    code: "-".join(part.capitalize() for part in label.split("_"))
    for code, label in CODE_LABELS.items()
}

# RFC 2865 section 3: the minimum and maximum Length of a packet.
MIN_LENGTH: Final = 20
MAX_LENGTH: Final = 4096
# RFC 2865 section 5: an attribute's value is at most 253 octets (Length is one octet
# and counts the type and length octets).
MAX_STRING_OCTETS: Final = 253
# Proxy-State echoed in a reply (RFC 2865 section 5.33 copies it unchanged, so a reply
# carries what the request did): a request with more is dropped, so that every reply
# (Reply-Message, State and attributes besides) stays within MAX_LENGTH. A proxy
# chain adds one attribute of a few dozen octets per hop.
MAX_PROXY_STATE_OCTETS: Final = 1024

ATTR_USER_NAME: Final = 1
ATTR_USER_PASSWORD: Final = 2
ATTR_CHAP_PASSWORD: Final = 3
ATTR_NAS_IP_ADDRESS: Final = 4
ATTR_NAS_PORT: Final = 5
ATTR_FRAMED_IP_ADDRESS: Final = 8
ATTR_REPLY_MESSAGE: Final = 18
ATTR_STATE: Final = 24
ATTR_CALLED_STATION_ID: Final = 30
ATTR_CALLING_STATION_ID: Final = 31
ATTR_NAS_IDENTIFIER: Final = 32
ATTR_PROXY_STATE: Final = 33
ATTR_VENDOR_SPECIFIC: Final = 26
# RFC 2866 section 5 (accounting), RFC 2869 section 5.1-5.3 (Gigawords, Event-Timestamp)
ATTR_ACCT_STATUS_TYPE: Final = 40
ATTR_ACCT_DELAY_TIME: Final = 41
ATTR_ACCT_INPUT_OCTETS: Final = 42
ATTR_ACCT_OUTPUT_OCTETS: Final = 43
ATTR_ACCT_SESSION_ID: Final = 44
ATTR_ACCT_AUTHENTIC: Final = 45
ATTR_ACCT_SESSION_TIME: Final = 46
ATTR_ACCT_INPUT_PACKETS: Final = 47
ATTR_ACCT_OUTPUT_PACKETS: Final = 48
ATTR_ACCT_TERMINATE_CAUSE: Final = 49
ATTR_ACCT_MULTI_SESSION_ID: Final = 50
ATTR_ACCT_INPUT_GIGAWORDS: Final = 52
ATTR_ACCT_OUTPUT_GIGAWORDS: Final = 53
ATTR_EVENT_TIMESTAMP: Final = 55
ATTR_TUNNEL_PASSWORD: Final = 69
ATTR_EAP_MESSAGE: Final = 79
ATTR_MESSAGE_AUTHENTICATOR: Final = 80
ATTR_NAS_IPV6_ADDRESS: Final = 95
ATTR_FRAMED_IPV6_ADDRESS: Final = 168
