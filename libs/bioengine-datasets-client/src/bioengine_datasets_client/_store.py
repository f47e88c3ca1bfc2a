"""``HttpZarrStore``: a read-only zarr v3 store over a BioEngine dataset server.

One aiohttp session per event loop (zarr runs its own loop in a thread), pooled connections,
a concurrency limit, retries with backoff on transient errors (connection errors, 5xx, 429).
A 404 is a missing key (zarr fills the chunk); any other 4xx is raised with the server's
message, so a permission problem never looks like an empty array.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import quote

import aiohttp
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["DatasetAccessError", "HttpZarrStore"]

_RETRY_STATUS = {429, 500, 502, 503, 504}


class DatasetAccessError(PermissionError):
    """The server refused a request (401/403/4xx other than 404); carries its message."""

    def __init__(self, status: int, url: str, message: str):
        super().__init__(f"{status} for {url}: {message}")
        self.status = status


def _range_header(byte_range: ByteRequest | None) -> dict[str, str]:
    if byte_range is None:
        return {}
    if isinstance(byte_range, RangeByteRequest):
        if byte_range.end <= byte_range.start:
            raise ValueError(f"empty byte range {byte_range}")
        return {"Range": f"bytes={byte_range.start}-{byte_range.end - 1}"}
    if isinstance(byte_range, OffsetByteRequest):
        return {"Range": f"bytes={byte_range.offset}-"}
    if isinstance(byte_range, SuffixByteRequest):
        return {"Range": f"bytes=-{byte_range.suffix}"}
    raise TypeError(f"unknown byte range {byte_range!r}")


class HttpZarrStore(Store):
    """Read-only store for ``<base_url>/<key>``, e.g. ``http://host:port/data/<dataset>/image.zarr``.

    ``token`` goes in the ``Authorization`` header, never in the URL.
    """

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        concurrency: int = 32,
        retries: int = 4,
        timeout: float = 60.0,
    ):
        super().__init__(read_only=True)
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.concurrency = concurrency
        self.retries = retries
        self.timeout = timeout
        self._sessions: dict[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, asyncio.Semaphore]] = {}
        self._lock = threading.Lock()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HttpZarrStore) and (self.base_url, self.token) == (
            other.base_url,
            other.token,
        )

    def __repr__(self) -> str:
        return f"HttpZarrStore({self.base_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sessions"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def with_read_only(self, read_only: bool = False) -> HttpZarrStore:
        if not read_only:
            raise ValueError("HttpZarrStore is read-only")
        return self

    def _session(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        with self._lock:
            if loop not in self._sessions or self._sessions[loop][0].closed:
                headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
                connector = aiohttp.TCPConnector(limit=self.concurrency, keepalive_timeout=30)
                session = aiohttp.ClientSession(
                    headers=headers, connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout),
                    read_bufsize=1 << 20,
                )  # fmt: skip
                self._sessions[loop] = (session, asyncio.Semaphore(self.concurrency))
            return self._sessions[loop]

    def _url(self, key: str) -> str:
        return f"{self.base_url}/{quote(key)}" if key else self.base_url

    async def _request(self, url: str, headers: dict[str, str] | None = None) -> bytes | None:
        session, limit = self._session()
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                async with limit, session.get(url, headers=headers) as response:
                    if response.status == 404:
                        return None
                    if response.status == 416:
                        return b""
                    if response.status in _RETRY_STATUS and attempt < self.retries:
                        raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
                    if response.status >= 400:
                        raise DatasetAccessError(
                            response.status, url.split("?")[0], (await response.text())[:500]
                        )
                    return await response.read()
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientResponseError):
                if attempt == self.retries:
                    raise
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        data = await self._request(self._url(key), _range_header(byte_range))
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, rng) for key, rng in key_ranges)))

    async def exists(self, key: str) -> bool:
        session, limit = self._session()
        async with limit, session.head(self._url(key)) as response:
            if response.status >= 400 and response.status != 404:
                raise DatasetAccessError(response.status, self._url(key), response.reason or "")
            return response.status < 400

    async def set(self, key: str, value: Buffer) -> None:
        raise PermissionError("HttpZarrStore is read-only")

    async def delete(self, key: str) -> None:
        raise PermissionError("HttpZarrStore is read-only")

    async def _listing(self, prefix: str) -> list[str]:
        """All keys under ``prefix`` (relative to the store), from the server's ``?list=1``."""
        data = await self._request(self._url(prefix.rstrip("/")) + "?list=1")
        if data is None:
            return []
        return list(json.loads(data)["files"])

    async def list(self) -> AsyncIterator[str]:
        for key in await self._listing(""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        base = prefix.rstrip("/")
        for key in await self._listing(base):
            yield f"{base}/{key}" if base else key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        base = prefix.rstrip("/")
        seen = set()
        for key in await self._listing(base):
            first = key.split("/", 1)[0]
            if first not in seen:
                seen.add(first)
                yield first

    def close(self) -> None:
        super().close()
        for loop, (session, _) in list(self._sessions.items()):
            if not session.closed and not loop.is_closed():
                if loop.is_running():
                    asyncio.run_coroutine_threadsafe(session.close(), loop)
                else:
                    loop.run_until_complete(session.close())
        self._sessions.clear()
