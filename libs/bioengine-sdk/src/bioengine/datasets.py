"""``bioengine.datasets``: the worker's datasets, from inside an app (or a local test).

The dataset server's URL comes from ``BIOENGINE_DATA_SERVER_URL`` (the platform sets it in app
replicas), the token from ``HYPHA_TOKEN`` (``deploy_app(hypha_token=...)``), or ``token=`` per
call. Every function is async. Our dataset server is read-only: ``save_file``,
``list_saved_files`` and ``get_saved_file`` of the public BioEngine raise ``NotImplementedError``
saying so.

Listings and file bytes use the standard library only (``urllib`` in a thread). A ``*.zarr`` path
opens as a read-only zarr store (``HttpZarrStore`` of ``bioengine-datasets-client``; install
``bioengine-services-sdk[datasets]``).
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .errors import BioEngineUserError, MissingDataServerError

__all__ = [
    "BioEngineDatasets",
    "get_file",
    "get_saved_file",
    "list_datasets",
    "list_files",
    "list_saved_files",
    "ping_data_server",
    "refresh",
    "save_file",
    "set_chunk_cache_size_gb",
]

URL_VARIABLE = "BIOENGINE_DATA_SERVER_URL"
TOKEN_VARIABLE = "HYPHA_TOKEN"
TIMEOUT = 60.0
_READ_ONLY = (
    "this BioEngine's dataset server is read-only (datasets are folders on the worker's file "
    "system, published by its operator): there is no saved-files area. Write results to the "
    "app's working directory or return them from a method instead"
)


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except Exception:
        return body.decode(errors="replace")[:500]


class BioEngineDatasets:
    """A client of one dataset server. ``url``/``token`` default to the environment, read when
    a request is made (so ``refresh()`` or a changed variable takes effect)."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = TIMEOUT):
        self._fixed_url = url
        self._fixed_token = token
        self.timeout = timeout

    @property
    def url(self) -> str | None:
        url = self._fixed_url or os.environ.get(URL_VARIABLE) or None
        return url.rstrip("/") if url else None

    def _token(self, token: str | None) -> str | None:
        return token or self._fixed_token or os.environ.get(TOKEN_VARIABLE) or None

    def _base(self) -> str:
        url = self.url
        if not url:
            raise MissingDataServerError(
                f"bioengine.datasets needs a dataset server, and {URL_VARIABLE} is not set. BioEngine sets "
                "it in app replicas when the worker serves datasets; for a local test, set it to a "
                "dataset server's HTTP URL"
            )
        return url

    def _get(self, path: str, token: str | None, query: str = "") -> bytes:
        url = f"{self._base()}{path}{'?' + query if query else ''}"
        request = urllib.request.Request(url)
        bearer = self._token(token)
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            message = f"{path}: {_error_message(exc.read())}"
            if exc.code in (401, 403):
                raise PermissionError(message) from None
            if exc.code == 404:
                raise FileNotFoundError(message) from None
            if exc.code == 400:
                raise ValueError(message) from None
            raise RuntimeError(f"the dataset server answered {exc.code}: {message}") from None
        except urllib.error.URLError as exc:
            raise ConnectionError(
                f"the dataset server at {self._base()} is not reachable: {exc.reason}"
            ) from None

    async def _get_async(self, path: str, token: str | None, query: str = "") -> bytes:
        return await asyncio.to_thread(self._get, path, token, query)

    @staticmethod
    def _path(dataset_id: str, relative: str | None = None) -> str:
        if not dataset_id or "/" in dataset_id:
            raise ValueError(f"{dataset_id!r} is not a dataset id")
        path = f"/data/{urllib.parse.quote(dataset_id, safe='')}"
        relative = (relative or "").strip("/")
        return f"{path}/{urllib.parse.quote(relative, safe='/')}" if relative else path

    async def list_datasets(self, token: str | None = None) -> dict[str, Any]:
        """Every dataset the token may read, by id, with its manifest information; ``{}`` where
        no dataset server is configured."""
        if not self.url:
            return {}
        result: dict[str, Any] = json.loads(await self._get_async("/datasets", token))
        return result

    async def list_files(
        self, dataset_id: str, dir_path: str | None = None, recursive: bool = True, token: str | None = None
    ) -> list[str]:
        """Files of a dataset below ``dir_path``, relative to it. ``recursive=False``: only the
        entries directly in ``dir_path``, directories (a ``*.zarr`` store, ...) with a final ``/``."""
        answer = json.loads(await self._get_async(self._path(dataset_id, dir_path), token, "list=1"))
        files: list[str] = answer["files"]
        if recursive:
            return files
        entries: dict[str, None] = {}
        for file in files:
            head, slash, _ = file.partition("/")
            entries[head + slash] = None
        return list(entries)

    async def get_file(self, dataset_id: str, file_path: str, token: str | None = None) -> Any:
        """A file's bytes; for a ``*.zarr`` path, a read-only zarr store (``zarr.open(store)``),
        which the caller closes (``store.close()``)."""
        if file_path.rstrip("/").endswith(".zarr"):
            try:
                from bioengine_datasets_client import HttpZarrStore
            except ImportError:
                raise BioEngineUserError(
                    "opening a .zarr dataset needs the zarr client: pip install 'bioengine-services-sdk[datasets]' "
                    "(or add bioengine-datasets-client to the app's pip)"
                ) from None
            return HttpZarrStore(
                f"{self._base()}{self._path(dataset_id, file_path)}", token=self._token(token)
            )
        return await self._get_async(self._path(dataset_id, file_path), token)

    async def ping_data_server(self) -> bool:
        """True if the dataset server answers its health check."""
        try:
            answer = json.loads(await self._get_async("/health", None))
        except ConnectionError:
            return False
        return bool(answer.get("status") == "ok")

    def refresh(self) -> None:
        """Forget an explicit URL/token: the environment's are read again."""
        self._fixed_url = self._fixed_token = None

    def set_chunk_cache_size_gb(self, gb: float) -> None:
        """Accepted for compatibility; our zarr store keeps no chunk cache (zarr reads chunks in
        batched HTTP requests), so there is nothing to size."""
        if gb < 0:
            raise ValueError("the cache size cannot be negative")

    async def save_file(
        self, filename: str, content: Any, public: bool = False, token: str | None = None
    ) -> Any:
        raise NotImplementedError(f"bioengine.datasets.save_file: {_READ_ONLY}")

    async def list_saved_files(
        self, public: bool = False, dir_path: str | None = None, token: str | None = None
    ) -> Any:
        raise NotImplementedError(f"bioengine.datasets.list_saved_files: {_READ_ONLY}")

    async def get_saved_file(self, filename: str, public: bool = False, token: str | None = None) -> Any:
        raise NotImplementedError(f"bioengine.datasets.get_saved_file: {_READ_ONLY}")


#: The process's client (``bioengine.datasets.<function>`` uses it).
client = BioEngineDatasets()

list_datasets = client.list_datasets
list_files = client.list_files
get_file = client.get_file
ping_data_server = client.ping_data_server
refresh = client.refresh
set_chunk_cache_size_gb = client.set_chunk_cache_size_gb
save_file = client.save_file
list_saved_files = client.list_saved_files
get_saved_file = client.get_saved_file
