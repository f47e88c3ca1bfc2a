"""``self.bioengine_datasets`` of every app replica: the worker's datasets, ready to open.

The datasets server's URL is looked up through Hypha (``bioengine-datasets.get_status``) when
first needed and again after a failure, so it is never frozen into the app at build time. Data
is read with the app's ``HYPHA_TOKEN`` (``deploy_app(hypha_token=...)``): the datasets the
deploying user chose to share with the app; without one, only public datasets. Nothing here
runs in a health check: an outage of the datasets server fails only the calls that read data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from bioengine_common import trusted_service_id

from . import kv

__all__ = ["AppDatasets", "DatasetsUnavailable"]


class DatasetsUnavailable(RuntimeError):
    """The datasets service cannot be reached or found."""


class AppDatasets:
    def __init__(self, application_id: str | None = None):
        self.application_id = application_id or os.environ.get("BIOENGINE_APPLICATION_ID", "")
        self.hypha_url = os.environ.get("HYPHA_SERVER_URL", "")
        self.workspace = os.environ.get("HYPHA_WORKSPACE", "")
        self.service_id = os.environ.get("BIOENGINE_DATASETS_SERVICE_ID", "bioengine-datasets")
        #: Only a datasets service registered by these users is asked for the server's URL: the
        #: app's HYPHA_TOKEN goes to that URL, so a look-alike service must not supply it.
        self.services_users = [u for u in os.environ.get("BIOENGINE_SERVICES_USERS", "").split(",") if u]
        self._url: str | None = None

    @property
    def token(self) -> str | None:
        return os.environ.get("HYPHA_TOKEN") or None

    async def server_url(self, refresh: bool = False) -> str:
        """The datasets HTTP server's base URL, looked up through Hypha."""
        if self._url and not refresh:
            return self._url
        from hypha_rpc import connect_to_server

        secrets = await asyncio.to_thread(kv.get_json, kv.secrets_key(self.application_id)) or {}
        server = None
        try:
            server = await asyncio.wait_for(
                connect_to_server(
                    {
                        "server_url": self.hypha_url,
                        "workspace": self.workspace,
                        "token": secrets.get("proxy_token"),
                    }
                ),
                10,
            )
            if self.services_users:
                full_id = await trusted_service_id(
                    server, self.workspace, self.service_id, self.services_users
                )
            else:
                full_id = self.service_id
            service = await asyncio.wait_for(server.get_service(full_id, {"mode": "random"}), 10)
            status = await asyncio.wait_for(service.get_status(), 10)
        except Exception as exc:
            raise DatasetsUnavailable(
                f"the datasets service '{self.service_id}' is not reachable: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.disconnect()
        url = status.get("http_url")
        if not url:
            raise DatasetsUnavailable(f"'{self.service_id}' reports no HTTP server yet")
        self._url = str(url).rstrip("/")
        return self._url

    async def open(self, dataset_id: str, path: str = "", **store_options: Any) -> Any:
        """``zarr.open`` of a dataset's array or group over HTTP (read-only)."""
        from bioengine_datasets_client import DatasetAccessError, open_dataset

        for attempt in (1, 2):
            url = await self.server_url(refresh=attempt == 2)
            try:
                return await asyncio.to_thread(
                    open_dataset, url, dataset_id, path, token=self.token, **store_options
                )
            except DatasetAccessError:  # the server answered: no access, or no such data
                raise
            except Exception as exc:  # unreachable: the server may have moved; look it up again
                if attempt == 2:
                    raise DatasetsUnavailable(
                        f"the datasets server at {url} is not reachable: {type(exc).__name__}: {exc}"
                    ) from exc
        raise AssertionError("unreachable")
