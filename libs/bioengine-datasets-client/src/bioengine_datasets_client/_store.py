"""``HttpZarrStore``: a read-only zarr v3 store over a BioEngine dataset server.

One aiohttp session per event loop (zarr runs its own loop in a thread), pooled connections,
a concurrency limit. A refused, reset or dropped connection and a 5xx answer are retried for
``retry_for`` seconds (15 by default) with growing pauses, so an open array keeps working while
the dataset server restarts (it comes back on the same URL); after that the read fails with
``DatasetUnavailableError``, naming the URL and how long it tried. Answers 4xx are never retried,
nor timeouts (the request already waited ``timeout``). A 404 is a missing key (zarr fills the chunk); any other 4xx is raised with the server's
message, so a permission problem never looks like an empty array. (The dataset server answers
a dataset that does not exist exactly like one the token may not read: 401 without a token or
with a rejected one, 403 with a valid one; never 404.)

Close the store when done: ``store.close()``, ``with store:`` or ``async with store:``. Each
closes the HTTP sessions the store opened on every event loop it was used on.

Reads coalesce adaptively: a ``get`` goes out at once while fewer than ``pipelines`` requests
are in flight; the ones that arrive meanwhile wait and leave together as one batch request
(``POST`` to the store URL, answered by one file-system pass and ``sendfile`` on the server,
received in place on raw connections, see ``_wire``; the format is in :mod:`.batch`). A lone
read (one tile) is a plain ``GET``; a whole-array read pays the per-request cost of HTTP once
per batch instead of once per chunk. A server without the batch endpoint gets plain ``GET``s.

Sequential reads read ahead (see ``_readahead``): zarr's default ``async.concurrency`` of 10
chunks per read would otherwise leave the decoder waiting on round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from ._readahead import ReadAhead
from ._wire import WirePool, WireUnsupported
from .batch import batch_request, split_answer

__all__ = ["READ_AHEAD_BYTES", "RETRY_FOR", "DatasetAccessError", "DatasetUnavailableError", "HttpZarrStore"]

logger = logging.getLogger("bioengine_datasets_client")

#: Default of ``HttpZarrStore(retry_for=...)``: seconds a failing request is retried. A new
#: datasets-svc process answered on its port 2.7 to 6 s after it was started on a loaded 2-core
#: machine (Python imports); a supervisor adds its restart delay (1 s for bioengine-worker).
RETRY_FOR = 15.0
_FIRST_PAUSE = 0.1  # then doubling...
_MAX_PAUSE = 1.0  # ... up to this, so a server that is back is noticed within a second
#: Answers that mean "not now" (a proxy in front of a restarting server, or the server out of
#: file descriptors). Never a 4xx: the server has answered about this request.
_RETRY_STATUS = {500, 502, 503, 504}
#: At most this many bytes of chunks read ahead and not yet asked for, per store and event loop.
READ_AHEAD_BYTES = 64 << 20


class DatasetAccessError(PermissionError):
    """The server refused a request (401/403/4xx other than 404); carries its message and
    ``status``. For a whole dataset: 401 without a token or with one the Hypha server rejected,
    403 when the dataset does not exist or this token may not read it (the server does not
    say which, so that private dataset ids cannot be discovered)."""

    def __init__(self, status: int, url: str, message: str):
        super().__init__(f"{status} for {url}: {message}")
        self.status = status


class DatasetUnavailableError(ConnectionError):
    """The dataset server stayed unreachable (or kept answering 5xx) for the whole retry window
    (``retry_for`` seconds after the first failure). ``url``, ``attempts``, ``seconds`` (from
    the first attempt to the last failure) and ``status`` (the last 5xx, or None for a
    connection error) say what happened."""

    def __init__(
        self, url: str, problem: str, attempts: int, seconds: float, retry_for: float, status: int | None
    ):
        super().__init__(
            f"{url}: {problem}; tried {attempts} time{'s' if attempts != 1 else ''} over {seconds:.1f} s "
            f"(retry_for={retry_for:g} s)"
        )
        self.url, self.attempts, self.seconds, self.status = url, attempts, seconds, status


def _transient(exc: BaseException) -> bool:
    """A failure worth another try: the connection was refused, reset or dropped before the
    whole answer arrived (a server restarting). Not a timeout, not a TLS or certificate error."""
    if isinstance(exc, (TimeoutError, ssl.SSLError, aiohttp.ClientSSLError)):
        return False
    return isinstance(exc, (OSError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))


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
    raise TypeError(f"Unexpected byte_range, got {byte_range!r}")  # zarr's own wording


def _range_spec(byte_range: ByteRequest | None) -> str | None:
    return _range_header(byte_range).get("Range")


class _ReadOnly(PermissionError, ValueError):
    """Writing to an ``HttpZarrStore``: a ``PermissionError``, and the ``ValueError`` that zarr's
    read-only stores raise, with zarr's message."""

    def __init__(self) -> None:
        super().__init__(
            "HttpZarrStore is read-only: store was opened in read-only mode and does not support writing"
        )


