"""Read-ahead for ``HttpZarrStore``: fetch the chunks a sequential read will ask for next.

zarr keeps at most ``async.concurrency`` chunks (10 by default) between "asked the store" and
"decoded". Locally a chunk arrives in a fraction of a millisecond, so those slots are spent
decoding; over HTTP each one also waits a round trip, and at the default the decoder starves
(0.6 times local throughput measured here). The store cannot see the slice zarr is reading,
but it sees the keys: a whole-array or plane-by-plane read asks for chunk after chunk in C
order. When the last few whole-chunk reads of one array were each the next chunk in C order,
the next ones are fetched before they are asked for, in the store's batches; the window grows
with the run (so a short run overshoots little) up to ``window`` chunks and ``budget`` bytes.
Random reads (tiles) never start it. A chunk fetched ahead is handed out once, to the read that
asks for it within ``_KEEP`` seconds, and forgotten otherwise.

The chunk grid comes from the array's metadata (``zarr.json``, or ``.zarray`` for zarr v2, or a
group's consolidated metadata) as it passes through the store: no extra request.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ChunkGrid", "ReadAhead", "all_grids"]

_START = 3  # successive next-chunk reads before reading ahead
_KEEP = 10.0  # seconds a chunk read ahead waits to be asked for


@dataclass(frozen=True)
class ChunkGrid:
    """Where an array's chunk keys are and how they are spelled (regular grids only)."""

    prefix: str  # the array's folder inside the store, "" or ending in "/"
    grid: tuple[int, ...]  # chunks per dimension
    separator: str
    v2: bool  # "0.1.2" (v2 encoding) rather than "c/0/1/2"

    @classmethod
    def from_metadata(cls, key: str, body: bytes | memoryview) -> ChunkGrid | None:
        """The grid of the array whose metadata ``key`` (``.../zarr.json`` or ``.../.zarray``)
        holds ``body``; None for a group, an irregular grid or anything unexpected."""
        grids = all_grids(key, body)
        return grids[0] if len(grids) == 1 and grids[0].prefix == key[: key.rfind("/") + 1] else None

    @classmethod
    def parse(cls, prefix: str, meta: Any, v2: bool) -> ChunkGrid | None:
        """The grid of one array's metadata (parsed JSON), its keys under ``prefix``."""
        try:
            if v2:
                chunks, v2_keys = meta["chunks"], True
                separator = meta.get("dimension_separator") or "."
            else:
                if meta.get("node_type") != "array" or meta["chunk_grid"]["name"] != "regular":
                    return None
                chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
                encoding = meta.get("chunk_key_encoding", {"name": "default"})
                v2_keys = encoding["name"] == "v2"
                default_separator = "." if v2_keys else "/"
                separator = (encoding.get("configuration") or {}).get("separator", default_separator)
            shape = meta["shape"]
            if len(shape) != len(chunks) or not shape or separator not in ("/", "."):
                return None
            grid = tuple(math.ceil(int(s) / int(c)) for s, c in zip(shape, chunks, strict=True))
        except (ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError):
            return None
        return cls(prefix, grid, separator, v2_keys) if all(grid) else None

    def index(self, key: str) -> int | None:
        """The C-order position of chunk ``key`` in the grid, or None if it is not a chunk key."""
        rest = key[len(self.prefix) :]
        if not self.v2:
            if not rest.startswith("c" + self.separator):
                return None
            rest = rest[2:]
        parts = rest.split(self.separator)
        if len(parts) != len(self.grid) or not all(p.isascii() and p.isdigit() for p in parts):
            return None
        position = 0
        for part, size in zip(parts, self.grid, strict=True):
            coordinate = int(part)
            if coordinate >= size:
                return None
            position = position * size + coordinate
        return position

    def key(self, position: int) -> str:
        coordinates = []
        for size in reversed(self.grid):
            position, coordinate = divmod(position, size)
            coordinates.append(str(coordinate))
        body = self.separator.join(reversed(coordinates))
        return f"{self.prefix}{body}" if self.v2 else f"{self.prefix}c{self.separator}{body}"

    @property
    def count(self) -> int:
        return math.prod(self.grid)


