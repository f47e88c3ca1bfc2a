"""HttpZarrStore without a server: Range headers, read-only behaviour, equality, pickling.
(Reads against a real server are in services/datasets-svc/tests.)"""

import asyncio
import pickle

import pytest
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype

from bioengine_datasets_client import HttpZarrStore
from bioengine_datasets_client._store import _range_header


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


def test_equality_and_pickling():
    store = HttpZarrStore("http://h/data/x", token="t")
    assert store == HttpZarrStore("http://h/data/x", token="t")
    assert store != HttpZarrStore("http://h/data/x", token="other")
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store and clone._sessions == {}


def test_unreachable_server_raises_after_retries():
    store = HttpZarrStore("http://127.0.0.1:9/data/x", retries=1)

    async def read():
        try:
            return await store.get("zarr.json", default_buffer_prototype())
        finally:
            for state in store._sessions.values():
                await state.session.close()

    with pytest.raises(OSError):
        asyncio.run(read())
