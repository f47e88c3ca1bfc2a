"""The settings of SLURM worker jobs: the size of one job and everything around it (pure).

Every worker job is named ``bioengine-<tag>-worker`` and carries ``--comment=bioengine:<tag>``;
the tag is unique per BioEngine worker, so one worker only ever touches its own jobs.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bioengine_common.cluster_options import MIN_WORKER_MEMORY_GB
from bioengine_common.local_stack import Sandbox

from .._resources import GIB, fits

__all__ = [
    "JOB_RESOURCE_PREFIX",
    "OBJECT_STORE_FRACTION",
    "RAY_MEMORY_FRACTION",
    "TAG_PATTERN",
    "JobSpec",
    "SlurmSettings",
    "fits_after_scale_up",
    "job_comment",
    "job_name",
    "one_line",
    "worker_resources",
]

#: Share of a job's memory given to Ray's object store, and to Ray's ``memory`` resource (the
#: rest is left to the raylet, the workers' own overhead and the prologue).
OBJECT_STORE_FRACTION = 0.3
RAY_MEMORY_FRACTION = 0.6

#: Prefix of the custom Ray resource each worker node advertises (``slurm_job_id:<id>``).
JOB_RESOURCE_PREFIX = "slurm_job_id:"

TAG_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,46}[A-Za-z0-9])?$")
_TIME_RE = re.compile(
    r"^(?:\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}|\d+-\d{1,2}:\d{1,2}|\d+-\d{1,2}:\d{1,2}:\d{1,2}"
    r"|UNLIMITED|INFINITE)$"
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.,+@%-]+$")  # partition, account: one word, no shell syntax


def job_name(tag: str) -> str:
    """The SLURM job name of every worker job of the BioEngine worker with ``tag``."""
    return f"bioengine-{tag}-worker"


def job_comment(tag: str) -> str:
    """The SLURM job comment of every worker job of the BioEngine worker with ``tag``."""
    return f"bioengine:{tag}"


def one_line(field: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"{field}: must be a single line, got {value!r}")
    return value


class JobSpec(BaseModel):
    """The size of one worker job."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    cpus: int = Field(1, ge=1, description="CPUs per job (--cpus-per-task) and Ray's --num-cpus.")
    memory_gb: float = Field(
        4.0,
        ge=MIN_WORKER_MEMORY_GB,
        description="Memory per job in GB (--mem); Ray gets "
        f"{RAY_MEMORY_FRACTION:.0%} as its memory resource and {OBJECT_STORE_FRACTION:.0%} as object store.",
    )
    gpus: int = Field(0, ge=0, description="GPUs per job (through gpu_flag_template) and Ray's --num-gpus.")
    time_limit: str = Field(
        "04:00:00", description="Walltime (--time): minutes, [D-]HH:MM[:SS], or UNLIMITED."
    )

    @field_validator("time_limit")
    @classmethod
    def _check_time(cls, value: str) -> str:
        value = value.strip()
        if not _TIME_RE.match(value):
            raise ValueError(
                f"time_limit: not a SLURM time ('MM', 'HH:MM:SS', 'D-HH:MM:SS' or 'UNLIMITED'): {value!r}"
            )
        return value

    def memory_mb(self) -> int:
        return math.ceil(self.memory_gb * 1024)

    def ray_resources(self) -> dict[str, float]:
        """The Ray resources the node of such a job offers (what demand is packed into)."""
        resources = {
            "CPU": float(self.cpus),
            "memory": float(int(self.memory_gb * GIB * RAY_MEMORY_FRACTION)),
        }
        if self.gpus:
            resources["GPU"] = float(self.gpus)
        return resources


