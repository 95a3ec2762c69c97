"""`mfaproxy radtest`: a small RADIUS client that walks an Access-Challenge.

It sends an Access-Request (with a Message-Authenticator, like the NAS it stands in
for), prints every reply, and answers each Access-Challenge with the next --answer or,
when there is none, with a line typed at the terminal (not echoed) or read from standard
input, sending the State back (RFC 2865 section 5.24). It needs no configuration file.

Exit codes: 0 Access-Accept; 1 Access-Reject, or bad input (an unreadable secret file,
no answer to a challenge); 3 no valid answer from the server (it is down, or the shared
secret is wrong: replies that do not verify are ignored and logged on standard error).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import socket
import sys
from pathlib import Path
from typing import TypeAlias

from mfaproxy.adapters.radius_client import (
    AttributeValue,
    RadiusClient,
    RadiusReply,
    RadiusServer,
)
from mfaproxy.errors import EXIT_INVALID, EXIT_OK, EXIT_RUNTIME, UpstreamUnavailable
from mfaproxy.observability.logging import configure_logging
from mfaproxy.radius.codec import load_dictionary
from mfaproxy.radius.constants import CODE_TITLES

DEFAULT_PORT = 1812

# A string: argparse._SubParsersAction is not subscriptable at run time.
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class InputProblem(Exception):
    """Something radtest needs from the operator is missing or unreadable."""


# --------------------------------------------------------------------------- inputs


def _split_host_port(text: str) -> tuple[str, str]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address -> (host, port text)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"{text!r} is not [ipv6]:port")
        return host, rest[1:]
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""


def _server_address(text: str) -> tuple[str, int]:
    """HOST[:PORT] with HOST an IP or a name, resolved here to one IP address."""
    host, port_text = _split_host_port(text.strip())
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be 1-65535")
    port = int(port_text) if port_text else DEFAULT_PORT
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot resolve {host!r}: {exc}") from exc
    return str(infos[0][4][0]), port


def _secret(args: argparse.Namespace) -> bytes:
    if args.secret is not None:
        text = args.secret
    elif args.secret_file is not None:
        try:
            text = args.secret_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise InputProblem(f"cannot read {args.secret_file}: {exc.strerror}") from exc
    else:
        text = os.environ.get(args.secret_env, "")
    if not text:
        raise InputProblem("the shared secret is empty (or the variable is not set)")
    return str(text).encode("utf-8")


def _read_line(prompt: str) -> str:
    """A line from the terminal without echo, or from standard input when piped."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    line = sys.stdin.readline()
    if not line:
        raise InputProblem(f"no input left for {prompt.strip()!r}")
    return line.rstrip("\r\n")


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    return _read_line(f"Password for {args.user}: ")


def _challenge_prompt(reply: RadiusReply) -> str:
    messages = [_text(v) for v in reply.attributes.get("Reply-Message", ())]
    # The prompt goes to the terminal raw: keep a server's control characters out of it.
    text = "".join(ch if ch.isprintable() else " " for ch in " ".join(messages)).strip()
    return f"{(text or 'Answer').rstrip(': ')}: "


# --------------------------------------------------------------------------- output


def _text(value: AttributeValue) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _shown(value: AttributeValue) -> str:
    """Text in quotes when it is printable (Class is octets, but nearly always text,
    as radclient shows it); hex otherwise."""
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + value.hex()
        if not text or not text.isprintable():
            return "0x" + value.hex()
        return json.dumps(text, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)  # quoted, control characters escaped


def _print_reply(reply: RadiusReply) -> None:
    name = CODE_TITLES.get(reply.code, f"code {reply.code}")
    print(f"Received {name} from {reply.server.label}")
    for attribute, values in reply.attributes.items():
        for value in values:
            print(f"    {attribute} = {_shown(value)}")


# --------------------------------------------------------------------------- exchange


def _walk(client: RadiusClient, args: argparse.Namespace, password: str) -> int:
    """Send the request, then one answer per Access-Challenge, until a final reply."""
    attributes: dict[str, AttributeValue] = {"User-Name": args.user}
    if args.nas_identifier:
        attributes["NAS-Identifier"] = args.nas_identifier
    if args.calling_station_id:
        attributes["Calling-Station-Id"] = args.calling_station_id
    answers = list(args.answer)
    value, state, what = password, None, f"user {args.user}"
    server = client.servers[0].label
    while True:
        print(f"Sending Access-Request ({what}) to {server}")
        reply = asyncio.run(client.access_request(attributes, password=value, state=state))
        _print_reply(reply)
        if not reply.challenged:
            return EXIT_OK if reply.accepted else EXIT_INVALID
        value = answers.pop(0) if answers else _read_line(_challenge_prompt(reply))
        state, what = reply.state, "answer to the challenge"


def cmd_radtest(args: argparse.Namespace) -> int:
    # Replies that fail verification are logged as warnings: the clue to a wrong secret.
    configure_logging("console", "warning")
    try:
        host, port = args.server
        server = RadiusServer(host, port, _secret(args))
        client = RadiusClient(
            [server],
            load_dictionary(),
            timeout=args.timeout,
            retries=args.retries,
            require_message_authenticator=args.require_message_authenticator,
            setting="--no-require-message-authenticator",
        )
        return _walk(client, args, _password(args))
    except InputProblem as exc:
        print(f"mfaproxy radtest: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except ValueError as exc:  # the request cannot be encoded (a value too long...)
        print(f"mfaproxy radtest: cannot send: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except UpstreamUnavailable as exc:
        print(
            f"mfaproxy radtest: {exc}; check the address, port and shared secret",
            file=sys.stderr,
        )
        return EXIT_RUNTIME


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def register(sub: SubParsers) -> None:
    parser = sub.add_parser(
        "radtest",
        help="send an Access-Request and walk its challenges",
        description="Send an Access-Request, print each reply and answer Access-Challenges. "
        "Exit 0 on Access-Accept, 1 on Access-Reject, 3 when no valid answer comes back.",
    )
    parser.add_argument("--server", required=True, type=_server_address, metavar="HOST[:PORT]")
    secret = parser.add_mutually_exclusive_group(required=True)
    secret.add_argument("--secret", help="shared secret (visible in the process list)")
    secret.add_argument("--secret-file", type=Path, help="read the shared secret from a file")
    secret.add_argument("--secret-env", metavar="NAME", help="read it from this variable")
    parser.add_argument("--user", required=True, help="User-Name")
    parser.add_argument("--password", help="default: read from the terminal or stdin")
    parser.add_argument(
        "--answer", action="append", default=[], help="answer to a challenge (repeatable, in order)"
    )
    parser.add_argument("--nas-identifier", default="mfaproxy-radtest", help="NAS-Identifier")
    parser.add_argument("--calling-station-id", help="Calling-Station-Id")
    parser.add_argument("--timeout", type=_positive, default=3.0, help="seconds per try (3)")
    parser.add_argument("--retries", type=_not_negative, default=2, help="retransmissions (2)")
    parser.add_argument(
        "--no-require-message-authenticator",
        dest="require_message_authenticator",
        action="store_false",
        help="accept replies without a Message-Authenticator (old servers)",
    )
    parser.set_defaults(func=cmd_radtest)
