"""HttpZarrStore without a dataset server: Range headers, read-only behaviour, equality,
pickling, batch framing, and the fallback against a plain static-file HTTP server.
(Reads against a real dataset server are in services/datasets-svc/tests.)"""

import asyncio
import gc
import json
import pickle
import threading
import warnings

import aiohttp
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestServer
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync as zarr_sync

from bioengine_datasets_client import DatasetAccessError, HttpZarrStore, open_dataset
from bioengine_datasets_client._store import _range_header, _text
from bioengine_datasets_client._wire import BufferPool, WireConnection, WireUnsupported
from bioengine_datasets_client.batch import (
    batch_request,
    data_entry,
    error_entry,
    frame_head,
    parse_batch_request,
    split_answer,
)


@pytest.mark.parametrize(
    ("request_", "header"),
    [
        (None, {}),
        (RangeByteRequest(0, 10), {"Range": "bytes=0-9"}),
        (RangeByteRequest(5, 6), {"Range": "bytes=5-5"}),
        (OffsetByteRequest(100), {"Range": "bytes=100-"}),
        (SuffixByteRequest(16), {"Range": "bytes=-16"}),
    ],
)
def test_byte_requests_become_range_headers(request_, header):
    assert _range_header(request_) == header


def test_empty_ranges_are_refused():
    with pytest.raises(ValueError):
        _range_header(RangeByteRequest(10, 10))


def test_the_store_is_read_only_and_keeps_no_token_in_urls():
    store = HttpZarrStore("http://127.0.0.1:9/data/x/a.zarr/", token="secret-token")
    assert store.read_only and not store.supports_writes and not store.supports_deletes
    assert store.base_url == "http://127.0.0.1:9/data/x/a.zarr" and "secret" not in repr(store)
    assert store._url("c/0/0") == "http://127.0.0.1:9/data/x/a.zarr/c/0/0"
    with pytest.raises(PermissionError):
        asyncio.run(store.set("k", default_buffer_prototype().buffer.from_bytes(b"x")))
    with pytest.raises(ValueError):
        store.with_read_only(False)
    # zarr's conventions for read-only stores, as its store test suite checks them
    with pytest.raises(ValueError, match="store was opened in read-only mode and does not support writing"):
        asyncio.run(store.delete("k"))
    with pytest.raises(NotImplementedError, match="with_read_only is not implemented"):
        store.with_read_only(False)
    assert store.with_read_only(True) is store
    with pytest.raises(ValueError, match="cannot be opened with read_only=False"):
        HttpZarrStore("http://127.0.0.1:9/data/x/a.zarr", read_only=False)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="control characters"):
        HttpZarrStore("http://h/data/x", token="abc\r\nX-Injected: 1")
    with pytest.raises(ValueError, match="at least 1"):
        HttpZarrStore("http://h/data/x", pipelines=0)


def test_equality_and_pickling():
    store = HttpZarrStore("http://h/data/x", token="t")
    assert store == HttpZarrStore("http://h/data/x", token="t")
    assert store != HttpZarrStore("http://h/data/x", token="other")
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store and clone._sessions == {}


def test_unreachable_server_raises_after_retries():
    store = HttpZarrStore("http://127.0.0.1:9/data/x", retry_for=0.2)

    async def read():
        try:
            return await store.get("zarr.json", default_buffer_prototype())
        finally:
            for state in store._sessions.values():
                await state.session.close()

    with pytest.raises(OSError):
        asyncio.run(read())


def test_a_server_without_batches_gets_one_request_per_key(tmp_path):
    # Any static HTTP server (here aiohttp's) answers the batch POST with 405: the store
    # falls back to GETs, for good, and reads the same bytes.
    for name in range(6):
        (tmp_path / f"k{name}").write_bytes(bytes([name]) * 1000)
    seen = []

    @web.middleware
    async def record(request, handler):
        seen.append(request.method)
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.router.add_static("/s", tmp_path)

    async def read():
        server = TestServer(app)
        await server.start_server()
        store = HttpZarrStore(str(server.make_url("/s")))
        prototype = default_buffer_prototype()
        try:
            values = await asyncio.gather(*(store.get(f"k{n}", prototype) for n in range(6)))
            ranged = await store.get("k3", prototype, RangeByteRequest(10, 20))
            missing = await store.get("nope", prototype)
            return store, [v.to_bytes() for v in values], ranged.to_bytes(), missing
        finally:
            for state in store._sessions.values():
                await state.session.close()
            await server.close()

    store, values, ranged, missing = asyncio.run(read())
    assert values == [bytes([n]) * 1000 for n in range(6)] and ranged == bytes([3]) * 10 and missing is None
    assert "POST" in seen and store.batch is False