class SlurmSettings(JobSpec):
    """Everything a BioEngine worker needs to run Ray workers as SLURM jobs."""

    tag: str = Field(
        description="Unique per BioEngine worker: names its jobs (bioengine-<tag>-worker) and "
        "comments them (bioengine:<tag>); only jobs with this tag are ever touched."
    )
    gpu_flag_template: str = Field(
        "--gres=gpu:{gpus}", description="sbatch option asking for GPUs; {gpus} is the count."
    )
    partition: str | None = Field(None, description="--partition (default: the cluster's default).")
    account: str | None = Field(None, description="--account (default: the user's default).")
    extra_sbatch_lines: list[str] = Field(
        default_factory=list,
        description="More sbatch options, one per entry: '#SBATCH --qos=short' or '--qos=short'.",
    )
    prologue: str = Field(
        "",
        description="Shell code run in the job before Ray starts (module load, conda activate, "
        "exports); inserted verbatim.",
    )
    apptainer_image: str | None = Field(
        None, description="Run Ray inside `apptainer exec` with this image (.sif or URI); plain if unset."
    )
    apptainer_binds: list[str] = Field(default_factory=list, description="--bind src[:dst[:opts]] entries.")
    apptainer_args: list[str] = Field(
        default_factory=list, description="More `apptainer exec` options (--nv is added when gpus > 0)."
    )
    apptainer_executable: str = Field("apptainer", description="apptainer or singularity.")
    sandbox: Sandbox | None = Field(
        None,
        description="Run Ray (without an image) in namespaces hiding these paths from app code; "
        "a node that cannot make them runs Ray plainly with a warning in the job's output, or "
        "with sandbox_required, fails.",
    )
    sandbox_required: bool = Field(False, description="Fail a job whose node cannot sandbox Ray.")
    head_address: str | None = Field(None, description="The Ray head's GCS address, host:port.")
    ray_token_file: str | None = Field(
        None,
        description="The cluster's Ray token file (token authentication), as the job sees it: only "
        "this path is in the script (RAY_AUTH_TOKEN_PATH); None: authentication disabled.",
    )
    ray_temp_dir: str | None = Field(None, description="--temp-dir of the worker's Ray (node-local).")
    ray_executable: str = Field("ray", description="The `ray` command in the job (or the image).")
    worker_command: str | None = Field(
        None,
        description="Shell command run instead of `ray start` (tests, benchmarks); inside the image "
        "when one is set.",
    )
    work_dir: str | None = Field(None, description="--chdir of the job.")
    log_dir: str | None = Field(
        None,
        description="Directory of the jobs' output files (<log_dir>/%x-%j.out); must exist before the "
        "job starts (SlurmCommands.submit creates it). Default: the job's working directory.",
    )
    min_workers: int = Field(0, ge=0, description="Worker jobs kept running even without demand.")
    max_workers: int = Field(4, ge=0, description="Most worker jobs at once (pending + running).")
    idle_timeout_s: float = Field(300.0, gt=0, description="Cancel a worker idle this long.")
    pending_timeout_s: float = Field(
        600.0, gt=0, description="Cancel a job still pending in the queue after this long."
    )
    join_timeout_s: float = Field(
        300.0, gt=0, description="Cancel a running job whose Ray node has not joined after this long."
    )
    backoff_initial_s: float = Field(10.0, gt=0, description="Wait after the first failed sbatch.")
    backoff_max_s: float = Field(300.0, gt=0, description="Longest wait between sbatch attempts.")

    @field_validator("tag")
    @classmethod
    def _check_tag(cls, value: str) -> str:
        if not TAG_PATTERN.match(value):
            raise ValueError(
                f"tag: 1-48 letters, digits, '_', '.', '-', starting and ending with a letter or digit; "
                f"got {value!r}"
            )
        return value

    @field_validator("gpu_flag_template")
    @classmethod
    def _check_gpu_template(cls, value: str) -> str:
        one_line("gpu_flag_template", value)
        if not value.startswith("-"):
            raise ValueError(f"gpu_flag_template: must be an sbatch option starting with '-', got {value!r}")
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as error:
            raise ValueError(f"gpu_flag_template: {error}") from None
        if fields != {"gpus"}:
            raise ValueError(f"gpu_flag_template: must use exactly the field {{gpus}}, got {value!r}")
        return value

    @field_validator("partition", "account")
    @classmethod
    def _check_word(cls, value: str | None, info: Any) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError(f"{info.field_name}: not a valid SLURM name: {value!r}")
        return value

    @field_validator("extra_sbatch_lines")
    @classmethod
    def _check_extra(cls, lines: list[str]) -> list[str]:
        result = []
        for index, line in enumerate(lines):
            one_line(f"extra_sbatch_lines[{index}]", line)
            line = line.strip()
            if line.startswith("#SBATCH"):
                rest = line[len("#SBATCH") :]
                if not rest.startswith((" ", "\t")) or not rest.strip().startswith("-"):
                    raise ValueError(
                        f"extra_sbatch_lines[{index}]: expected '#SBATCH --option', got {line!r}"
                    )
                result.append("#SBATCH " + rest.strip())
            elif line.startswith("-"):
                result.append("#SBATCH " + line)
            else:
                raise ValueError(
                    f"extra_sbatch_lines[{index}]: must start with '#SBATCH' or '-', got {line!r}"
                )
        return result

    @field_validator("prologue")
    @classmethod
    def _check_prologue(cls, value: str) -> str:
        if "\0" in value:
            raise ValueError("prologue: must not contain NUL characters")
        return value

    @field_validator(
        "apptainer_image",
        "head_address",
        "ray_token_file",
        "ray_temp_dir",
        "ray_executable",
        "apptainer_executable",
        "worker_command",
        "work_dir",
        "log_dir",
    )
    @classmethod
    def _check_line(cls, value: str | None, info: Any) -> str | None:
        if value is not None:
            one_line(info.field_name, value)
            if not value.strip():
                raise ValueError(f"{info.field_name}: must not be empty")
        return value

    @field_validator("apptainer_binds", "apptainer_args")
    @classmethod
    def _check_lines(cls, values: list[str], info: Any) -> list[str]:
        for index, value in enumerate(values):
            one_line(f"{info.field_name}[{index}]", value)
            if not value.strip():
                raise ValueError(f"{info.field_name}[{index}]: must not be empty")
        return values

    @model_validator(mode="after")
    def _check_counts(self) -> SlurmSettings:
        if self.min_workers > self.max_workers:
            raise ValueError(f"min_workers: {self.min_workers} is more than max_workers ({self.max_workers})")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s: {self.backoff_max_s} is less than backoff_initial_s ({self.backoff_initial_s})"
            )
        return self

    def job_spec(self) -> JobSpec:
        return JobSpec(cpus=self.cpus, memory_gb=self.memory_gb, gpus=self.gpus, time_limit=self.time_limit)


def worker_resources(spec: JobSpec) -> dict[str, float]:
    """The Ray resources one new worker job of ``spec`` offers: ``scale_up_node`` for the fit check."""
    return spec.ray_resources()


def fits_after_scale_up(request_resources: Mapping[str, float], spec: JobSpec) -> bool:
    """Would ``request_resources`` (Ray names: CPU, GPU, memory in bytes, custom) fit on one new
    worker job of ``spec``? False when ``spec`` is settings with ``max_workers == 0``."""
    if isinstance(spec, SlurmSettings) and spec.max_workers == 0:
        return False
    for name, amount in request_resources.items():
        if amount < 0 or amount != amount:
            raise ValueError(f"request_resources[{name!r}]: must be a non-negative number, got {amount}")
    return fits(request_resources, spec.ray_resources())
