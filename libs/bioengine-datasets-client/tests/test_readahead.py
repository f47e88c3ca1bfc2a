"""Read-ahead: chunk grids from metadata, when it starts and how far, and a whole-array read
through a static HTTP server with it (no dataset server needed)."""

import asyncio
import json

import numpy as np
import pytest
import zarr
from aiohttp import web
from aiohttp.test_utils import TestServer

from bioengine_datasets_client import HttpZarrStore
from bioengine_datasets_client._readahead import ChunkGrid, ReadAhead


def _v3(shape, chunks, encoding=None):
    meta = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
    }
    if encoding is not None:
        meta["chunk_key_encoding"] = encoding
    return json.dumps(meta).encode()


def test_grids_come_from_v3_and_v2_metadata():
    grid = ChunkGrid.from_metadata("zarr.json", _v3([4, 1000, 1000], [1, 512, 512]))
    assert grid == ChunkGrid("", (4, 2, 2), "/", False)
    assert grid.key(0) == "c/0/0/0" and grid.key(5) == "c/1/0/1" and grid.key(15) == "c/3/1/1"
    assert [grid.index(grid.key(p)) for p in range(grid.count)] == list(range(16))
    assert grid.index("c/4/0/0") is None and grid.index("c/0/0") is None and grid.index("zarr.json") is None
    dotted = ChunkGrid.from_metadata(
        "a/b/zarr.json", _v3([10], [3], {"name": "default", "configuration": {"separator": "."}})
    )
    assert dotted == ChunkGrid("a/b/", (4,), ".", False) and dotted.key(3) == "a/b/c.3"
    v2key = ChunkGrid.from_metadata("zarr.json", _v3([4, 4], [2, 2], {"name": "v2"}))
    assert v2key is not None and v2key.key(3) == "1.1" and v2key.index("1.0") == 2
    zarray = json.dumps({"shape": [6, 6], "chunks": [3, 3], "dimension_separator": "/"}).encode()
    assert ChunkGrid.from_metadata("x/.zarray", zarray) == ChunkGrid("x/", (2, 2), "/", True)


def test_a_groups_consolidated_metadata_gives_the_grids_of_its_arrays():
    array = json.loads(_v3([8], [1]))
    group = {
        "zarr_format": 3,
        "node_type": "group",
        "consolidated_metadata": {"metadata": {"img": array, "sub/lab": array}},
    }
    ahead = ReadAhead(8, 1 << 30)
    ahead.learn("zarr.json", json.dumps(group).encode())
    assert set(ahead.grids) == {"img/", "sub/lab/"}
    assert [ahead.plan(f"sub/lab/c/{n}") for n in range(4)][-1] == [
        "sub/lab/c/4",
        "sub/lab/c/5",
        "sub/lab/c/6",
    ]
    zmetadata = {"metadata": {".zgroup": {}, "a/.zarray": {"shape": [4], "chunks": [2]}}}
    ahead.learn("root/.zmetadata", json.dumps(zmetadata).encode())
    assert ahead.grids["root/a/"].grid == ChunkGrid("root/a/", (2,), ".", True)


@pytest.mark.parametrize(
    "body",
    [
        b'{"zarr_format": 3, "node_type": "group"}',
        b"not json",
        b"[]",
        _v3([4, 4], [2]),
        json.dumps(
            {"zarr_format": 3, "node_type": "array", "shape": [4], "chunk_grid": {"name": "rectilinear"}}
        ).encode(),
    ],
)
def test_metadata_without_a_regular_grid_gives_none(body):
    assert ChunkGrid.from_metadata("zarr.json", body) is None


def _ahead(window=8, budget=1 << 30, shape=(64,), chunks=(1,)):
    ahead = ReadAhead(window, budget)
    ahead.learn("zarr.json", _v3(list(shape), list(chunks)))
    return ahead


def test_a_sequential_run_reads_ahead_in_growing_refills():
    ahead = _ahead()
    assert [ahead.plan(f"c/{n}") for n in range(3)] == [[], [], []]
    assert ahead.plan("c/3") == ["c/4", "c/5", "c/6"]  # three next-chunk reads in a row
    planned = [ahead.plan(f"c/{n}") for n in range(4, 20)]
    fetched = [key for keys in planned for key in keys]
    assert fetched == [f"c/{n}" for n in range(7, len(fetched) + 7)]  # each chunk once, in order
    assert max(map(len, planned)) <= 8 and sum(1 for keys in planned if keys) < 12  # refills, not one by one


def test_random_reads_and_ranges_never_read_ahead():
    ahead = _ahead()
    assert [ahead.plan(f"c/{n}") for n in (5, 9, 2, 30, 31, 40, 7)] == [[]] * 7
    assert ahead.plan("zarr.json") == [] and ahead.plan("other/c/1") == []
    assert ReadAhead(8, 1 << 30).plan("c/1") == []  # no metadata seen: nothing known