class _NoWriter(NotImplementedError, ValueError):
    """``with_read_only(False)``: zarr's answer for a store that has no writable copy."""


@dataclass
class _Wanted:
    key: str
    byte_range: ByteRequest | None
    prototype: BufferPrototype
    future: asyncio.Future[Buffer | None]


@dataclass
class _LoopState:
    """Per event loop: the session, the request limit and the batching queue."""

    session: aiohttp.ClientSession
    limit: asyncio.Semaphore
    pending: deque[_Wanted] = field(default_factory=deque)  # asked for by zarr
    speculative: deque[_Wanted] = field(default_factory=deque)  # read ahead (sent after ``pending``)
    ahead: ReadAhead | None = None
    draining: int = 0  # drain tasks alive
    sending: int = 0  # drain tasks with a request in flight
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    wire: WirePool | None = None  # raw connections for batch answers (see _wire)


def _settle(
    future: asyncio.Future[Buffer | None], result: Buffer | None = None, error: BaseException | None = None
) -> None:
    if future.done():  # the caller was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _text(body: bytes | memoryview) -> str:
    """The server's error message: the ``error`` of a JSON answer, else the start of the body."""
    head = bytes(body[:2000])
    try:
        error = json.loads(head).get("error")
    except (ValueError, AttributeError):
        error = None
    return error if isinstance(error, str) else head[:500].decode(errors="replace")


def _retrieved(future: asyncio.Future[Buffer | None]) -> None:
    """Mark a read-ahead's failure as seen (the read that asks for the key fetches it again)."""
    if not future.cancelled():
        future.exception()


async def _close_state(state: _LoopState) -> None:
    """Close what one event loop's state holds (run it on that loop)."""
    if state.wire is not None:
        state.wire.close()
    await state.session.close()


