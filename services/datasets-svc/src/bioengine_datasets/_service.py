"""The ``bioengine-datasets`` service. Streaming arrives in a later step; today it reports its data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from bioengine_common import BioEngineService, ServiceSettings


class DatasetsSettings(ServiceSettings):
    data_dir: Path | None = Field(
        None, description="Directory of dataset folders; default <workspace-dir>/datasets."
    )


class DatasetsService(BioEngineService):
    name = "datasets"
    service_id = "bioengine-datasets"
    distribution = "datasets-svc"
    description = "Streams Zarr datasets over HTTP with per-dataset access control."
    settings_model = DatasetsSettings
    settings: DatasetsSettings

    @property
    def data_dir(self) -> Path:
        return (self.settings.data_dir or self.settings.workspace_dir / "datasets").expanduser()

    def status_details(self) -> dict[str, Any]:
        return {"data_dir": str(self.data_dir), "data_dir_exists": self.data_dir.is_dir()}
