"""A tiny HTTP/1.1 status server: /metrics for Prometheus, /healthz and /readyz for probes.

Built on asyncio streams so it adds no dependency. It is meant for a scraper and a load
balancer on a management network, but must survive anything else that connects: the
request head is bounded (431 beyond it), a slow or silent client is cut off after a
timeout, the number of open connections is capped (in all, and per peer address, so one
host holding idle connections cannot lock the scraper and the load balancer's
readiness probe out), and every connection is closed after
one response (no keep-alive, so no pipelining or body-framing questions arise). Request
headers are not interpreted at all: nothing here depends on them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from mfaproxy.observability.metrics import REGISTRY

_log = structlog.get_logger(__name__)

# Returns (ready, reason); the reason is shown to the prober when not ready.
Readiness = Callable[[], Awaitable[tuple[bool, str]]]

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 64
MAX_PER_SOURCE = 8
_MAX_REASON = 200
_TEXT = "text/plain; charset=utf-8"
_ALLOWED = ("GET", "HEAD")


class _Response:
    __slots__ = ("body", "content_type", "extra_headers", "status")

    def __init__(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str = _TEXT,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.extra_headers = extra_headers

    def encode(self, *, include_body: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status.value} {self.status.phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.extra_headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        return head + self.body if include_body else head


def _text(status: HTTPStatus, message: str) -> _Response:
    return _Response(status, (message + "\n").encode("utf-8"))


class _BadRequestError(Exception):
    """The request line is not one we can answer."""


def _parse_request_line(head: bytes) -> tuple[str, str]:
    """(method, path without query) from the first line of the request head."""
    line, _, _ = head.partition(b"\r\n")
    try:
        method, target, version = line.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError) as exc:
        raise _BadRequestError from exc
    if not (method.isalpha() and method.isupper()) or not version.startswith("HTTP/1."):
        raise _BadRequestError
    if not target.startswith("/") or not target.isprintable():
        raise _BadRequestError
    path, _, _ = target.partition("?")
    return method, path


def _clean_reason(reason: str) -> str:
    """One short printable line: the reason comes from code, but it goes on the wire."""
    flat = "".join(ch if ch.isprintable() else " " for ch in reason).strip()
    return flat[:_MAX_REASON] or "not ready"


class StatusServer:
    """Serves /metrics, /healthz and /readyz on one TCP address until close().

    `read_timeout` bounds each of: reading the request head, running the readiness check
    (a check that takes longer counts as not ready) and writing the answer.
    """

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Readiness,
        *,
        registry: CollectorRegistry = REGISTRY,
        read_timeout: float = READ_TIMEOUT,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_connections: int = MAX_CONNECTIONS,
        max_per_source: int = MAX_PER_SOURCE,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        # Accept "[::1]" as well as "::1": the config writes IPv6 hosts bracketed.
        self._host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self._requested_port = port
        self._readiness = readiness
        # Refreshes gauges that are read from elsewhere (pending challenges in the
        # state store) so a scrape shows the value at scrape time.
        self._before_scrape = before_scrape
        self._registry = registry
        self._timeout = read_timeout
        self._max_request = max_request_bytes
        self._max_connections = max_connections
        self._max_per_source = max_per_source
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._per_source: Counter[str] = Counter()
        self._routes: dict[str, Callable[[], Awaitable[_Response]]] = {
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }

    @property
    def port(self) -> int:
        """The bound port (the kernel's choice when constructed with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("status server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("status server already started")
        # The stream limit bounds how much of a request head we ever buffer.
        self._server = await asyncio.start_server(
            self._on_connection, self._host, self._requested_port, limit=self._max_request
        )
        _log.info("status http listening", host=self._host, port=self.port)

    async def close(self) -> None:
        """Stop listening and cut every open connection; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        full = len(self._connections) >= self._max_connections
        if task is None or full or self._per_source[source] >= self._max_per_source:
            writer.transport.abort()
            return
        self._connections.add(task)
        self._per_source[source] += 1
        answered = False
        try:
            answered = await self._serve_one(reader, writer)
        except Exception as exc:  # one bad connection must not matter
            _log.debug("status http connection failed", error=repr(exc))
        finally:
            self._connections.discard(task)
            self._per_source[source] -= 1
            if not self._per_source[source]:
                del self._per_source[source]
            if answered:
                writer.close()  # the response is fully handed to the kernel: a clean FIN
            else:
                # Timed out, cancelled or failed: drop it now instead of waiting for a
                # client that may never read what is still buffered.
                writer.transport.abort()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; False when there was nobody left to answer."""
        include_body = True
        try:
            async with asyncio.timeout(self._timeout):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = _parse_request_line(head)
        except asyncio.LimitOverrunError:
            response = _text(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request too large")
        except TimeoutError:
            response = _text(HTTPStatus.REQUEST_TIMEOUT, "request timeout")
        except asyncio.IncompleteReadError:
            return False  # the client went away before finishing its request
        except _BadRequestError:
            response = _text(HTTPStatus.BAD_REQUEST, "bad request")
        else:
            include_body = method != "HEAD"
            response = await self._dispatch(method, path)
        async with asyncio.timeout(self._timeout):
            writer.write(response.encode(include_body=include_body))
            await writer.drain()
        return True

    async def _dispatch(self, method: str, path: str) -> _Response:
        handler = self._routes.get(path)
        if handler is None:
            return _text(HTTPStatus.NOT_FOUND, "not found")
        if method not in _ALLOWED:
            return _Response(
                HTTPStatus.METHOD_NOT_ALLOWED,
                b"method not allowed\n",
                extra_headers=(("Allow", ", ".join(_ALLOWED)),),
            )
        return await handler()

    async def _metrics(self) -> _Response:
        if self._before_scrape is not None:
            try:
                await asyncio.wait_for(self._before_scrape(), self._timeout)
            except Exception as exc:  # a gauge we cannot refresh must not hide the rest
                _log.warning("metrics refresh failed", error=repr(exc))
        return _Response(HTTPStatus.OK, generate_latest(self._registry), CONTENT_TYPE_LATEST)

    async def _healthz(self) -> _Response:
        # Answering at all is the health signal: the event loop is running.
        return _text(HTTPStatus.OK, "ok")

    async def _readyz(self) -> _Response:
        try:
            async with asyncio.timeout(self._timeout):
                ready, reason = await self._readiness()
        except Exception as exc:  # a failing check means "not ready"
            _log.warning("readiness check failed", error=repr(exc))
            return _text(HTTPStatus.SERVICE_UNAVAILABLE, "readiness check failed")
        if ready:
            return _text(HTTPStatus.OK, "ok")
        return _text(HTTPStatus.SERVICE_UNAVAILABLE, _clean_reason(reason))
