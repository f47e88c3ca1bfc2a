"""The ``bioengine-apps`` service. App deployment arrives in a later step; today it reports its directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from bioengine_common import BioEngineService, ServiceSettings


class AppsSettings(ServiceSettings):
    apps_dir: Path | None = Field(
        None, description="Where app files are placed; default <workspace-dir>/apps."
    )


class AppsService(BioEngineService):
    name = "apps"
    service_id = "bioengine-apps"
    distribution = "apps-svc"
    description = "Uploads, deploys and exposes AI model apps on Ray Serve."
    settings_model = AppsSettings
    settings: AppsSettings

    @property
    def apps_dir(self) -> Path:
        return (self.settings.apps_dir or self.settings.workspace_dir / "apps").expanduser()

    def status_details(self) -> dict[str, Any]:
        return {"apps_dir": str(self.apps_dir)}