class HttpZarrStore(Store):
    """Read-only store for ``<base_url>/<key>``, e.g. ``http://host:port/data/<dataset>/image.zarr``.

    ``token`` goes in the ``Authorization`` header, never in the URL. ``batch=False`` turns
    coalescing off (one ``GET`` per key); ``pipelines`` is how many requests run before reads
    start to queue, ``max_batch`` the most keys in one batch. ``read_ahead``: the most chunks
    fetched before zarr asks for them once it reads chunk after chunk in order (0: never; at
    most ``READ_AHEAD_BYTES`` held per event loop). ``retry_for``: seconds a request
    that failed on a refused, reset or dropped connection or a 5xx answer is tried again
    (pauses from 0.1 s doubling to 1 s; 0: never), then ``DatasetUnavailableError``. ``timeout``:
    seconds one attempt may take (a timeout is not retried). ``read_only`` is there for zarr's
    ``Store.open(read_only=...)``: only True. Writing raises an error that is both a
    ``PermissionError`` and zarr's read-only ``ValueError``. zarr's own store test suite runs
    against it (services/datasets-svc/tests/test_zarr_store_suite.py).
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
        retry_for: float = RETRY_FOR,
        timeout: float = 60.0,
        batch: bool = True,
        pipelines: int = 2,
        max_batch: int = 64,
        read_ahead: int = 32,
        read_only: bool = True,
    ):
        if not read_only:
            raise ValueError("HttpZarrStore is read-only: it cannot be opened with read_only=False")
        super().__init__(read_only=True)
        if pipelines < 1 or max_batch < 1 or concurrency < 1:
            raise ValueError("concurrency, pipelines and max_batch must be at least 1")
        if read_ahead < 0:
            raise ValueError(f"read_ahead is a number of chunks >= 0, not {read_ahead!r}")
        if not 0 <= retry_for < float("inf"):
            raise ValueError(f"retry_for must be a finite number of seconds >= 0, not {retry_for!r}")
        if token is not None and any(ord(c) < 32 or ord(c) == 127 for c in token):
            raise ValueError("the token holds control characters (a line break copied with it?)")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.concurrency = concurrency
        self.retry_for = float(retry_for)
        self._warned_at = float("-inf")  # last "not reachable" warning, so an outage logs once
        self.timeout = timeout
        self.batch = batch
        self.pipelines = pipelines
        self.max_batch = max_batch
        self.read_ahead = read_ahead
        self._wire = True  # batch answers on raw connections, until a server's answer says no
        self._sessions: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._closing: set[asyncio.Task[None]] = set()
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
        state["_sessions"], state["_closing"], state["_lock"] = {}, set(), None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def with_read_only(self, read_only: bool = False) -> HttpZarrStore:
        if not read_only:
            raise _NoWriter(
                f"with_read_only is not implemented for the {type(self)} store type: it is read-only"
            )
        return self

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._lock:
            if loop not in self._sessions or self._sessions[loop].session.closed:
                headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
                connector = aiohttp.TCPConnector(limit=self.concurrency, keepalive_timeout=30)
                session = aiohttp.ClientSession(
                    headers=headers, connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout),
                    read_bufsize=1 << 20,
                )  # fmt: skip
                state = _LoopState(session, asyncio.Semaphore(self.concurrency))
                if self.read_ahead:
                    state.ahead = ReadAhead(self.read_ahead, READ_AHEAD_BYTES)
                self._sessions[loop] = state
            return self._sessions[loop]

    def _url(self, key: str) -> str:
        return f"{self.base_url}/{quote(key)}" if key else self.base_url

    async def _once(
        self,
        state: _LoopState,
        method: str,
        url: str,
        headers: dict[str, str] | None,
        batch: dict[str, Any] | None,
        bulk: bool,
    ) -> tuple[int, bytes | memoryview]:
        if self._wire and (batch is not None or method == "GET"):
            try:
                if state.wire is None:
                    state.wire = WirePool(self.base_url, self.token)
                if batch is not None:
                    return await state.wire.post(batch, self.timeout)
                return await state.wire.get(url, headers, self.timeout, bulk=bulk)
            except WireUnsupported:
                self._wire = False  # e.g. a proxy that re-chunks answers: aiohttp from now on
        if batch is None:
            request = state.session.request(method, url, headers=headers)
        else:
            request = state.session.post(url, json=batch)
        async with request as response:
            return response.status, await response.read()

    async def _fetch(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        batch: dict[str, Any] | None = None,
        method: str = "GET",
        bulk: bool = False,
    ) -> tuple[int, bytes | memoryview]:
        """Status and body of one request (with ``batch``, a batch POST of that body, see
        :mod:`.batch`; ``bulk``: a GET that is part of a many-chunk read, sent on the batches'
        connections, see ``_wire``). The one place that retries: a transient failure (see
        ``_transient``) or a 5xx answer is tried again with growing pauses until ``retry_for``
        seconds have passed since the first failure; then ``DatasetUnavailableError``. Any
        other answer, 4xx included, is returned at once."""
        state = self._state()
        method = "POST" if batch is not None else method
        started = time.monotonic()
        first_failure: float | None = None
        pause = _FIRST_PAUSE
        attempts = 0
        while True:
            attempts += 1
            error: BaseException | None = None
            status: int | None = None
            try:
                async with state.limit:
                    status, body = await self._once(state, method, url, headers, batch, bulk)
            except Exception as exc:
                if not _transient(exc):
                    raise
                error, problem = exc, f"{type(exc).__name__}: {exc}"
            else:
                if status not in _RETRY_STATUS:
                    if first_failure is not None:
                        logger.info(
                            "%s %s answered after %d attempts over %.1f s",
                            method, url, attempts, time.monotonic() - started,
                        )  # fmt: skip
                    return status, body
                problem = f"HTTP {status}: {_text(body)}"
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
                if self.retry_for > 0 and now - self._warned_at > self.retry_for:
                    self._warned_at = now
                    logger.warning(
                        "%s %s failed (%s); retrying for up to %g s", method, url, problem, self.retry_for
                    )
            remaining = first_failure + self.retry_for - now
            if remaining <= 0:
                raise DatasetUnavailableError(
                    f"{method} {url}", problem, attempts, now - started, self.retry_for, status
                ) from error
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, _MAX_PAUSE)

    async def _request(
        self, url: str, headers: dict[str, str] | None = None, bulk: bool = False
    ) -> bytes | memoryview | None:
        status, body = await self._fetch(url, headers, bulk=bulk)
        if status == 404:
            return None
        if status == 416:
            return b""
        if status >= 400:
            raise DatasetAccessError(status, url.split("?")[0], _text(body))
        return body

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        headers = _range_header(byte_range)  # bad ranges fail here, in the caller
        state = self._state()
        ahead = state.ahead if byte_range is None else None
        if ahead is not None:
            early = ahead.take(key)
            for next_key in ahead.plan(key):
                self._fetch_ahead(state, ahead, next_key, prototype)
            if early is not None:
                await asyncio.wait((early,))  # its failure is not ours: then ask again below
                if not early.cancelled() and early.exception() is None:
                    result: Buffer | None = early.result()
                    if result is not None:
                        ahead.seen(len(result))
                    return result
        if self.batch and (state.draining or state.pending or state.speculative):
            # Requests in flight: queued, and the reads that arrive together leave together
            # (see _drain).
            result = await self._queue(state, state.pending, key, byte_range, prototype)
        else:
            # One GET at once: without batching, or with nothing in flight (a lone tile, or the
            # first read of many), without the queue's task and its turn of the event loop, so
            # the batch path is never slower than one GET per key.
            with self._lone_get(state) if self.batch else contextlib.nullcontext():
                data = await self._request(self._url(key), headers)
            result = None if data is None else prototype.buffer.from_bytes(data)
        if ahead is not None and result is not None:
            if key.endswith(("zarr.json", ".zarray", ".zmetadata")):
                ahead.learn(key, result.to_bytes())
            else:
                ahead.seen(len(result))
        return result

    def _fetch_ahead(self, state: _LoopState, ahead: ReadAhead, key: str, prototype: BufferPrototype) -> None:
        """Start fetching ``key`` before it is asked for: queued for a batch, or its own GET."""
        if self.batch:
            self._queue(state, state.speculative, key, None, prototype, ahead)
            return
        future: asyncio.Future[Buffer | None] = asyncio.get_running_loop().create_future()
        ahead.hold(key, future)
        future.add_done_callback(_retrieved)
        task = asyncio.create_task(self._send_one(_Wanted(key, None, prototype, future)))
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    def _queue(
        self,
        state: _LoopState,
        queue: deque[_Wanted],
        key: str,
        byte_range: ByteRequest | None,
        prototype: BufferPrototype,
        ahead: ReadAhead | None = None,
    ) -> asyncio.Future[Buffer | None]:
        """Queue one read and make sure a drain task will send it."""
        future: asyncio.Future[Buffer | None] = asyncio.get_running_loop().create_future()
        if ahead is not None:  # read ahead: nobody may ever await it
            ahead.hold(key, future)
            future.add_done_callback(_retrieved)
        queue.append(_Wanted(key, byte_range, prototype, future))
        self._kick(state)
        return future

    @contextlib.contextmanager
    def _lone_get(self, state: _LoopState) -> Iterator[None]:
        """A GET sent outside the queue counts as a pipeline while it runs: reads that arrive
        meanwhile queue, and leave once it is back."""
        state.draining += 1
        state.sending += 1
        try:
            yield
        finally:
            state.sending -= 1
            state.draining -= 1
            self._kick(state)

    def _kick(self, state: _LoopState) -> None:
        """Start a drain task for what is queued, while a pipeline is free."""
        if (state.pending or state.speculative) and state.draining < self.pipelines:
            state.draining += 1
            task = asyncio.create_task(self._drain(state))
            state.tasks.add(task)
            task.add_done_callback(state.tasks.discard)

    async def _drain(self, state: _LoopState) -> None:
        """Send what is queued, split evenly over the pipelines that are free, until none is left."""
        try:
            while state.pending or state.speculative:
                queued = len(state.pending) + len(state.speculative)
                free = max(1, self.pipelines - state.sending)
                take = min(self.max_batch, -(-queued // free), queued)
                wanted = [
                    (state.pending or state.speculative).popleft() for _ in range(take)
                ]  # what zarr asked for first, then what is read ahead
                wanted = [w for w in wanted if not w.future.done()]
                if not wanted:
                    continue
                state.sending += 1
                try:
                    await self._send(wanted)
                except Exception as exc:  # e.g. DatasetUnavailableError: every key fails
                    for w in wanted:
                        _settle(w.future, error=exc)
                except BaseException:  # cancelled (the loop is closing): so are the reads waiting on it
                    for w in [*wanted, *state.pending, *state.speculative]:
                        w.future.cancel()
                    raise
                finally:
                    state.sending -= 1
        finally:
            state.draining -= 1

    async def _send_one(self, wanted: _Wanted) -> None:
        try:
            # Sent by a drain or a read-ahead: part of a many-chunk read, so on the bulk connections.
            data = await self._request(self._url(wanted.key), _range_header(wanted.byte_range), bulk=True)
        except Exception as exc:
            _settle(wanted.future, error=exc)
        else:
            _settle(wanted.future, None if data is None else wanted.prototype.buffer.from_bytes(data))

    async def _send(self, wanted: list[_Wanted]) -> None:
        if len(wanted) == 1:
            await self._send_one(wanted[0])
            return
        if not self.batch:
            await asyncio.gather(*(self._send_one(w) for w in wanted))
            return
        request = batch_request([(w.key, _range_spec(w.byte_range)) for w in wanted])
        status, body = await self._fetch(self.base_url, batch=request)
        if status in (401, 403):
            error = DatasetAccessError(status, self.base_url, _text(body))
            for w in wanted:
                _settle(w.future, error=error)
            return
        if status != 200:  # a server without batches (405), or one too large (413): key by key
            if status != 413:
                self.batch = False
            await asyncio.gather(*(self._send_one(w) for w in wanted))
            return
        for w, (entry, data) in zip(wanted, split_answer(body), strict=True):
            if data is not None:
                _settle(w.future, w.prototype.buffer.from_bytes(data))
            elif entry["status"] == 404:
                _settle(w.future, None)
            elif entry["status"] == 416:
                _settle(w.future, w.prototype.buffer.from_bytes(b""))
            else:
                error = DatasetAccessError(entry["status"], self._url(w.key), str(entry.get("error", "")))
                _settle(w.future, error=error)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, rng) for key, rng in key_ranges)))

    async def exists(self, key: str) -> bool:
        status, body = await self._fetch(self._url(key), method="HEAD")
        if status >= 400 and status != 404:
            raise DatasetAccessError(status, self._url(key), _text(body) or f"HTTP {status}")
        return status < 400

    async def set(self, key: str, value: Buffer) -> None:
        raise _ReadOnly

    async def delete(self, key: str) -> None:
        raise _ReadOnly

    async def _listing(self, prefix: str) -> list[str]:
        """All keys under ``prefix`` (relative to the store), from the server's ``?list=1``."""
        data = await self._request(self._url(prefix.rstrip("/")) + "?list=1")
        if data is None:
            return []
        return list(json.loads(bytes(data))["files"])

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

    def _take_states(self) -> tuple[tuple[asyncio.AbstractEventLoop, _LoopState], ...]:
        """Forget the per-loop states, handing back those whose loop can still close them."""
        super().close()
        with self._lock:
            states = tuple(self._sessions.items())
            self._sessions.clear()
        return tuple((loop, state) for loop, state in states if not loop.is_closed())

    def close(self) -> None:
        """Close the HTTP sessions of every loop the store was used on, and wait for it, except
        on the loop running in this very thread (that one cannot be waited for here: there,
        use ``async with store:``, which waits)."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, state in self._take_states():
            if loop is current:
                task = loop.create_task(_close_state(state))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            elif loop.is_running():  # e.g. zarr's own loop thread
                asyncio.run_coroutine_threadsafe(_close_state(state), loop).result(self.timeout)
            else:
                loop.run_until_complete(_close_state(state))

    async def __aenter__(self) -> HttpZarrStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        current = asyncio.get_running_loop()
        for loop, state in self._take_states():
            if loop is current:
                await _close_state(state)
            elif loop.is_running():
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_close_state(state), loop))
            # a loop that is neither running nor closed cannot be driven from inside this one;
            # its session is closed once that loop runs close() (or is garbage-collected)