def test_malformed_batch_answers_are_refused():
    header = json.dumps([{"status": 200, "length": 5}]).encode()
    framed = len(header).to_bytes(4, "big") + header
    assert [bytes(view) for _, view in split_answer(framed + b"hello")] == [b"hello"]
    for broken in (b"\x00", framed + b"hell", framed + b"hello!"):
        with pytest.raises(ValueError, match="malformed batch answer"):
            split_answer(broken)


def test_the_batch_format_both_ways():
    """What the server frames is what the client splits; the bytes are the documented layout."""
    head = frame_head([data_entry(206, 3), error_entry(404, "no 'b'"), data_entry(200, 2)])
    entries = [{"status": 206, "length": 3}, {"status": 404, "error": "no 'b'"}, {"status": 200, "length": 2}]
    assert head == len(json.dumps(entries)).to_bytes(4, "big") + json.dumps(entries).encode()
    parts = split_answer(head + b"abcde")
    assert [(e["status"], None if v is None else bytes(v)) for e, v in parts] == [
        (206, b"abc"),
        (404, None),
        (200, b"de"),
    ]
    request = batch_request([("c/0", "bytes=0-2"), ("zarr.json", None)])
    assert request == {"get": [{"key": "c/0", "range": "bytes=0-2"}, {"key": "zarr.json", "range": None}]}
    assert parse_batch_request(json.loads(json.dumps(request))) == [("c/0", "bytes=0-2"), ("zarr.json", None)]
    for bad, message in [
        ([], "a batch is a JSON object"),
        ({"get": []}, "a batch is a JSON object"),
        ({"get": [{"key": "a"}] * 257}, "at most 256 keys"),
        ({"get": [{"key": ""}]}, "needs a non-empty 'key'"),
        ({"get": [{"key": "a", "range": 5}]}, "an optional 'range'"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_batch_request(bad)


def _batch_server(files, *, chunked=False, peers=None, requests=None, **runner_kwargs):
    """A stand-in for the dataset server's batch endpoint and single GETs, answering from
    ``files``."""

    async def batch(request):
        if peers is not None:
            peers.append(("POST", request.transport.get_extra_info("peername")))
        wanted = parse_batch_request(await request.json())
        if requests is not None:
            requests.append(("POST", [key for key, _range in wanted]))
        entries, bodies = [], []
        for key, _range in wanted:
            data = files.get(key)
            if data is None:
                entries.append(error_entry(404, "missing"))
            else:
                entries.append(data_entry(200, len(data)))
                bodies.append(data)
        body = frame_head(entries) + b"".join(bodies)
        if not chunked:
            return web.Response(body=body)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
        return response

    async def one(request):  # a read with nothing in flight is a plain GET
        if peers is not None:
            peers.append(("GET", request.transport.get_extra_info("peername")))
        if requests is not None:
            requests.append(("GET", request.match_info["key"]))
        data = files.get(request.match_info["key"])
        return web.Response(status=404) if data is None else web.Response(body=data)

    app = web.Application()
    app.router.add_post("/s", batch)
    app.router.add_get("/s/{key:.+}", one)
    return TestServer(app, **runner_kwargs)


def _read_rounds(server, keys, rounds=2, pause=0.0, loop="asyncio", **store_kwargs):
    async def main():
        await server.start_server()
        store = HttpZarrStore(str(server.make_url("/s")), token="t", **store_kwargs)
        prototype = default_buffer_prototype()
        results = []
        try:
            for _ in range(rounds):
                values = await asyncio.gather(*(store.get(key, prototype) for key in keys))
                results.append([None if v is None else v.to_bytes() for v in values])
                await asyncio.sleep(pause)
            return store, results
        finally:
            for state in store._sessions.values():
                if state.wire is not None:
                    state.wire.close()
                await state.session.close()
            await server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as runner:
        return runner.run(main())


FILES = {f"c/{n}": bytes([n]) * (3000 + n) for n in range(8)}
KEYS = [*FILES, "c/missing"]
EXPECTED = [*FILES.values(), None]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])  # Ray Serve replicas run on uvloop
def test_batch_answers_arrive_on_reused_raw_connections(loop):
    peers: list = []
    store, results = _read_rounds(_batch_server(FILES, peers=peers), KEYS, rounds=3, loop=loop)
    assert results == [EXPECTED] * 3
    posts = {peer for method, peer in peers if method == "POST"}
    assert store._wire and store.batch and 1 <= len(posts) <= store.pipelines
    # Each round's first read is a lone GET: one connection serves all three and never a batch
    # (a connection that carried bulk answers paces a later small one at the bulk rate); a GET
    # that a drain sends as part of the many-key read goes on the batches' connections.
    lone = [peer for method, peer in peers if method == "GET" and peer not in posts]
    assert len(lone) == 3 and len(set(lone)) == 1


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_chunked_answer_sends_batches_back_to_aiohttp(loop):
    # e.g. a proxy that re-chunks: the raw connection cannot read it, aiohttp can.
    store, results = _read_rounds(_batch_server(FILES, chunked=True), KEYS, loop=loop)
    assert results == [EXPECTED] * 2 and not store._wire and store.batch


