"""Duo's Auth API v2 from asyncio: signed requests over aiohttp, bounded, classified.

Why not duo_client's own HTTP: duo_client blocks, so each call needs a thread, and
auth_status long-polls until the user answers: every pending push then held a thread
for up to a minute, and 16 pending pushes (the pool) made every other user's Duo login
wait, then fail. Here no call holds a thread. duo_client still does the part that must
match Duo byte for byte: the request signature (`duo_client.client.sign`, signature
version 5, and its canonical JSON body), and its pinned Duo CA bundle is the default
trust store, as with duo_client itself.

Bounds: at most `pool_size` preauth/auth calls at once (a caller that cannot start one
within its timeout gets DuoBusy: time spent queued is never mistaken for a slow Duo),
and at most `max_pending_pushes` auth_status long polls at once, a separate bound, so
waiting pushes never delay a passcode or a new push. Every call has a deadline.

Nothing is retried here, 429 included (duo_client would sleep and resend): a timed-out
`auth` may have reached Duo, and a retry would buzz the phone twice.

Every failure becomes one of these errors, because the factor treats them differently
(see factors/duo.py):
- DuoFailure (DuoTimeout): Duo cannot be reached or answered nonsense: connection
  refused or reset, timeout, TLS or certificate failure, HTTP 5xx, a body that is not
  Duo's JSON. At preauth only, this is the outage `failmode` is about.
- DuoRateLimited: HTTP 429. Duo is up and refuses: never an outage (else whoever can
  make Duo rate-limit a user could turn MFA off for them under `failmode: safe`).
- DuoMisconfigured: any other 4xx: integration key, secret key, signature, clock skew,
  a bad parameter.
- DuoBusy: our own bound is reached.

`api_hostname` may carry a port (`host:8443`): the configuration has no port setting,
and tests or an on-premises relay need one.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import duo_client.client
from yarl import URL

from mfaproxy.config.multifactor import DuoMethodConfig
from mfaproxy.errors import (
    DuoBusy,
    DuoFailure,
    DuoMisconfigured,
    DuoRateLimited,
    DuoTimeout,
)
from mfaproxy.observability.metrics import UPSTREAM_LATENCY, UPSTREAM_UP
from mfaproxy.radius.text import reply_message

# Seconds for one preauth/auth request. A push is bounded by `duo.timeout` instead,
# which the auth_status long polls may use up.
REQUEST_TIMEOUT = 10.0
SIGNATURE_VERSION = 5
HTTP_TOO_MANY_REQUESTS = 429
USER_AGENT = "mfaproxy (Duo Auth API v2)"


def split_hostname(value: str) -> tuple[str, int | None]:
    """`host` or `host:port` (no IPv6 literals: Duo API hosts are DNS names)."""
    host, sep, port = value.rpartition(":")
    if sep and host and port.isdigit() and ":" not in host:
        return host, int(port)
    return value, None


def tls_context(settings: DuoMethodConfig) -> ssl.SSLContext:
    """Verify Duo's certificate and name against `ca_file`, else duo_client's pinned CAs."""
    cafile = (
        str(settings.ca_file)
        if settings.ca_file is not None
        else duo_client.client.DEFAULT_CA_CERTS
    )
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # Duo refuses older versions
    return context


class Signer:
    """Builds a signed request the way duo_client.Client.api_call does (version 5)."""

    def __init__(self, ikey: str, skey: str, host: str):
        self.ikey, self.skey, self.host = ikey, skey, host

    def request(
        self, method: str, path: str, params: Mapping[str, str]
    ) -> tuple[str, dict[str, str], bytes | None]:
        """(path with query, headers, body) for one call."""
        date = email.utils.formatdate()
        if method == "POST":
            body = duo_client.client.Client.canon_json(dict(params))
            signed: dict[Any, Any] = {}
            target = path
        else:
            body = ""
            signed = duo_client.client.normalize_params(dict(params))
            target = path + "?" + urllib.parse.urlencode(signed, doseq=True)
        authorization = duo_client.client.sign(
            self.ikey,
            self.skey,
            method,
            self.host,
            path,
            date,
            SIGNATURE_VERSION,
            signed,
            body=body,
        )
        headers = {"Authorization": authorization, "Date": date, "User-Agent": USER_AGENT}
        if method == "POST":
            headers["Content-Type"] = "application/json"
            return target, headers, body.encode()
        return target, headers, None


class DuoApi:
    def __init__(self, settings: DuoMethodConfig, request_timeout: float = REQUEST_TIMEOUT):
        self.settings = settings
        self.request_timeout = request_timeout
        host, port = split_hostname(settings.api_hostname)
        self._base = f"https://{host}:{port or 443}"
        self._signer = Signer(
            settings.integration_key, settings.secret_key.get_secret_value(), host
        )
        self._tls = tls_context(settings)
        self._calls = asyncio.Semaphore(settings.pool_size)
        self._polls = asyncio.Semaphore(settings.max_pending_pushes)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    # ------------------------------------------------------------------ calls

    async def preauth(
        self, username: str, ipaddr: str | None, verified_push: bool = False
    ) -> Mapping[str, Any]:
        params = {"username": username}
        if ipaddr is not None:
            params["ipaddr"] = ipaddr
        if verified_push:
            params["client_supports_verified_push"] = "1"
        return await self._bounded("preauth", "POST", "/auth/v2/preauth", params)

    async def auth(self, **params: str | None) -> Mapping[str, Any]:
        """One /auth/v2/auth request; None values are left out."""
        kept = {k: v for k, v in params.items() if v is not None}
        return await self._bounded("auth", "POST", "/auth/v2/auth", kept)

    async def auth_status(self, txid: str, timeout: float) -> Mapping[str, Any]:
        """One long poll: answers when the transaction's status changes (or Duo's own
        long-poll limit passes), within `timeout` seconds."""
        async with self._slot(self._polls, "auth_status", self.request_timeout):
            status = await self._request(
                "auth_status", "GET", "/auth/v2/auth_status", {"txid": txid}, timeout
            )
        result = status.get("result")
        return {
            "waiting": result == "waiting",
            "success": result == "allow",
            "status": status.get("status", ""),
            "status_msg": status.get("status_msg", ""),
        }

    async def check(self) -> Mapping[str, Any]:
        """/auth/v2/check: the keys and the signature are valid (`mfaproxy doctor`)."""
        return await self._bounded("check", "GET", "/auth/v2/check", {})

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --------------------------------------------------------------- plumbing

    async def _bounded(
        self, what: str, method: str, path: str, params: Mapping[str, str]
    ) -> Mapping[str, Any]:
        async with self._slot(self._calls, what, self.request_timeout):
            return await self._request(what, method, path, params, self.request_timeout)

    @contextlib.asynccontextmanager
    async def _slot(
        self, bound: asyncio.Semaphore, what: str, timeout: float
    ) -> AsyncIterator[None]:
        if self._closed:
            raise DuoBusy(f"{what}: the Duo client is closed")
        try:
            await asyncio.wait_for(bound.acquire(), timeout)
        except TimeoutError as exc:
            raise DuoBusy(f"{what}: every Duo slot is busy") from exc
        try:
            yield
        finally:
            bound.release()

    def _client(self) -> aiohttp.ClientSession:
        # Created inside the running loop, on first use.
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._tls, limit=0)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _request(
        self, what: str, method: str, path: str, params: Mapping[str, str], timeout: float
    ) -> Mapping[str, Any]:
        target, headers, body = self._signer.request(method, path, params)
        url = URL(self._base + target, encoded=True)
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(timeout):
                async with self._client().request(
                    method, url, headers=headers, data=body
                ) as response:
                    status, raw = response.status, await response.read()
        except TimeoutError as exc:
            self._observe("timeout", started, up=False)
            raise DuoTimeout(f"{what}: no answer in {timeout:.1f}s") from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # Connection refused or reset, TLS and certificate errors, a broken answer.
            self._observe("error", started, up=False)
            raise DuoFailure(f"{what}: {type(exc).__name__}: {reply_message(exc, 200)}") from exc
        return self._parse(what, status, raw, started)

    def _parse(self, what: str, status: int, raw: bytes, started: float) -> Mapping[str, Any]:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        message = data.get("message") if isinstance(data, dict) else None
        detail = f"{what}: HTTP {status} {reply_message(message or '', 120)}".rstrip()
        if status == HTTP_TOO_MANY_REQUESTS:
            self._observe("rate_limited", started, up=True)
            raise DuoRateLimited(detail)
        if 400 <= status < 500:
            self._observe("rejected", started, up=False)
            raise DuoMisconfigured(detail)
        if status != 200:
            self._observe("error", started, up=False)
            raise DuoFailure(detail)
        response = data.get("response") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("stat") != "OK" or not isinstance(response, dict):
            self._observe("error", started, up=False)
            raise DuoFailure(f"{what}: the response is not Duo's JSON")
        self._observe("ok", started, up=True)
        return response

    def _observe(self, result: str, started: float, *, up: bool) -> None:
        elapsed = asyncio.get_running_loop().time() - started
        UPSTREAM_LATENCY.labels(service="duo", result=result).observe(elapsed)
        UPSTREAM_UP.labels(service="duo", server=self.settings.api_hostname).set(1 if up else 0)
