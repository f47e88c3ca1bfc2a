"""Batch POSTs and key GETs on raw keep-alive HTTP/1.1 connections, answers received in place.

A whole-array read moves hundreds of MB through batch answers. aiohttp hands a body over as
bytes objects that its parser cut out of the socket reads and then joins: two copies of every
byte on the event loop thread that zarr's reads also run on. Here the socket reads go straight
into one buffer per answer (``asyncio.BufferedProtocol``), which zarr then uses as it is.

One tile is one GET, where aiohttp's client costs a few hundred microseconds of the loop's time
per request; here a GET is one write and one parse of the head.

A lone GET (a tile: nothing else in flight) keeps idle connections apart from the bulk ones
(batch POSTs, and the GETs of a many-chunk read). A connection that has carried bulk answers
(megabytes back to back) leaves the server's TCP stack with a bulk delivery rate, and
under a pacing congestion control (BBR, the default on this machine) a later lone answer on it
is paced at that rate: after whole-array reads, one tile in about twenty took 3 to 10 ms on
such a connection, its bytes trickling in for 3 to 5 ms after the first, against 2.1 ms for a
tile on a connection that only ever carried lone GETs (p95 of 400 tiles 3.1 to 3.4 ms against
2.4 to 2.6; with batches apart, the same).

Only what the dataset server needs: one request at a time per connection, answers framed by
``Content-Length``. Anything else (a proxy that re-chunks, an unexpected reply) raises
``WireUnsupported`` and the store goes back to aiohttp for good.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
import weakref
from typing import Any, cast
from urllib.parse import quote, urlsplit

import numpy as np

__all__ = ["BufferPool", "WireConnection", "WirePool", "WireUnsupported"]

_HEAD_LIMIT = 64 << 10
#: Status codes and Content-Length are ASCII digits (RFC 9110); str.isdigit() and int() would
#: also take other scripts' digits, superscripts and underscores. Up to 18 digits: no answer
#: is larger, and int() never sees an absurd number.
_DIGITS = re.compile(r"[0-9]{1,18}")


class BufferPool:
    """Receive buffers, reused once every chunk cut from one has been let go (zarr drops them
    after decoding). Fresh memory costs a page fault per 4 KiB on first touch; on a VM that is
    slower than the copy itself (measured here: 0.56 GB/s fresh against 4.9 GB/s warm)."""

    def __init__(self, keep_bytes: int = 64 << 20):
        self.keep_bytes = keep_bytes
        self._free: dict[int, list[np.ndarray[Any, np.dtype[np.uint8]]]] = {}
        self._kept = 0
        self._lock = threading.Lock()  # buffers come back on whichever thread drops them last

    def take(self, length: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
        size = 1 << max(16, (length - 1).bit_length())
        if size > self.keep_bytes:
            return np.empty(length, dtype=np.uint8)
        with self._lock:
            stack = self._free.get(size)
            base = stack.pop() if stack else None
            if base is not None:
                self._kept -= size
        if base is None:
            base = np.empty(size, dtype=np.uint8)  # not zeroed: every byte handed out is written
        view = base[:length]
        weakref.finalize(view, self._give_back, base)
        return view

    def _give_back(self, base: np.ndarray[Any, np.dtype[np.uint8]]) -> None:
        with self._lock:
            if self._kept + base.nbytes <= self.keep_bytes:
                self._free.setdefault(base.nbytes, []).append(base)
                self._kept += base.nbytes

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._kept = 0


class WireUnsupported(Exception):
    """The server's answer is not one this minimal client reads (e.g. chunked)."""


