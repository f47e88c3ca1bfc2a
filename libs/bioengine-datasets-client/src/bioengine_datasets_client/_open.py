"""Open a dataset's array or group in one call."""

from __future__ import annotations

from typing import Any

import zarr

from ._store import HttpZarrStore


def open_dataset(
    server_url: str, dataset_id: str, path: str = "", *, token: str | None = None, **store_options: Any
) -> Any:
    """``zarr.open`` of ``<server_url>/data/<dataset_id>/<path>`` (an array or a group), read-only.

    Consolidated metadata is used when the store has it, so opening a group is one request.
    If opening fails (``DatasetAccessError`` for a refused token or a dataset that does not
    exist or may not be read, ``FileNotFoundError`` for a path without zarr metadata, network
    errors), the store's HTTP sessions are closed before the error reaches the caller. On
    success the caller owns them: ``result.store.close()`` when done.
    """
    base = f"{server_url.rstrip('/')}/data/{dataset_id}"
    if path:
        base += "/" + path.strip("/")
    store = HttpZarrStore(base, token=token, **store_options)
    try:
        return zarr.open(store=store, mode="r")
    except BaseException:
        store.close()
        raise