def all_grids(key: str, body: bytes | memoryview) -> list[ChunkGrid]:
    """The grids in metadata ``key``: one array's (``zarr.json``, ``.zarray``), or those of every
    array in a group's consolidated metadata (``zarr.json`` with ``consolidated_metadata``,
    ``.zmetadata``), so a group opened in one request still reads ahead."""
    name = key.rsplit("/", 1)[-1]
    prefix = key[: len(key) - len(name)]
    try:
        meta: Any = json.loads(bytes(body))
        if name == ".zarray":
            found = [ChunkGrid.parse(prefix, meta, v2=True)]
        elif name == ".zmetadata":
            found = [
                ChunkGrid.parse(prefix + path[: -len(".zarray")], array, v2=True)
                for path, array in meta["metadata"].items()
                if path.endswith(".zarray") and (path == ".zarray" or path.endswith("/.zarray"))
            ]
        elif name == "zarr.json":
            found = [ChunkGrid.parse(prefix, meta, v2=False)]
            if meta.get("node_type") == "group":
                consolidated = (meta.get("consolidated_metadata") or {}).get("metadata") or {}
                found += [
                    ChunkGrid.parse(f"{prefix}{path}/", array, v2=False)
                    for path, array in consolidated.items()
                ]
        else:
            return []
    except (ValueError, KeyError, TypeError, AttributeError):
        return []
    return [grid for grid in found if grid is not None]


@dataclass
class _Stream:
    grid: ChunkGrid
    last: int = -2  # position last asked for
    run: int = 0  # successive next-chunk reads
    ahead_to: int = -1  # highest position fetched ahead


@dataclass
class ReadAhead:
    """Per store and event loop: the grids seen, each array's run, the chunks fetched ahead."""

    window: int
    budget: int
    grids: dict[str, _Stream] = field(default_factory=dict)
    fetched: OrderedDict[str, tuple[asyncio.Future[Any], float]] = field(default_factory=OrderedDict)
    chunk_bytes: float = 0.0  # running mean of chunk sizes seen, to keep within ``budget``

    def learn(self, key: str, body: bytes | memoryview) -> None:
        for grid in all_grids(key, body):
            if grid.prefix not in self.grids or self.grids[grid.prefix].grid != grid:
                self.grids[grid.prefix] = _Stream(grid)

    def seen(self, size: int) -> None:
        self.chunk_bytes = size if not self.chunk_bytes else 0.9 * self.chunk_bytes + 0.1 * size

    def take(self, key: str) -> asyncio.Future[Any] | None:
        """The fetch already under way or done for ``key`` (handed out once), or None."""
        entry = self.fetched.pop(key, None)
        return None if entry is None else entry[0]

    def plan(self, key: str) -> list[str]:
        """Note a whole-chunk read of ``key``; the keys to fetch ahead now (maybe none)."""
        stream = self._stream(key)
        if stream is None:
            return []
        position = stream.grid.index(key)
        if position is None:
            return []
        if position == stream.last + 1 or stream.last < position <= stream.ahead_to:
            stream.run += 1
        else:  # a jump, or a new read from further back: a new run starts here
            stream.run = 0
            stream.ahead_to = min(stream.ahead_to, position)
        stream.last = position
        if stream.run < _START:
            return []
        self._forget_old()
        limit = self.window
        if self.chunk_bytes:
            limit = min(limit, max(1, int(self.budget // self.chunk_bytes)))
        depth = min(limit, stream.run)  # grows with the run: a short run overshoots little
        if stream.ahead_to - position > depth // 2:
            return []  # enough under way: refill in batches of about half the window, not one by one
        first = max(stream.ahead_to, position) + 1
        last = min(stream.grid.count - 1, position + depth, first + limit - len(self.fetched) - 1)
        if first > last:
            return []
        stream.ahead_to = last
        return [stream.grid.key(p) for p in range(first, last + 1)]

    def hold(self, key: str, future: asyncio.Future[Any]) -> None:
        self.fetched[key] = (future, time.monotonic())

    def _stream(self, key: str) -> _Stream | None:
        if not self.grids:
            return None
        if len(self.grids) == 1:  # the usual case: a store opened on one array
            (stream,) = self.grids.values()
            return stream if key.startswith(stream.grid.prefix) else None
        best = None
        for prefix, stream in self.grids.items():
            if key.startswith(prefix) and (best is None or len(prefix) > len(best.grid.prefix)):
                best = stream
        return best

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - _KEEP
        while self.fetched:
            key, (future, when) = next(iter(self.fetched.items()))
            if when >= cutoff:
                break
            del self.fetched[key]
            if not future.done():
                future.cancel()
