"""Settings of bioengine-cluster: the shared ones plus the Ray cluster's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from bioengine_common import ServiceSettings

ClusterMode = Literal["single-machine", "slurm", "external-cluster"]


class ClusterSettings(ServiceSettings):
    mode: ClusterMode = Field(
        "single-machine",
        description="How the Ray cluster is provided: started on this machine, grown with SLURM "
        "jobs, or an existing cluster.",
    )
    head_address: str | None = Field(
        None,
        description="external-cluster: the cluster to join, host:port (driver) or ray://host:port "
        "(Ray Client). Other modes: the IP the head advertises (default: this host's IP).",
    )
    head_num_cpus: float | None = Field(
        None, ge=0, description="CPUs the head offers to tasks (default: all cores; 0 in slurm mode)."
    )
    head_num_gpus: float | None = Field(
        None, ge=0, description="GPUs the head offers to tasks (default: detected; 0 in slurm mode)."
    )
    head_memory_in_gb: float | None = Field(
        None, gt=0, description="Memory the head offers to tasks (default: Ray's choice)."
    )
    object_store_memory_in_gb: float | None = Field(
        None, gt=0, description="Object store size of the head (default: Ray's choice, 30% of RAM)."
    )
    ray_temp_dir: Path | None = Field(
        None,
        description="Ray's temp dir (sessions, logs, sockets); default <workspace-dir>/ray, or a short "
        "path under /tmp derived from it when that is too long for Ray's socket paths.",
    )
    dashboard: bool = Field(False, description="Run the Ray dashboard (about 1 GB more memory).")
    status_interval: float = Field(5.0, gt=0, description="Seconds between cluster samples.")
    status_history: int = Field(100, ge=1, description="Number of cluster samples kept.")
    connect_timeout: float = Field(60.0, gt=0, description="Seconds to wait for the Ray driver connection.")
