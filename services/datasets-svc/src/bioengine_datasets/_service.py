"""The ``bioengine-datasets`` service: dataset registry, HTTP server and RPC."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from hypha_rpc.utils.schema import schema_method
from pydantic import Field

from bioengine_common import BioEngineService, InvalidRequest, ServiceSettings
from bioengine_common.contracts import worker
from bioengine_common.metrics import gauge

from ._access import TokenValidator, may_read, readable_dataset
from ._endpoint import Endpoint, open_http_socket
from ._http import PathOnlyAccessLogger, build_app
from ._paths import resolve_inside
from ._registry import Dataset, DatasetRegistry


class DatasetsSettings(ServiceSettings):
    data_dir: Path | None = Field(
        None, description="Directory of dataset folders; default <workspace-dir>/datasets."
    )
    http_host: str = Field(
        "127.0.0.1", description="Address the HTTP server binds (0.0.0.0 for cluster nodes)."
    )
    http_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the HTTP server; 0 picks a free one on the first start and keeps it "
        "across restarts (remembered under <workspace-dir>/state/datasets/, per --client-id, or per "
        "replica slot without one); a remembered port taken by another process is replaced by a new "
        "one, with a warning in the log.",
    )
    public_url: str | None = Field(
        None, description="URL clients use to reach the HTTP server; default http://<http-host>:<port>."
    )
    scan_interval: float = Field(5.0, gt=0, description="Seconds between rescans of the data directory.")
    size_interval: float = Field(
        300.0,
        gt=0,
        description="Seconds before a dataset's size (a walk of all its files) is measured again.",
    )


class DatasetsService(BioEngineService):
    name = "datasets"
    service_id = "bioengine-datasets"
    distribution = "datasets-svc"
    description = "Streams Zarr datasets over HTTP with per-dataset access control."
    settings_model = DatasetsSettings
    settings: DatasetsSettings

    def __init__(self, settings: DatasetsSettings):
        super().__init__(settings)
        self.registry = DatasetRegistry(self.data_dir)
        self.validator = TokenValidator(settings.server_url)
        self._runner: web.AppRunner | None = None
        self.endpoint: Endpoint | None = None
        self.http_url: str | None = None

    @property
    def data_dir(self) -> Path:
        return (self.settings.data_dir or self.settings.workspace_dir / "datasets").expanduser().resolve()

    async def _rescan(self, measure: bool = True) -> None:
        """Rescan; with ``measure``, also the sizes that are due (never before serving starts:
        a walk of every file of a large data dir takes a while)."""
        before = dict(self.registry.problems)
        changed, removed = await asyncio.to_thread(self.registry.refresh)
        if measure:
            await asyncio.to_thread(self.registry.measure_sizes, self.settings.size_interval, time.time())
        for dataset_id in sorted(changed):
            self.logger.info(
                "Dataset '%s' loaded from %s", dataset_id, self.registry.datasets[dataset_id].root
            )
        for dataset_id in sorted(removed):
            self.logger.info("Dataset '%s' removed", dataset_id)
        for folder, problem in self.registry.problems.items():
            if before.get(folder) != problem:
                self.logger.warning("Skipped dataset folder '%s': %s", folder, problem)

    async def initialize(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self._rescan(measure=False)
        app = build_app(self.registry, self.validator, self.admin_users)
        # Access log and the server's own error log both through this service's logger, whose
        # formatter escapes what comes from requests.
        self._runner = web.AppRunner(
            app, access_log=self.logger, access_log_class=PathOnlyAccessLogger, logger=self.logger
        )
        await self._runner.setup()
        settings = self.settings
        self.endpoint = await asyncio.to_thread(
            open_http_socket, settings.http_host, settings.http_port, settings.workspace_dir,
            settings.client_id, self.logger,
        )  # fmt: skip
        site = web.SockSite(self._runner, self.endpoint.sock)
        await site.start()
        port = self.endpoint.port
        host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "", "::") else settings.http_host
        if ":" in host:
            host = f"[{host}]"
        self.http_url = (settings.public_url or f"http://{host}:{port}").rstrip("/")
        self.logger.info(
            "Serving %d datasets from %s at %s (%s)",
            len(self.registry.datasets), self.data_dir, self.http_url, self.endpoint.describe(),
        )  # fmt: skip

    async def monitor(self) -> None:
        while True:
            await asyncio.sleep(self.settings.scan_interval)
            await self._rescan()

    async def cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self.endpoint is not None:
            self.endpoint.sock.close()
            if self.endpoint.slot is not None:
                self.endpoint.slot.release()

    def collect_metrics(self) -> Any:
        datasets = gauge("bioengine_datasets", "Datasets served (folders with a valid manifest).")
        datasets.add_metric([], len(self.registry.datasets))
        return [datasets]

    def status_details(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "data_dir_exists": self.data_dir.is_dir(),
            "http_url": self.http_url,
            "http_port": self.endpoint.status() if self.endpoint else None,
            "datasets": len(self.registry.datasets),
            "skipped": dict(self.registry.problems),
        }

    # ---- RPC ---------------------------------------------------------------------------------------
    def _dataset(self, dataset_id: str, context: Any, caller: Any) -> Dataset:
        """The dataset, or DatasetUnreadable: the same for a missing one and a private one."""
        user = self.caller_context(context, caller)["user"]
        return readable_dataset(self.registry.datasets, dataset_id, user, self.admin_users)

    @worker.list_datasets.implementation
    async def list_datasets(self, caller: dict | None = None, context: dict | None = None) -> dict:
        user = self.caller_context(context, caller)["user"]
        return {
            i: d.info(self.registry.size_of(i))
            for i, d in self.registry.datasets.items()
            if may_read(user, d, self.admin_users)
        }

    @schema_method
    async def get_dataset_info(
        self,
        dataset_id: str = Field(..., description="Dataset id."),
        caller: dict | None = None,
        context: dict | None = None,
    ) -> dict:
        """Manifest, zarr stores and HTTP URL of one dataset."""
        dataset = self._dataset(dataset_id, context, caller)
        return {
            **dataset.info(self.registry.size_of(dataset.id)),
            "http_url": f"{self.http_url}/data/{dataset.id}",
        }

    @schema_method
    async def list_files(
        self,
        dataset_id: str = Field(..., description="Dataset id."),
        dir_path: str = Field("", description="Directory inside the dataset; empty for its top level."),
        caller: dict | None = None,
        context: dict | None = None,
    ) -> list:
        """Entries of a directory of a dataset: [{name, type: file|directory, size}]."""
        dataset = self._dataset(dataset_id, context, caller)
        target = resolve_inside(dataset.root, dir_path) if dir_path else dataset.root
        if not target.is_dir():
            raise InvalidRequest(f"'{dir_path}' is not a directory")

        def entries() -> list[dict[str, Any]]:
            result = []
            for entry in sorted(os.scandir(target), key=lambda e: e.name):
                is_dir = entry.is_dir()
                result.append(
                    {
                        "name": entry.name,
                        "type": "directory" if is_dir else "file",
                        "size": None if is_dir else entry.stat().st_size,
                    }
                )
            return result

        return await asyncio.to_thread(entries)

    @schema_method
    async def get_access_url(
        self,
        dataset_id: str = Field(..., description="Dataset id."),
        path: str = Field("", description="Path inside the dataset, e.g. image.zarr."),
        caller: dict | None = None,
        context: dict | None = None,
    ) -> dict:
        """Where to read a dataset over HTTP: send your own Hypha token as `Authorization: Bearer`."""
        dataset = self._dataset(dataset_id, context, caller)
        if path:
            resolve_inside(dataset.root, path)
        url = f"{self.http_url}/data/{dataset.id}" + (f"/{path.strip('/')}" if path else "")
        return {
            "url": url,
            "server_url": self.http_url,
            "dataset_id": dataset.id,
            "auth": "Authorization: Bearer <your Hypha token>",
        }