def test_a_new_read_from_the_start_starts_a_new_run():
    ahead = _ahead(shape=(8,))
    for n in range(8):
        ahead.plan(f"c/{n}")  # reads to the end: nothing past the last chunk
    assert all(key in {f"c/{n}" for n in range(8)} for key in ahead.fetched) or not ahead.fetched
    assert [ahead.plan(f"c/{n}") for n in range(3)] == [[], [], []]
    assert ahead.plan("c/3") == ["c/4", "c/5", "c/6"]


def test_the_byte_budget_limits_how_far():
    ahead = _ahead(window=32, budget=4000)
    ahead.seen(1000)
    loop = asyncio.new_event_loop()
    held = []
    for n in range(40):  # a sequential reader: takes its chunk, then the plan is fetched
        ahead.take(f"c/{n}")
        for key in ahead.plan(f"c/{n}"):
            ahead.hold(key, loop.create_future())
        held.append(len(ahead.fetched))
    loop.close()
    assert max(held) == 4  # budget / chunk size, though the window is 32


def _served_array(tmp_path, shape=(6, 64, 64), chunks=(1, 32, 32)):
    data = np.arange(np.prod(shape), dtype="uint16").reshape(shape)
    zarr.create_array(store=tmp_path / "a.zarr", shape=shape, chunks=chunks, dtype="uint16")[:] = data
    seen: list[str] = []

    @web.middleware
    async def record(request, handler):
        seen.append(f"{request.method} {request.path.removeprefix('/s/')}")
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.router.add_static("/s", tmp_path / "a.zarr")
    return data, seen, TestServer(app)


@pytest.mark.parametrize("concurrency", [1, 10])
def test_a_whole_array_read_fetches_every_chunk_once_and_right(tmp_path, concurrency):
    data, seen, server = _served_array(tmp_path)

    async def read():
        await server.start_server()
        store = HttpZarrStore(str(server.make_url("/s")), read_ahead=8)
        try:
            with zarr.config.set({"async.concurrency": concurrency}):
                array = await zarr.api.asynchronous.open_array(store=store, mode="r")
                whole = await array.getitem(slice(None))
                seen.clear()
                tile = await array.getitem((3, slice(0, 32), slice(32, 64)))
            return whole, tile
        finally:
            async with store:
                await server.close()

    whole, tile = asyncio.run(read())
    assert np.array_equal(whole, data) and np.array_equal(tile, data[3, :32, 32:])
    assert seen == ["GET c/3/0/1"]  # one tile: its chunk only, nothing read ahead


def test_read_ahead_requests_each_chunk_once(tmp_path):
    data, seen, server = _served_array(tmp_path)

    async def read():
        await server.start_server()
        store = HttpZarrStore(str(server.make_url("/s")), read_ahead=8)
        try:
            array = await zarr.api.asynchronous.open_array(store=store, mode="r")
            seen.clear()
            with zarr.config.set({"async.concurrency": 2}):
                return await array.getitem(slice(None)), store._state().ahead
        finally:
            async with store:
                await server.close()

    whole, ahead = asyncio.run(read())
    chunks = [s for s in seen if s.startswith("GET c/")]
    assert np.array_equal(whole, data)
    assert sorted(chunks) == sorted(set(chunks)) and len(chunks) == 6 * 2 * 2  # each chunk once
    assert not ahead.fetched  # every chunk read ahead was handed out


def test_a_chunk_whose_read_ahead_failed_is_asked_for_again(tmp_path):
    data = np.arange(6 * 64 * 64, dtype="uint16").reshape(6, 64, 64)
    zarr.create_array(store=tmp_path / "a.zarr", shape=data.shape, chunks=(1, 32, 32), dtype="uint16")[:] = (
        data
    )
    seen: list[str] = []

    @web.middleware
    async def refuse_once(request, handler):
        key = request.path.removeprefix("/s/")
        seen.append(key)
        if key == "c/4/0/0" and seen.count(key) == 1:
            return web.json_response({"error": "not now"}, status=403)
        return await handler(request)

    app = web.Application(middlewares=[refuse_once])
    app.router.add_static("/s", tmp_path / "a.zarr")
    server = TestServer(app)

    async def read():
        await server.start_server()
        store = HttpZarrStore(str(server.make_url("/s")), read_ahead=8, batch=False)
        try:
            array = await zarr.api.asynchronous.open_array(store=store, mode="r")
            with zarr.config.set({"async.concurrency": 1}):
                return await array.getitem(slice(None))
        finally:
            async with store:
                await server.close()

    assert np.array_equal(asyncio.run(read()), data)
    assert seen.count("c/4/0/0") == 2  # read ahead (refused), then by the read that needed it


def test_read_ahead_must_not_be_negative():
    with pytest.raises(ValueError, match="read_ahead"):
        HttpZarrStore("http://h/data/x", read_ahead=-1)
