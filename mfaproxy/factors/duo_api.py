"""Duo's Auth API from asyncio: duo_client in a bounded thread pool, failures classified.

duo_client blocks, so each call runs in this client's own pool, bounded twice: a socket
timeout on the duo_client.Auth object and an asyncio.wait_for around the call. A call
that times out keeps its thread until the socket timeout ends it; it is never retried
here (a timed-out `auth` may have reached Duo, and a retry would push twice).

Every way a call can fail becomes one of three errors, because the factor treats them
differently (see factors/duo.py):
- DuoFailure: Duo is unreachable or answered nonsense (connection refused, timeout, TLS
  or certificate failure, HTTP 5xx or 429, a body that is not Duo's JSON).
- DuoMisconfigured: Duo refused the request itself (HTTP 4xx other than 429: integration
  key, secret key, signature, clock skew, a bad parameter).
- DuoBusy: every thread is taken (pushes waiting on their users). A call only starts
  when a thread is free, so time spent queued is never mistaken for a slow Duo.

`api_hostname` may carry a port (`host:8443`): the configuration has no port setting,
and tests or an on-premises relay need one. Without `ca_file`, duo_client's pinned Duo
CA bundle is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import duo_client

from mfaproxy.config.multifactor import DuoMethodConfig
from mfaproxy.errors import DuoBusy, DuoFailure, DuoMisconfigured, DuoTimeout
from mfaproxy.observability.metrics import UPSTREAM_LATENCY, UPSTREAM_UP
from mfaproxy.radius.text import reply_message

# Seconds for one preauth/auth request (socket timeout and overall bound). A push is
# bounded by `duo.timeout` instead, which the auth_status long poll may use up.
REQUEST_TIMEOUT = 10.0


def split_hostname(value: str) -> tuple[str, int | None]:
    """`host` or `host:port` (no IPv6 literals: Duo API hosts are DNS names)."""
    host, sep, port = value.rpartition(":")
    if sep and host and port.isdigit() and ":" not in host:
        return host, int(port)
    return value, None


class DuoApi:
    def __init__(self, settings: DuoMethodConfig, request_timeout: float = REQUEST_TIMEOUT):
        self.settings = settings
        self.request_timeout = request_timeout
        host, port = split_hostname(settings.api_hostname)
        options: dict[str, Any] = {"host": host, "port": port}
        if settings.ca_file is not None:
            options["ca_certs"] = str(settings.ca_file)
        ikey, skey = settings.integration_key, settings.secret_key.get_secret_value()
        self._client = duo_client.Auth(ikey, skey, timeout=request_timeout, **options)
        # auth_status long-polls until the user answers: its socket may wait as long
        # as the whole push, so it gets a client with a longer timeout.
        self._status_client = duo_client.Auth(
            ikey, skey, timeout=settings.timeout + request_timeout, **options
        )
        self._pool = ThreadPoolExecutor(max_workers=settings.pool_size, thread_name_prefix="duo")
        # Threads running a call, including calls nobody waits for any more.
        self._busy = 0
        self._freed = asyncio.Event()

    async def preauth(self, username: str, ipaddr: str | None) -> Mapping[str, Any]:
        call = partial(self._client.preauth, username=username, ipaddr=ipaddr)
        return await self._call("preauth", call, self.request_timeout)

    async def auth(self, **params: Any) -> Mapping[str, Any]:
        """One /auth/v2/auth request (duo_client.Auth.auth keyword arguments)."""
        return await self._call("auth", partial(self._client.auth, **params), self.request_timeout)

    async def auth_status(self, txid: str, timeout: float) -> Mapping[str, Any]:
        call = partial(self._status_client.auth_status, txid)
        return await self._call("auth_status", call, timeout)

    async def close(self) -> None:
        # Threads blocked on Duo end with their socket timeout; do not wait for them.
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _call(self, what: str, call: Callable[[], Any], timeout: float) -> Mapping[str, Any]:
        loop = asyncio.get_running_loop()
        await self._take_thread(what, min(timeout, self.request_timeout))
        started = loop.time()
        try:
            future = loop.run_in_executor(self._pool, call)
        except RuntimeError as exc:  # the pool is shut down
            self._busy -= 1
            raise DuoBusy(f"{what}: the Duo client is closed") from exc
        future.add_done_callback(self._thread_done)
        try:
            # shield: on timeout the call goes on in its thread (it cannot be stopped)
            # and keeps counting as busy until it ends.
            answer = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError as exc:
            self._observe("timeout", started, up=False)
            raise DuoTimeout(f"{what}: no answer in {timeout:.1f}s") from exc
        except RuntimeError as exc:
            # duo_client raises RuntimeError carrying the HTTP status for any non-200
            # and for a body that is not {"stat": "OK", "response": ...}.
            status = getattr(exc, "status", None)
            detail = f"{what}: {reply_message(exc, 200)}"
            if isinstance(status, int) and 400 <= status < 500 and status != 429:
                self._observe("rejected", started, up=False)
                raise DuoMisconfigured(detail) from exc
            self._observe("error", started, up=False)
            raise DuoFailure(detail) from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # Connection refused or reset, socket timeout, TLS and certificate errors.
            self._observe("error", started, up=False)
            raise DuoFailure(f"{what}: {type(exc).__name__}: {reply_message(exc, 200)}") from exc
        if not isinstance(answer, Mapping):
            self._observe("error", started, up=False)
            raise DuoFailure(f"{what}: the response is not an object")
        self._observe("ok", started, up=True)
        return answer

    async def _take_thread(self, what: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._busy >= self.settings.pool_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DuoBusy(f"{what}: all {self.settings.pool_size} Duo threads are busy")
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), remaining)
        self._busy += 1

    def _thread_done(self, future: asyncio.Future[Any]) -> None:
        self._busy -= 1
        self._freed.set()
        if not future.cancelled():
            # Mark the outcome retrieved: a call nobody waits for any more must not
            # be reported as "exception never retrieved"; a waiting caller still gets it.
            future.exception()

    def _observe(self, result: str, started: float, *, up: bool) -> None:
        elapsed = asyncio.get_running_loop().time() - started
        UPSTREAM_LATENCY.labels(service="duo", result=result).observe(elapsed)
        UPSTREAM_UP.labels(service="duo", server=self.settings.api_hostname).set(1 if up else 0)
