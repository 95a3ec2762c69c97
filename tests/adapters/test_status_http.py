"""StatusServer over real TCP connections on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from mfaproxy import __version__
from mfaproxy.adapters.status_http import StatusServer

# A bound on every read, so a regression fails the test instead of hanging it.
IO_BOUND = 10.0


@dataclass
class Readiness:
    ready: bool = False
    reason: str = "starting"
    error: Exception | None = None

    async def __call__(self) -> tuple[bool, str]:
        if self.error is not None:
            raise self.error
        return self.ready, self.reason


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
async def server(readiness: Readiness) -> AsyncIterator[StatusServer]:
    status = StatusServer("127.0.0.1", 0, readiness, read_timeout=IO_BOUND)
    await status.start()
    yield status
    await status.close()


async def exchange(port: int, raw: bytes, host: str = "127.0.0.1") -> bytes:
    """Send raw bytes, then read until the server closes the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await asyncio.wait_for(writer.drain(), IO_BOUND)
        return await asyncio.wait_for(reader.read(), IO_BOUND)
    finally:
        writer.close()


async def read_or_reset(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(), IO_BOUND)
    except ConnectionError:  # reset, or a broken pipe while still sending
        return b""


async def exchange_or_reset(port: int, raw: bytes) -> bytes:
    """Like exchange(), for a server that may slam the door (b"" when it did)."""
    try:
        return await exchange(port, raw)
    except ConnectionError:  # reset, or a broken pipe while still sending
        return b""


def parse(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    version, code, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(code), headers, body)


async def get(port: int, path: str, method: str = "GET", host: str = "127.0.0.1") -> Reply:
    request = f"{method} {path} HTTP/1.1\r\nHost: status\r\nUser-Agent: test\r\n\r\n"
    return parse(await exchange(port, request.encode(), host))


async def assert_still_serving(port: int) -> None:
    reply = await get(port, "/healthz")
    assert (reply.status, reply.body) == (200, b"ok\n")


async def test_metrics_are_prometheus_text(server: StatusServer) -> None:
    reply = await get(server.port, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"] == CONTENT_TYPE_LATEST
    assert reply.headers["connection"] == "close"
    assert int(reply.headers["content-length"]) == len(reply.body)
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    [build] = families["mfaproxy_build_info"].samples
    assert build.labels == {"version": __version__}
    assert "mfaproxy_packets_dropped" in families


async def test_healthz(server: StatusServer) -> None:
    reply = await get(server.port, "/healthz?probe=1")
    assert (reply.status, reply.body) == (200, b"ok\n")
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"


async def test_readyz_follows_the_callback(server: StatusServer, readiness: Readiness) -> None:
    reply = await get(server.port, "/readyz")
    assert (reply.status, reply.body) == (503, b"starting\n")
    readiness.ready = True
    reply = await get(server.port, "/readyz")
    assert (reply.status, reply.body) == (200, b"ok\n")
    readiness.ready, readiness.reason = False, "draining\r\nX-Injected: 1"
    reply = await get(server.port, "/readyz")
    assert (reply.status, reply.body) == (503, b"draining  X-Injected: 1\n")
    assert "x-injected" not in reply.headers


async def test_readyz_is_503_when_the_callback_raises(
    server: StatusServer, readiness: Readiness
) -> None:
    readiness.ready, readiness.error = True, RuntimeError("store unreachable")
    reply = await get(server.port, "/readyz")
    assert (reply.status, reply.body) == (503, b"readiness check failed\n")
    await assert_still_serving(server.port)


async def test_unknown_path_is_404(server: StatusServer) -> None:
    reply = await get(server.port, "/admin")
    assert reply.status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_are_405(server: StatusServer, method: str) -> None:
    reply = await get(server.port, "/metrics", method)
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD"


async def test_head_has_headers_but_no_body(server: StatusServer) -> None:
    reply = await get(server.port, "/healthz", "HEAD")
    assert reply.status == 200
    assert reply.headers["content-length"] == "3"
    assert reply.body == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\xff\xfe garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET /healthz HTTP/1.1 extra\r\n\r\n",
        b"get /healthz HTTP/1.1\r\n\r\n",
        b"GET healthz HTTP/1.1\r\n\r\n",
        b"GET /heal\x7fthz HTTP/1.1\r\n\r\n",
        b"GET /h\xc3\xa9 HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ],
)
async def test_garbage_is_400_and_the_server_keeps_serving(
    server: StatusServer, raw: bytes
) -> None:
    reply = parse(await exchange(server.port, raw))
    assert reply.status == 400
    await assert_still_serving(server.port)