def test_a_read_with_nothing_in_flight_is_one_get_and_reads_meanwhile_leave_as_a_batch():
    requests = []
    keys = list(FILES)
    store, results = _read_rounds(_batch_server(FILES, requests=requests), keys[:1], rounds=1)
    assert results == [[FILES[keys[0]]]] and requests == [("GET", keys[0])]
    requests.clear()
    store, results = _read_rounds(_batch_server(FILES, requests=requests), keys, rounds=1)
    assert results == [[FILES[key] for key in keys]]
    # The first goes at once; the others, asked for while it is in flight, share batches.
    assert requests[0] == ("GET", keys[0])
    batched = [key for method, sent in requests[1:] if method == "POST" for key in sent]
    assert sorted(batched) == sorted(keys[1:]) and len(requests) - 1 <= store.pipelines


def test_a_connection_closed_while_idle_is_replaced():
    store, results = _read_rounds(_batch_server(FILES, keepalive_timeout=0.05), KEYS, rounds=3, pause=0.3)
    assert results == [EXPECTED] * 3 and store._wire


def _address(array):
    return array.__array_interface__["data"][0]


def test_receive_buffers_are_reused_only_once_every_chunk_is_let_go():
    pool = BufferPool(keep_bytes=1 << 20)
    first = pool.take(100_000)
    address = _address(first)
    chunk = first.data[10:20]  # what zarr holds: a slice of the answer
    del first
    second = pool.take(100_000)
    assert _address(second) != address  # the chunk still reads that memory
    reused = _address(second)
    del second
    assert _address(pool.take(100_000)) == reused  # nothing holds it: back in use
    del chunk
    third = pool.take(90_000)  # same size class (128 KiB): the first buffer, now free
    assert _address(third) == address and len(third) == 90_000
    big = pool.take(2 << 20)  # over keep_bytes: never pooled
    del big
    assert all(size <= 1 << 20 for size in pool._free) and pool._kept <= 1 << 20


# ---- sessions are closed on every path ----------------------------------------------------------


