"""RADIUS numbers: packet codes, attribute types and length limits, in one place.

RFC 2865 section 3 (codes, lengths), section 5 (attribute types), RFC 5997 (Status-Server),
RFC 3579 (EAP-Message, Message-Authenticator), RFC 3162 (NAS-IPv6-Address).
"""

from __future__ import annotations

from typing import Final

ACCESS_REQUEST: Final = 1
ACCESS_ACCEPT: Final = 2
ACCESS_REJECT: Final = 3
ACCESS_CHALLENGE: Final = 11
STATUS_SERVER: Final = 12

# Metric labels and log values (`code=access_request`).
CODE_LABELS: Final = {
    ACCESS_REQUEST: "access_request",
    ACCESS_ACCEPT: "access_accept",
    ACCESS_REJECT: "access_reject",
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
ATTR_REPLY_MESSAGE: Final = 18
ATTR_STATE: Final = 24
ATTR_CALLING_STATION_ID: Final = 31
ATTR_NAS_IDENTIFIER: Final = 32
ATTR_PROXY_STATE: Final = 33
ATTR_EAP_MESSAGE: Final = 79
ATTR_MESSAGE_AUTHENTICATOR: Final = 80
ATTR_NAS_IPV6_ADDRESS: Final = 95