async def test_oversize_head_is_431(server: StatusServer) -> None:
    request = b"GET /healthz HTTP/1.1\r\nX-Padding: " + b"a" * 9000 + b"\r\n\r\n"
    reply = parse(await exchange(server.port, request))
    assert reply.status == 431
    await assert_still_serving(server.port)


async def test_endless_garbage_is_cut_off(server: StatusServer) -> None:
    # A client streaming a megabyte with no end of head: the server stops reading at its
    # limit and closes; the 431 may or may not reach a client that is still sending.
    answer = await exchange_or_reset(server.port, b"G" * 1_000_000)
    assert answer == b"" or parse(answer).status == 431
    await assert_still_serving(server.port)


async def test_client_that_goes_quiet_is_timed_out(readiness: Readiness) -> None:
    status = StatusServer("127.0.0.1", 0, readiness, read_timeout=0.05)
    await status.start()
    try:
        # Half a request, then silence: the server answers 408 and closes by itself.
        reply = parse(await exchange(status.port, b"GET /healthz HTTP/1.1\r\n"))
        assert reply.status == 408
        reader, writer = await asyncio.open_connection("127.0.0.1", status.port)
        writer.close()  # and one that leaves without a word
        assert await asyncio.wait_for(reader.read(), IO_BOUND) == b""
    finally:
        await status.close()


async def test_connections_beyond_the_cap_are_refused(readiness: Readiness) -> None:
    status = StatusServer("127.0.0.1", 0, readiness, read_timeout=IO_BOUND, max_connections=2)
    await status.start()
    try:
        idle = [await asyncio.open_connection("127.0.0.1", status.port) for _ in range(2)]
        # The server accepts in arrival order, so both idle clients hold a slot by the time
        # the third is handled: it is dropped without an answer.
        request = b"GET /healthz HTTP/1.1\r\n\r\n"
        assert await exchange_or_reset(status.port, request) == b""
        for reader, writer in idle:
            writer.close()
            # The server frees the slot before it closes its side, so once we see the
            # close, the slot is free.
            assert await read_or_reset(reader) == b""
        await assert_still_serving(status.port)
    finally:
        await status.close()


async def test_one_host_holding_connections_does_not_lock_the_others_out(
    readiness: Readiness,
) -> None:
    """Attack: a host that can reach the status port opens connections and says
    nothing (each held up to the read timeout, then opened again). With every slot
    taken, the load balancer's /readyz and Prometheus's scrape were refused: the node
    looked down. Each peer address now gets at most `max_per_source` of the slots."""
    status = StatusServer(
        "127.0.0.1", 0, readiness, read_timeout=IO_BOUND, max_connections=4, max_per_source=2
    )
    await status.start()
    try:
        idle = [await asyncio.open_connection("127.0.0.1", status.port) for _ in range(4)]
        # the first two hold this host's share; the others were cut off at once
        assert [await read_or_reset(reader) for reader, _ in idle[2:]] == [b"", b""]
        prober = await asyncio.open_connection(
            "127.0.0.1", status.port, local_addr=("127.0.0.2", 0)
        )
        prober[1].write(b"GET /healthz HTTP/1.1\r\n\r\n")
        reply = parse(await asyncio.wait_for(prober[0].read(), IO_BOUND))
        prober[1].close()
        assert (reply.status, reply.body) == (200, b"ok\n")
        for _, writer in idle:
            writer.close()
        for reader, _ in idle[:2]:
            assert await read_or_reset(reader) == b""  # their slots are free again
        await assert_still_serving(status.port)
    finally:
        await status.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("host", ["::1", "[::1]"])
async def test_ipv6_literal(readiness: Readiness, host: str) -> None:
    status = StatusServer(host, 0, readiness, read_timeout=IO_BOUND)
    await status.start()
    try:
        reply = await get(status.port, "/healthz", host="::1")
        assert (reply.status, reply.body) == (200, b"ok\n")
    finally:
        await status.close()


async def test_port_before_start_and_close_twice(readiness: Readiness) -> None:
    status = StatusServer("127.0.0.1", 0, readiness)
    with pytest.raises(RuntimeError):
        _ = status.port
    await status.start()
    port = status.port
    assert port > 0
    await status.close()
    await status.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_close_cuts_open_connections(readiness: Readiness) -> None:
    status = StatusServer("127.0.0.1", 0, readiness, read_timeout=IO_BOUND)
    await status.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", status.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finished
        await writer.drain()
        await status.close()
        # Without the cut, this read would wait for IO_BOUND and then fail.
        assert await read_or_reset(reader) == b""
    finally:
        writer.close()