class _ServerThread:
    """An aiohttp app on its own loop in a thread, for the synchronous open_dataset."""

    def __init__(self, app):
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait()

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _answering(status, body=b"", content_type="application/json"):
    async def handler(request):
        return web.Response(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.fixture
def sessions(monkeypatch):
    """Every aiohttp session the store opens, to check that each one gets closed."""
    opened = []
    original = aiohttp.ClientSession.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(aiohttp.ClientSession, "__init__", recording_init)
    return opened


REFUSAL = json.dumps({"error": "dataset 'x' not found or not readable with this token"}).encode()


@pytest.mark.parametrize("status", [401, 403])
def test_open_dataset_closes_its_session_when_refused(sessions, status):
    server = _ServerThread(_answering(status, REFUSAL))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            with pytest.raises(DatasetAccessError) as info:
                open_dataset(server.url, "x", "image.zarr", token="t")
            assert info.value.status == status
            assert "not found or not readable with this token" in str(info.value)
            del info
            gc.collect()
    finally:
        server.stop()
    assert sessions, "the store never opened a session"
    assert all(session.closed for session in sessions), "open_dataset left a session open"
    assert not [w for w in caught if "Unclosed client session" in str(w.message)]


def test_open_dataset_closes_its_session_when_nothing_is_there(sessions):
    server = _ServerThread(_answering(404, b"missing", "text/plain"))
    try:
        with pytest.raises(FileNotFoundError):
            open_dataset(server.url, "x", "image.zarr")
    finally:
        server.stop()
    assert sessions and all(session.closed for session in sessions)


def test_open_dataset_closes_its_session_when_the_server_is_unreachable(sessions):
    with pytest.raises(OSError):
        open_dataset("http://127.0.0.1:9", "x", "image.zarr", retry_for=0)
    assert sessions and all(session.closed for session in sessions)


def test_async_with_closes_the_store(sessions):
    app = _answering(200, b"chunk", "application/octet-stream")

    async def main():
        server = TestServer(app)
        await server.start_server()
        try:
            async with HttpZarrStore(str(server.make_url("/s")), batch=False) as store:
                value = await store.get("c/0", default_buffer_prototype())
                assert sessions and not sessions[0].closed
            return store, value.to_bytes()
        finally:
            await server.close()

    store, value = asyncio.run(main())
    assert value == b"chunk" and store._sessions == {} and not store._is_open
    assert all(session.closed for session in sessions)


def test_close_waits_for_sessions_on_zarrs_loop_thread(sessions):
    # zarr's synchronous API runs the store on zarr's own loop thread; close() from here
    # returns once that session is closed.
    server = _ServerThread(_answering(200, b"chunk", "application/octet-stream"))
    try:
        with HttpZarrStore(f"{server.url}/s", batch=False) as store:
            value = zarr_sync(store.get("c/0", default_buffer_prototype()))
            assert value.to_bytes() == b"chunk" and not sessions[0].closed
    finally:
        server.stop()
    assert sessions and all(session.closed for session in sessions) and store._sessions == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (REFUSAL, "dataset 'x' not found or not readable with this token"),
        (b"plain text refusal", "plain text refusal"),
        (b'{"no": "error field"}', '{"no": "error field"}'),
        (b"\xff\xfe", "\ufffd\ufffd"),
    ],
)
def test_access_errors_carry_the_servers_message(body, message):
    assert _text(body) == message


# ---- raw connections: numbers are ASCII digits ---------------------------------------------------


class _Transport:
    def write(self, data):
        pass

    def close(self):
        pass


async def _answer(head: bytes):
    connection = WireConnection(BufferPool())
    connection.connection_made(_Transport())
    waiter = asyncio.ensure_future(connection.post(b"POST / HTTP/1.1\r\n\r\n"))
    await asyncio.sleep(0)
    buffer = connection.get_buffer(-1)
    buffer[: len(head)] = head
    connection.buffer_updated(len(head))
    status, body = await waiter
    return status, bytes(body)


def test_a_content_length_of_ascii_digits_frames_the_answer():
    assert asyncio.run(_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")) == (200, b"hello")


@pytest.mark.parametrize(
    "head",
    [
        "HTTP/1.1 200 OK\r\nContent-Length: \u0665\r\n\r\nhello",  # Arabic-Indic five
        "HTTP/1.1 200 OK\r\nContent-Length: \u00b2\r\n\r\nhi",  # superscript two: isdigit() is True
        "HTTP/1.1 200 OK\r\nContent-Length: \uff15\r\n\r\nhello",  # fullwidth five
        "HTTP/1.1 200 OK\r\nContent-Length: 0_5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nContent-Length: " + "9" * 5000 + "\r\n\r\nhello",
        "HTTP/1.1 \u0662\u0660\u0660 OK\r\nContent-Length: 5\r\n\r\nhello",
    ],
)
def test_numbers_in_other_scripts_are_not_numbers(head):
    with pytest.raises(WireUnsupported):
        asyncio.run(_answer(head.encode("utf-8")))


def test_lone_gets_and_bulk_traffic_keep_separate_connections():
    from bioengine_datasets_client._wire import WirePool

    peers: list = []
    server = _batch_server(FILES, peers=peers)

    async def main():
        await server.start_server()
        pool = WirePool(str(server.make_url("/s")), "t")
        key_url = str(server.make_url("/s/c/1"))
        try:
            for _ in range(2):
                status, _body = await pool.post(batch_request([("c/0", None)]), 5)
                assert status == 200
                status, body = await pool.get(key_url, None, 5, bulk=True)  # part of a big read
                assert (status, bytes(body)) == (200, FILES["c/1"])
                status, body = await pool.get(key_url, None, 5)  # a lone tile
                assert (status, bytes(body)) == (200, FILES["c/1"])
        finally:
            pool.close()
            await server.close()

    asyncio.run(main())
    post, bulk_get, lone_get = peers[0][1], peers[1][1], peers[2][1]
    assert [m for m, _ in peers] == ["POST", "GET", "GET"] * 2
    assert bulk_get == post and lone_get != post  # one connection each, reused in round two
    assert [p for _, p in peers[3:]] == [post, post, lone_get]