class WireConnection(asyncio.BufferedProtocol):
    def __init__(self, buffers: BufferPool) -> None:
        self.buffers = buffers
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._scratch = bytearray(_HEAD_LIMIT)
        self._head = bytearray()
        self._body: np.ndarray[Any, np.dtype[np.uint8]] | None = None
        self._view: memoryview | None = None
        self._filled = 0
        self._status = 0
        self._keep_alive = True
        self._waiter: asyncio.Future[tuple[int, memoryview]] | None = None

    # asyncio.BufferedProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionResetError(f"connection closed by the server ({exc or 'EOF'})"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._view is not None and self._filled < len(self._view):
            return self._view[self._filled :]
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            if self._view is not None and self._filled < len(self._view):
                self._filled += nbytes
            elif self._waiter is None or self._waiter.done() or self._view is not None:
                raise WireUnsupported("bytes from the server with no request waiting")
            else:
                self._head += self._scratch[:nbytes]
                self._parse_head()
            if self._view is not None and self._filled == len(self._view):
                self._finish()
        except Exception as exc:
            self._fail(exc)
            self.close()

    # ours
    def _parse_head(self) -> None:
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _HEAD_LIMIT:
                raise WireUnsupported("answer headers larger than 64 KiB")
            return
        lines = bytes(self._head[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _DIGITS.fullmatch(parts[1]):
            raise WireUnsupported(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        self._status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers or not _DIGITS.fullmatch(headers.get("content-length", "")):
            raise WireUnsupported("answer not framed by Content-Length")
        self._keep_alive = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        length = int(headers["content-length"])
        rest = self._head[end + 4 :]
        if len(rest) > length:
            raise WireUnsupported("more bytes than Content-Length")
        self._body = self.buffers.take(length)
        self._view = self._body.data
        self._view[: len(rest)] = rest
        self._filled = len(rest)
        self._head = bytearray()

    def _finish(self) -> None:
        assert self._view is not None and self._waiter is not None
        if not self._waiter.done():
            self._waiter.set_result((self._status, self._view))
        self._body = self._view = None
        if not self._keep_alive:
            self.close()

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def post(self, request: bytes) -> tuple[int, memoryview]:
        """Send one request; the status and the body, in a buffer of its own."""
        if self.transport is None or self.closed:
            # The server closed it between connecting and sending (a server restarting): a
            # connection error, which the store retries, not a bug.
            raise ConnectionResetError("connection closed by the server before the request was sent")
        self._waiter = asyncio.get_running_loop().create_future()
        self._head, self._body, self._view, self._filled = bytearray(), None, None, 0
        self.transport.write(request)
        return await self._waiter


class WirePool:
    """Idle keep-alive connections to one server, for one event loop."""

    def __init__(self, url: str, token: str | None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WireUnsupported(f"not an http(s) URL: {url}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~") + (
            f"?{parts.query}" if parts.query else ""
        )
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._head = f" HTTP/1.1\r\nHost: {parts.netloc}\r\n{auth}"
        # Idle connections by the traffic they carried: "bulk" (batch answers, the GETs of a
        # many-chunk read) or "lone" (a lone GET); a request only reuses one of its own kind.
        self._idle: dict[str, list[WireConnection]] = {"lone": [], "bulk": []}
        self.buffers = BufferPool()

    async def post(self, payload: Any, timeout: float) -> tuple[int, memoryview]:
        """A batch request (``payload`` as JSON) to the pool's URL."""
        body = json.dumps(payload).encode()
        head = f"POST {self.path}{self._head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        return await self._send("bulk", head.encode() + body, timeout)

    async def get(
        self, url: str, headers: dict[str, str] | None, timeout: float, *, bulk: bool = False
    ) -> tuple[int, memoryview]:
        """A ``GET`` of ``url`` (on the pool's server, e.g. one key of the store); ``bulk``: part
        of a many-chunk read, on the connections of the batches."""
        parts = urlsplit(url)
        target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~") + (
            f"?{parts.query}" if parts.query else ""
        )
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        kind = "bulk" if bulk else "lone"
        return await self._send(kind, f"GET {target}{self._head}{extra}\r\n".encode(), timeout)

    async def _send(self, kind: str, request: bytes, timeout: float) -> tuple[int, memoryview]:
        idle = self._idle[kind]
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            try:
                return await self._exchange(connection, idle, request, timeout)
            except ConnectionError:
                continue  # the server closed it while idle; a read is safe to send again
        loop = asyncio.get_running_loop()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a cancellation.
        async with asyncio.timeout(timeout):
            _, connection = await loop.create_connection(
                lambda: WireConnection(self.buffers), self.host, self.port, ssl=self.ssl
            )
        return await self._exchange(connection, idle, request, timeout)

    async def _exchange(
        self, connection: WireConnection, idle: list[WireConnection], request: bytes, timeout: float
    ) -> tuple[int, memoryview]:
        try:
            async with asyncio.timeout(timeout):
                answer = await connection.post(request)
        except BaseException:
            connection.close()  # its state is unknown: never reuse it
            raise
        if not connection.closed:
            idle.append(connection)
        return answer

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
            idle.clear()
        self.buffers.clear()
