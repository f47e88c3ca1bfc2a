"""The options of the Ray cluster, declared once: bioengine-cluster's settings and the
bioengine-worker launcher's flags (handed on to bioengine-cluster) both come from
:class:`ClusterOptions`, with the same names, defaults, constraints and descriptions (their
``--help`` shows the same text).

A field ``slurm_worker_cpus`` is the flag ``--slurm-worker-cpus`` and the variable
``BIOENGINE_SLURM_WORKER_CPUS`` (see :func:`bioengine_common.load_settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CLUSTER_OPTIONS", "MIN_WORKER_MEMORY_GB", "ClusterMode", "ClusterOptions"]

ClusterMode = Literal["single-machine", "slurm", "external-cluster"]

#: The smallest memory of a SLURM worker job in GB: Ray needs room for its raylet and object store.
MIN_WORKER_MEMORY_GB = 0.5


class ClusterOptions(BaseModel):
    """How the Ray cluster is provided and, in slurm mode, how its worker jobs look and scale."""

    model_config = ConfigDict(extra="forbid")

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
    ray_token_file: Path | None = Field(
        None,
        description="The Ray cluster's token file (token authentication; only its path is ever passed "
        "on). single-machine and slurm: default <workspace-dir>/ray/auth_token, created once with a "
        "random token, mode 0600, and reused. external-cluster: the token file of that cluster "
        "(unset: connect without a token); cannot be used with a ray:// address.",
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

    app_sandbox: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Start the Ray head, and in slurm mode each worker job, in Linux namespaces that "
        "hide the workspace dir and the service processes from app code and run_code (see the "
        "README's security model). auto: on where the kernel allows user namespaces, else off "
        "with a warning in the status; on: refuse to start without it.",
    )
    app_sandbox_hide: list[Path] = Field(
        default_factory=list,
        description="More paths hidden from app code, e.g. the data folder of bioengine-datasets when it is outside the "
        "workspace dir (one per value).",
    )

    # ---- run_code ----
    run_code_caller_check: float = Field(
        5.0,
        ge=0,
        description="Seconds between checks that a run_code caller is still connected to Hypha "
        "(0: never check).",
    )
    run_code_caller_grace: float = Field(
        15.0,
        ge=0,
        description="A run_code whose caller has not been connected to Hypha for this long is cancelled.",
    )

    # ---- slurm mode: Ray workers as SLURM jobs ----
    slurm_worker_cpus: int = Field(1, ge=1, description="slurm: CPUs per worker job (and Ray's --num-cpus).")
    slurm_worker_memory_gb: float = Field(
        4.0,
        ge=MIN_WORKER_MEMORY_GB,
        description="slurm: memory per worker job in GB (60% to Ray tasks, 30% object store).",
    )
    slurm_worker_gpus: int = Field(0, ge=0, description="slurm: GPUs per worker job (and Ray's --num-gpus).")
    slurm_gpu_flag: str = Field(
        "--gres=gpu:{gpus}", description="slurm: the sbatch option asking for GPUs; {gpus} is the count."
    )
    slurm_time_limit: str = Field(
        "04:00:00", description="slurm: walltime of a worker job (--time: minutes, [D-]HH:MM[:SS])."
    )
    slurm_partition: str | None = Field(None, description="slurm: --partition (default: SLURM's default).")
    slurm_account: str | None = Field(None, description="slurm: --account (default: the user's default).")
    slurm_extra_sbatch: list[str] = Field(
        default_factory=list, description="slurm: more sbatch options, e.g. --qos=short (one per value)."
    )
    slurm_prologue: str = Field(
        "", description="slurm: shell code run in each job before Ray starts (module load, exports)."
    )
    slurm_image: str | None = Field(
        None, description="slurm: run Ray inside `apptainer exec` with this image; plain if unset."
    )
    slurm_binds: list[str] = Field(default_factory=list, description="slurm: apptainer --bind entries.")
    slurm_ray_executable: str | None = Field(
        None,
        description="slurm: the `ray` command of the jobs (default: this environment's ray, or `ray` "
        "inside the image).",
    )
    slurm_min_workers: int = Field(0, ge=0, description="slurm: worker jobs kept even without demand.")
    slurm_max_workers: int = Field(
        4, ge=0, description="slurm: most worker jobs at once (pending + running)."
    )
    slurm_idle_timeout: float = Field(
        300.0, gt=0, description="slurm: seconds before an idle worker is cancelled."
    )
    slurm_pending_timeout: float = Field(
        600.0, gt=0, description="slurm: seconds before a job still pending in the queue is cancelled."
    )
    slurm_join_timeout: float = Field(
        300.0, gt=0, description="slurm: seconds a running job may take for its Ray node to join."
    )
    slurm_backoff: float = Field(
        10.0,
        gt=0,
        description="slurm: seconds to wait after a failed sbatch or a job given up (doubling each "
        "time, up to --slurm-backoff-max).",
    )
    slurm_backoff_max: float = Field(
        300.0, gt=0, description="slurm: longest wait between launch attempts (cap of the doubling)."
    )
    slurm_tag: str | None = Field(
        None,
        description="slurm: tag naming this worker's jobs (bioengine-<tag>-worker); default derived "
        "from the workspace dir, so a restarted service finds its jobs again.",
    )
    slurm_poll_interval: float = Field(5.0, gt=0, description="slurm: seconds between scaling rounds.")


#: The names of the cluster options, in declaration order.
CLUSTER_OPTIONS: tuple[str, ...] = tuple(ClusterOptions.model_fields)
