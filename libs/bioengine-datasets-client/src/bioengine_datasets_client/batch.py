"""The batch wire format of the dataset server: many keys in one request, one answer.

Declared once here and used by both sides: the dataset server (datasets-svc) parses requests and
frames answers with it, :class:`~bioengine_datasets_client.HttpZarrStore` builds requests and
splits answers with it.

Request: ``POST /data/{dataset}/{prefix}`` with the JSON body ``{"get": [{"key": KEY, "range":
RANGE}, ...]}``: at most :data:`BATCH_MAX_KEYS` items, each key relative to ``prefix``, each range
an HTTP ``Range`` value (``bytes=0-99``, ``bytes=-100``) or null for the whole file.

Answer (``Content-Type:`` :data:`BATCH_TYPE`, framed by ``Content-Length``): a 4-byte big-endian
length, then that many bytes of a JSON list with one entry per key, in order: ``{"status": 200 or
206, "length": N}`` for a key whose ``N`` bytes follow, or ``{"status": 403, 404 or 416, "error":
MESSAGE}`` for one without bytes; then the bytes of every entry with a ``length``, in order.

A whole answer holds at most :data:`BATCH_MAX_BYTES` of data; a larger one is refused with 413
(the client then asks key by key), and a server without the endpoint answers 405.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BATCH_MAX_BYTES",
    "BATCH_MAX_KEYS",
    "BATCH_TYPE",
    "batch_request",
    "data_entry",
    "error_entry",
    "frame_head",
    "parse_batch_request",
    "split_answer",
]

BATCH_TYPE = "application/x-bioengine-batch"
BATCH_MAX_KEYS = 256
BATCH_MAX_BYTES = 256 << 20


def batch_request(items: Sequence[tuple[str, str | None]]) -> dict[str, Any]:
    """The JSON body asking for ``(key, range)`` pairs (range an HTTP ``Range`` value or None)."""
    return {"get": [{"key": key, "range": byte_range} for key, byte_range in items]}


def parse_batch_request(payload: Any) -> list[tuple[str, str | None]]:
    """The ``(key, range)`` pairs of a request body (parsed JSON); ``ValueError`` names what is
    wrong with it."""
    items = payload.get("get") if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError('a batch is a JSON object {"get": [{"key": ..., "range": ...}, ...]}')
    if len(items) > BATCH_MAX_KEYS:
        raise ValueError(f"a batch holds at most {BATCH_MAX_KEYS} keys, not {len(items)}")
    parsed = []
    for item in items:
        key = item.get("key") if isinstance(item, dict) else None
        byte_range = item.get("range") if isinstance(item, dict) else None
        if not isinstance(key, str) or not key or not (byte_range is None or isinstance(byte_range, str)):
            raise ValueError(f"bad batch item {item!r}: needs a non-empty 'key' and an optional 'range'")
        parsed.append((key, byte_range))
    return parsed


def data_entry(status: int, length: int) -> dict[str, Any]:
    """The entry of a key whose ``length`` bytes follow (``status`` 200, or 206 for a range)."""
    return {"status": status, "length": length}


def error_entry(status: int, message: str) -> dict[str, Any]:
    """The entry of a key without bytes: 403, 404 (missing: zarr's fill value) or 416."""
    return {"status": status, "error": message}


def frame_head(entries: Sequence[dict[str, Any]]) -> bytes:
    """What an answer starts with: the 4-byte big-endian length and the JSON list of entries."""
    header = json.dumps(list(entries)).encode()
    return len(header).to_bytes(4, "big") + header


def split_answer(body: bytes | memoryview) -> list[tuple[dict[str, Any], memoryview | None]]:
    """Split an answer into ``(entry, bytes)`` per key, in request order; ``bytes`` is a view into
    ``body`` (no copy), None for an entry without a ``length``. ``ValueError`` for an answer whose
    size does not match its entries."""
    view = memoryview(body)
    if len(view) < 4:
        raise ValueError("malformed batch answer: shorter than its header")
    size = int.from_bytes(view[:4], "big")
    entries = json.loads(bytes(view[4 : 4 + size]))
    offset = 4 + size
    parts: list[tuple[dict[str, Any], memoryview | None]] = []
    for entry in entries:
        if "length" in entry:
            parts.append((entry, view[offset : offset + entry["length"]]))
            offset += entry["length"]
        else:
            parts.append((entry, None))
    if offset != len(body):
        raise ValueError(f"malformed batch answer: {len(body)} bytes, entries account for {offset}")
    return parts
