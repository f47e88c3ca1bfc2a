"""Settings of bioengine-cluster: every service's, the cluster options (declared once in
:mod:`bioengine_common.cluster_options`, shared with the bioengine-worker launcher) and its own."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import Field

from bioengine_common import ServiceSettings
from bioengine_common.cluster_options import ClusterMode, ClusterOptions

__all__ = ["ClusterMode", "ClusterSettings"]


class ClusterSettings(ClusterOptions, ServiceSettings):
    """Flags of bioengine-cluster (each also a ``BIOENGINE_*`` environment variable)."""

    ray_temp_dir: Path | None = Field(
        None,
        description="Ray's temp dir (sessions, logs, sockets); default <workspace-dir>/ray. When "
        "that path is too long for Ray's socket paths, Ray is given a short link to it, "
        "/tmp/bioengine-ray-<hash>; Ray's files stay in the directory.",
    )
    dashboard: bool = Field(False, description="Run the Ray dashboard (about 1 GB more memory).")
    status_interval: float = Field(5.0, gt=0, description="Seconds between cluster samples.")
    status_history: int = Field(100, ge=1, description="Number of cluster samples kept.")
    connect_timeout: float = Field(60.0, gt=0, description="Seconds to wait for the Ray driver connection.")

    def resolved_ray_token_file(self) -> Path | None:
        """The token file: --ray-token-file, or for a head started here the default path."""
        if self.ray_token_file is not None:
            return self.ray_token_file.expanduser().resolve()
        if self.mode == "external-cluster":
            return None
        return (self.workspace_dir.expanduser() / "ray" / "auth_token").resolve()

    def resolved_slurm_tag(self) -> str:
        """The jobs' tag: --slurm-tag, or a stable digest of the workspace dir."""
        if self.slurm_tag:
            return self.slurm_tag
        path = str(self.workspace_dir.expanduser().resolve())
        return "w" + hashlib.sha256(path.encode()).hexdigest()[:10]
