"""The ``bioengine-cluster`` service. Ray is managed here in a later step; today it reports its mode."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bioengine_common import BioEngineService, ServiceSettings

ClusterMode = Literal["single-machine", "slurm", "external-cluster"]


class ClusterSettings(ServiceSettings):
    mode: ClusterMode = Field(
        "single-machine",
        description="How the Ray cluster is provided: started on this machine, grown with SLURM "
        "jobs, or an existing cluster.",
    )


class ClusterService(BioEngineService):
    name = "cluster"
    service_id = "bioengine-cluster"
    distribution = "cluster-svc"
    description = "Runs or connects the worker's Ray cluster and reports its resources."
    settings_model = ClusterSettings
    settings: ClusterSettings

    def status_details(self) -> dict[str, Any]:
        return {"mode": self.settings.mode, "ray_cluster": None}
