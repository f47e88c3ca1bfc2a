"""SLURM worker jobs: settings, the exact job script, ``squeue``/``sacct`` parsing, the scaling
policy and a thin adapter over the SLURM client commands.

Everything but :class:`SlurmCommands` is pure: no subprocess, no Ray, no clock. The service feeds
:func:`plan_scaling` an observation (this worker's jobs from ``squeue``, the Ray nodes, the pending
demand, the ``sbatch`` backoff state) and carries out the returned :class:`ScalingPlan` with
:class:`SlurmCommands`.

Conventions (checked against SLURM 22.05 from Debian, see ``infra/slurm/setup-slurm.sh``):

- Every worker job is named ``bioengine-<tag>-worker`` and carries ``--comment=bioengine:<tag>``;
  the tag is unique per BioEngine worker. ``squeue --name`` matches names exactly, so one worker's
  query never lists another's jobs; the comment is checked as well.
- Each job's Ray node advertises its job id three ways: ``RAY_CLOUD_INSTANCE_ID=$SLURM_JOB_ID``
  (what Ray's v2 autoscaler matches instances by), the custom resource ``slurm_job_id:<id>`` (what
  the cluster status reads) and the node labels ``bioengine-tag`` / ``bioengine-slurm-job-id``.
- ``scancel`` sends SIGTERM to ``ray start --block`` (the script ``exec``s it), which drains the node
  (``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S``) before SLURM's ``KillWait`` ends in SIGKILL.
- No secret reaches a job: ``sbatch`` exports its own environment by default (``--export=ALL``),
  so :class:`SlurmCommands` runs it with a scrubbed one (no ``BIOENGINE_*``/``HYPHA_*``, no
  token variables), and the script unsets those names once more. The Ray token goes by path
  only (``RAY_AUTH_TOKEN_PATH``): never in the script, ``squeue`` or ``scontrol`` output.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import pwd
import re
import shlex
import shutil
import string
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bioengine_common import scrub_environment

from ._status import PendingDemand

__all__ = [
    "ACTIVE_STATES",
    "SACCT_FIELDS",
    "SQUEUE_FORMAT",
    "BackoffState",
    "BlockedSubmission",
    "Canceller",
    "Decision",
    "JobCancel",
    "JobSpec",
    "JobState",
    "PendingDemand",
    "PendingVerdict",
    "RayWorkerNode",
    "ScalingInputs",
    "ScalingPlan",
    "SlurmCommandError",
    "SlurmCommands",
    "SlurmJob",
    "SlurmSettings",
    "cancelled_by_uid",
    "classify_pending_reason",
    "describe_loss",
    "fits_after_scale_up",
    "is_lost",
    "job_comment",
    "job_name",
    "normalize_state",
    "parse_kill_requests",
    "parse_sacct",
    "parse_squeue",
    "plan_scaling",
    "render_job_script",
    "worker_resources",
]

_GIB = 1024**3
_EPSILON = 1e-6

#: Share of a job's memory given to Ray's object store, and to Ray's ``memory`` resource (the
#: rest is left to the raylet, the workers' own overhead and the prologue).
OBJECT_STORE_FRACTION = 0.3
RAY_MEMORY_FRACTION = 0.6

#: A job pending for a reason that will not clear is given up after this long at most (SLURM may
#: show a passing reason right after submission), or after the pending timeout when shorter.
UNRUNNABLE_AFTER_S = 30.0

#: Prefix of the custom Ray resource each worker node advertises (``slurm_job_id:<id>``).
JOB_RESOURCE_PREFIX = "slurm_job_id:"

_TAG_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,46}[A-Za-z0-9])?$")
_TIME_RE = re.compile(
    r"^(?:\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}|\d+-\d{1,2}:\d{1,2}|\d+-\d{1,2}:\d{1,2}:\d{1,2}"
    r"|UNLIMITED|INFINITE)$"
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.,+@%-]+$")  # partition, account: one word, no shell syntax
_JOB_ID_RE = re.compile(r"^\d+(?:_\d+)?$")


def job_name(tag: str) -> str:
    """The SLURM job name of every worker job of the BioEngine worker with ``tag``."""
    return f"bioengine-{tag}-worker"


def job_comment(tag: str) -> str:
    """The SLURM job comment of every worker job of the BioEngine worker with ``tag``."""
    return f"bioengine:{tag}"


def _one_line(field: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"{field}: must be a single line, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
class JobSpec(BaseModel):
    """The size of one worker job."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    cpus: int = Field(1, ge=1, description="CPUs per job (--cpus-per-task) and Ray's --num-cpus.")
    memory_gb: float = Field(
        4.0,
        ge=0.5,
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
            "memory": float(int(self.memory_gb * _GIB * RAY_MEMORY_FRACTION)),
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
        if not _TAG_RE.match(value):
            raise ValueError(
                f"tag: 1-48 letters, digits, '_', '.', '-', starting and ending with a letter or digit; "
                f"got {value!r}"
            )
        return value

    @field_validator("gpu_flag_template")
    @classmethod
    def _check_gpu_template(cls, value: str) -> str:
        _one_line("gpu_flag_template", value)
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
            _one_line(f"extra_sbatch_lines[{index}]", line)
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
            _one_line(info.field_name, value)
            if not value.strip():
                raise ValueError(f"{info.field_name}: must not be empty")
        return value

    @field_validator("apptainer_binds", "apptainer_args")
    @classmethod
    def _check_lines(cls, values: list[str], info: Any) -> list[str]:
        for index, value in enumerate(values):
            _one_line(f"{info.field_name}[{index}]", value)
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


def _fits(needed: Mapping[str, float], offered: Mapping[str, float]) -> bool:
    return all(
        amount <= _EPSILON or offered.get(name, 0.0) + _EPSILON >= amount for name, amount in needed.items()
    )


def fits_after_scale_up(request_resources: Mapping[str, float], spec: JobSpec) -> bool:
    """Would ``request_resources`` (Ray names: CPU, GPU, memory in bytes, custom) fit on one new
    worker job of ``spec``? False when ``spec`` is settings with ``max_workers == 0``."""
    if isinstance(spec, SlurmSettings) and spec.max_workers == 0:
        return False
    for name, amount in request_resources.items():
        if amount < 0 or amount != amount:
            raise ValueError(f"request_resources[{name!r}]: must be a non-negative number, got {amount}")
    return _fits(request_resources, spec.ray_resources())


# ---------------------------------------------------------------------------------------------
# The job script
# ---------------------------------------------------------------------------------------------
def _q(value: str | float | int) -> str:
    return shlex.quote(str(value))


def render_job_script(
    settings: SlurmSettings, head_address: str | None = None, *, job: JobSpec | None = None
) -> str:
    """The exact batch script of one worker job (what ``sbatch`` receives on stdin).

    ``head_address`` overrides ``settings.head_address``; ``job`` overrides the job size.
    """
    job = job or settings.job_spec()
    head = head_address if head_address is not None else settings.head_address
    if head is not None:
        _one_line("head_address", head)
    if settings.worker_command is None and not (head and head.strip()):
        raise ValueError("head_address: required to start Ray workers (set it or pass head_address)")
    tag = settings.tag
    name = job_name(tag)

    directives = [
        f"--job-name={name}",
        f"--comment={job_comment(tag)}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={job.cpus}",
        f"--mem={job.memory_mb()}M",
    ]
    if job.gpus > 0:
        directives.append(settings.gpu_flag_template.format(gpus=job.gpus))
    directives.append(f"--time={job.time_limit}")
    if settings.partition:
        directives.append(f"--partition={settings.partition}")
    if settings.account:
        directives.append(f"--account={settings.account}")
    if settings.work_dir:
        directives.append(f"--chdir={settings.work_dir}")
    output = f"{settings.log_dir.rstrip('/')}/%x-%j.out" if settings.log_dir else "%x-%j.out"
    directives.append(f"--output={output}")
    # sbatch reads #SBATCH lines without a shell: values are not quoted, so paths with spaces
    # are rejected here rather than mis-parsed.
    for field, path in (("work_dir", settings.work_dir), ("log_dir", settings.log_dir)):
        if path and any(ch.isspace() for ch in path):
            raise ValueError(f"{field}: must not contain whitespace (it goes on an #SBATCH line): {path!r}")

    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), *settings.extra_sbatch_lines]
    lines += [
        "",
        f"# BioEngine Ray worker job (tag {tag}); rendered by bioengine-cluster.",
        'if [ -z "${SLURM_JOB_ID:-}" ]; then',
        '    echo "not inside a SLURM job (SLURM_JOB_ID is unset)" >&2',
        "    exit 1",
        "fi",
        'echo "bioengine worker job ${SLURM_JOB_ID} on $(hostname) at $(date -Is)"',
        # No service secret reaches Ray (and so app code), whatever the site's export rules.
        "unset RAY_AUTH_TOKEN",
        'for name in $(compgen -e); do case "$name" in BIOENGINE_*|HYPHA_*) unset "$name";; esac; done',
        'export RAY_CLOUD_INSTANCE_ID="${SLURM_JOB_ID}"',
        f"export BIOENGINE_SLURM_TAG={_q(tag)}",
        "export RAY_USAGE_STATS_ENABLED=0",
    ]
    if settings.ray_token_file:
        token = _q(settings.ray_token_file)
        lines += [
            "export RAY_AUTH_MODE=token",
            f"export RAY_AUTH_TOKEN_PATH={token}",
            f"if [ ! -r {token} ]; then",
            "    echo "
            + _q(
                f"the Ray token file {settings.ray_token_file} is not readable on this node: it "
                "must be on a filesystem the compute nodes share"
            )
            + ' "($(hostname))" >&2',
            "    exit 1",
            "fi",
        ]
    else:
        lines.append("export RAY_AUTH_MODE=disabled")
    if settings.prologue.strip():
        lines += ["", "# --- prologue ---", settings.prologue.rstrip("\n"), "# --- end of prologue ---"]

    if settings.worker_command is not None:
        # Through bash -c: `exec` needs a program, and the command may be a builtin or a pipeline.
        run = "bash -c " + _q(settings.worker_command)
    else:
        assert head is not None
        memory_bytes = int(job.memory_gb * _GIB)
        ray = [
            _q(settings.ray_executable),
            "start",
            f"--address={_q(head)}",
            "--block",
            f"--num-cpus={job.cpus}",
            f"--num-gpus={job.gpus}",
            f"--memory={int(memory_bytes * RAY_MEMORY_FRACTION)}",
            f"--object-store-memory={int(memory_bytes * OBJECT_STORE_FRACTION)}",
            # The job id is only known at run time: double quotes, and the id is a number.
            f'--resources="{{\\"{JOB_RESOURCE_PREFIX}${{SLURM_JOB_ID}}\\": 1}}"',
            f'--labels="bioengine-tag={tag},bioengine-slurm-job-id=${{SLURM_JOB_ID}}"',
            "--disable-usage-stats",
        ]
        if settings.ray_temp_dir:
            ray.append(f"--temp-dir={_q(settings.ray_temp_dir)}")
        run = " ".join(ray)

    if settings.apptainer_image:
        wrapper = [_q(settings.apptainer_executable), "exec"]
        if job.gpus > 0 and "--nv" not in settings.apptainer_args:
            wrapper.append("--nv")
        for bind in settings.apptainer_binds:
            wrapper += ["--bind", _q(bind)]
        if settings.ray_token_file:
            # Read-only at the same path, so RAY_AUTH_TOKEN_PATH holds inside the image too.
            wrapper += ["--bind", _q(f"{settings.ray_token_file}:{settings.ray_token_file}:ro")]
        wrapper += [_q(arg) for arg in settings.apptainer_args]
        wrapper.append(_q(settings.apptainer_image))
        run = " ".join(wrapper) + " " + run

    lines += [
        "",
        "# exec: scancel's SIGTERM reaches ray, which drains the node before exiting.",
        f"exec {run}",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Job states and parsing
# ---------------------------------------------------------------------------------------------
class JobState(StrEnum):
    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    STOPPED = "STOPPED"
    REQUEUED = "REQUEUED"
    RESIZING = "RESIZING"
    SIGNALING = "SIGNALING"
    STAGE_OUT = "STAGE_OUT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    REVOKED = "REVOKED"
    UNKNOWN = "UNKNOWN"


#: Waiting for an allocation (or for a node to boot): capacity that is coming.
WAITING_STATES = frozenset({JobState.PENDING, JobState.CONFIGURING, JobState.REQUEUED})
#: Holding or waiting for an allocation: counts against max_workers.
ACTIVE_STATES = frozenset(
    {
        *WAITING_STATES,
        JobState.RUNNING,
        JobState.COMPLETING,
        JobState.SUSPENDED,
        JobState.STOPPED,
        JobState.RESIZING,
        JobState.SIGNALING,
        JobState.STAGE_OUT,
    }
)
#: Ended without being asked to: a worker lost (walltime, node failure, crash, preemption).
LOST_STATES = frozenset(
    {
        JobState.FAILED,
        JobState.TIMEOUT,
        JobState.NODE_FAIL,
        JobState.OUT_OF_MEMORY,
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
        JobState.SPECIAL_EXIT,
        JobState.REVOKED,
    }
)

_SHORT_STATES = {
    "PD": JobState.PENDING,
    "CF": JobState.CONFIGURING,
    "R": JobState.RUNNING,
    "CG": JobState.COMPLETING,
    "S": JobState.SUSPENDED,
    "ST": JobState.STOPPED,
    "RQ": JobState.REQUEUED,
    "RS": JobState.RESIZING,
    "RF": JobState.REQUEUED,
    "RH": JobState.REQUEUED,
    "RD": JobState.PENDING,
    "RV": JobState.REVOKED,
    "SI": JobState.SIGNALING,
    "SO": JobState.STAGE_OUT,
    "CD": JobState.COMPLETED,
    "F": JobState.FAILED,
    "TO": JobState.TIMEOUT,
    "CA": JobState.CANCELLED,
    "NF": JobState.NODE_FAIL,
    "OOM": JobState.OUT_OF_MEMORY,
    "PR": JobState.PREEMPTED,
    "BF": JobState.BOOT_FAIL,
    "DL": JobState.DEADLINE,
    "SE": JobState.SPECIAL_EXIT,
}
_ALIASES = {
    "REQUEUE_FED": JobState.REQUEUED,
    "REQUEUE_HOLD": JobState.REQUEUED,
    "RESV_DEL_HOLD": JobState.PENDING,
    "CANCELED": JobState.CANCELLED,
}


def normalize_state(raw: str) -> JobState:
    """``CANCELLED by 1000``, ``CA``, ``running``, ``COMPLETING+`` ... to a :class:`JobState`."""
    word = raw.strip().split(" ", 1)[0].rstrip("+*").upper()
    if not word:
        return JobState.UNKNOWN
    if word in JobState.__members__:
        return JobState(word)
    return _ALIASES.get(word) or _SHORT_STATES.get(word, JobState.UNKNOWN)


class SlurmJob(BaseModel):
    """One job as ``squeue`` or ``sacct`` reports it. Times are Unix seconds."""

    job_id: str
    name: str = ""
    state: JobState = JobState.UNKNOWN
    raw_state: str = ""
    reason: str | None = None
    nodes: str | None = None
    submitted_at: float | None = None
    started_at: float | None = Field(None, description="When it started running (None while pending).")
    ended_at: float | None = Field(None, description="When it ended (None while active).")
    time_limit: str | None = None
    cpus: int | None = None
    memory_mb: float | None = None
    gpus: int | None = None
    comment: str | None = None
    exit_code: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def tag(self) -> str | None:
        """The worker tag from the comment (``bioengine:<tag>``) or the name."""
        if self.comment and self.comment.startswith("bioengine:"):
            return self.comment.split(":", 1)[1]
        match = re.match(r"^bioengine-(.+)-worker$", self.name)
        return match.group(1) if match else None

    def resources(self) -> JobSpec | None:
        """The job's size when the listing showed it."""
        if self.cpus is None or self.memory_mb is None:
            return None
        return JobSpec(cpus=max(1, self.cpus), memory_gb=max(0.5, self.memory_mb / 1024), gpus=self.gpus or 0)


#: The ``squeue --format`` the parser expects: id, name, state, reason, nodes, submit, start, end,
#: time limit, CPUs, memory, GRES/TRES per node, comment (last: it may hold anything).
SQUEUE_FORMAT = "%i|%j|%T|%r|%N|%V|%S|%e|%l|%C|%m|%b|%k"
_SQUEUE_FIELDS = 13
#: The ``sacct --format`` the parser expects (with ``--parsable2``).
SACCT_FIELDS = "JobID,JobName,State,Submit,Start,End,NodeList,ExitCode"
_SACCT_FIELDS = 8

_NONE_WORDS = {"", "N/A", "NONE", "UNKNOWN", "(NULL)", "INVALID"}


def _text(value: str) -> str | None:
    value = value.strip()
    return None if value.upper() in _NONE_WORDS else value


def _time(value: str) -> float | None:
    value = value.strip()
    if value.upper() in _NONE_WORDS:
        return None
    try:
        # SLURM prints the controller's local time without a zone: read it as local time.
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def _int(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


_MEMORY_UNITS = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2, "P": 1024.0**3}


def _memory_mb(value: str) -> float | None:
    """``1G``, ``1.50G``, ``100M``, ``512000`` (MB), ``4Gn``/``4Gc`` (sacct ReqMem) to MB."""
    match = re.match(r"^\s*([0-9.]+)\s*([KMGTP]?)[nc]?\s*$", value, re.IGNORECASE)
    if not match:
        return None
    return float(match.group(1)) * _MEMORY_UNITS[(match.group(2) or "M").upper()]


def _gpus(value: str) -> int | None:
    """``gres:gpu:2``, ``gres/gpu:a100:2``, ``gpu:1`` ... to a count; None when none asked."""
    total = 0
    for match in re.finditer(r"gpu(?:[:/][A-Za-z0-9_.-]+)*?[:=](\d+)", value):
        total += int(match.group(1))
    return total or None


def _finish(job: SlurmJob, start: str, end: str) -> SlurmJob:
    if job.state not in WAITING_STATES and job.nodes:
        job.started_at = _time(start)
    if job.state not in ACTIVE_STATES:
        job.ended_at = _time(end)
    return job


def parse_squeue(text: str) -> list[SlurmJob]:
    """Parse ``squeue --noheader --format=SQUEUE_FORMAT`` output (a header line is skipped)."""
    jobs = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("JOBID|"):
            continue
        parts = line.split("|", _SQUEUE_FIELDS - 1)
        if len(parts) != _SQUEUE_FIELDS:
            raise ValueError(f"squeue line has {len(parts)} fields, expected {_SQUEUE_FIELDS}: {line!r}")
        job_id, name, state, reason, nodes, submit, start, end, limit, cpus, memory, gres, comment = parts
        job = SlurmJob(
            job_id=job_id.strip(),
            name=name,
            state=normalize_state(state),
            raw_state=state.strip(),
            reason=None if (reason.strip() in ("None", "")) else reason.strip(),
            nodes=_text(nodes),
            submitted_at=_time(submit),
            time_limit=_text(limit),
            cpus=_int(cpus),
            memory_mb=_memory_mb(memory),
            gpus=_gpus(gres),
            comment=_text(comment),
        )
        jobs.append(_finish(job, start, end))
    return jobs


def parse_sacct(text: str) -> list[SlurmJob]:
    """Parse ``sacct --parsable2 --format=SACCT_FIELDS`` output (job steps and a header skipped)."""
    jobs = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("JobID|"):
            continue
        parts = line.split("|")
        if len(parts) != _SACCT_FIELDS:
            raise ValueError(f"sacct line has {len(parts)} fields, expected {_SACCT_FIELDS}: {line!r}")
        job_id, name, state, submit, start, end, nodes, exit_code = parts
        if "." in job_id:  # a step (123.batch, 123.extern, 123.0): the allocation line says it all
            continue
        job = SlurmJob(
            job_id=job_id.strip(),
            name=name,
            state=normalize_state(state),
            raw_state=state.strip(),
            nodes=_text(nodes),
            submitted_at=_time(submit),
            exit_code=_text(exit_code),
        )
        jobs.append(_finish(job, start, end))
    return jobs


# ---------------------------------------------------------------------------------------------
# Why a job pends, and whether waiting helps (pure)
# ---------------------------------------------------------------------------------------------
class PendingVerdict(BaseModel):
    """What SLURM's pending reason means for a worker job."""

    code: str = Field(description="SLURM's reason as squeue shows it (first word), or 'none'.")
    clears: Literal["may_clear", "will_not_clear"] = Field(
        description="may_clear: other jobs ending, time passing or an admin bringing nodes back can "
        "let it start (give up after the pending timeout, retry with a doubling backoff); "
        "will_not_clear: this job as asked can never start here (stop submitting it, say what to change)."
    )
    meaning: str
    change: str = Field("", description="What to change so that a worker job can run (will_not_clear).")


_WAIT = "may_clear"
_NEVER = "will_not_clear"
_SIZE = "--slurm-worker-cpus / --slurm-worker-gpus / --slurm-worker-memory-gb"

#: SLURM 22.05 pending reasons (``squeue %r``) a worker job may meet. Reasons not listed fall to
#: the rules in :func:`classify_pending_reason`.
_PENDING_REASONS: dict[str, tuple[str, str, str]] = {
    # Waiting for other jobs or for time: clears by itself.
    "Priority": (_WAIT, "jobs of higher priority come first", ""),
    "Resources": (_WAIT, "the nodes are busy with other jobs", ""),
    "BeginTime": (_WAIT, "the job's start time is still to come", ""),
    "Dependency": (_WAIT, "the job waits for a job it depends on", ""),
    "Licenses": (_WAIT, "the licenses it asks for are in use", ""),
    "Reservation": (_WAIT, "the job waits for its reservation to start", ""),
    "JobArrayTaskLimit": (_WAIT, "the array's task limit is reached", ""),
    "Prolog": (_WAIT, "the node's prolog is running", ""),
    "Cleaning": (_WAIT, "the job is being requeued and cleaned up", ""),
    "PowerUpNode": (_WAIT, "a node is being powered up for it", ""),
    "Configuring": (_WAIT, "a node is being configured for it", ""),
    "SchedDefault": (_WAIT, "the scheduler has not looked at it yet", ""),
    "None": (_WAIT, "the scheduler has not given a reason yet", ""),
    # Running-job limits of the account or QOS: clear as its other jobs end.
    "AssocMaxJobsLimit": (
        _WAIT,
        "the account already runs as many jobs as its association allows (MaxJobs); it clears as they end",
        "lower --slurm-max-workers or ask for a higher MaxJobs",
    ),
    # Nodes or partition unavailable: clears when an admin brings them back.
    "ReqNodeNotAvail": (
        _WAIT,
        "the nodes it may use are down, drained or reserved; it clears when an admin brings them back",
        "choose another --slurm-partition if this lasts",
    ),
    "NodeDown": (_WAIT, "a node it needs is down; it clears when the node is back", ""),
    "FrontEndDown": (_WAIT, "no front end node is up", ""),
    "PartitionDown": (
        _WAIT,
        "the partition is down; it clears when an admin sets it UP",
        "choose another --slurm-partition if this lasts",
    ),
    "JobHeldAdmin": (_WAIT, "an admin holds the job", "ask the admin to release it"),
    "JobHeldUser": (_WAIT, "the job is held (scontrol hold)", "release it with scontrol release"),
    # The job as asked can never start: a limit of the partition, account or QOS on one job.
    "PartitionConfig": (
        _NEVER,
        "the job asks for more than {partition} allows per node (CPUs, GPUs or memory), or "
        "the partition does not take it",
        f"lower {_SIZE} to what `{{show_partition}}` allows, choose another "
        "--slurm-partition, or have the admin change the partition",
    ),
    "PartitionTimeLimit": (
        _NEVER,
        "the job's walltime {time_limit} is above the MaxTime of {partition}",
        "lower --slurm-time-limit or choose another --slurm-partition",
    ),
    "PartitionNodeLimit": (
        _NEVER,
        "the node limits (MinNodes/MaxNodes) of {partition} exclude a one-node job",
        "choose another --slurm-partition",
    ),
    "PartitionInactive": (_NEVER, "{partition} is inactive", "choose another --slurm-partition"),
    "MaxMemPerLimit": (
        _NEVER,
        "the job's memory ({memory_gb:g} GB) is above the MaxMemPerNode/MaxMemPerCPU of {partition}",
        "lower --slurm-worker-memory-gb or choose another --slurm-partition",
    ),
    "InvalidAccount": (_NEVER, "the account is not valid", "set --slurm-account to an account you have"),
    "InvalidQOS": (_NEVER, "the QOS is not valid", "change the --qos of --slurm-extra-sbatch"),
    "QOSNotAllowed": (_NEVER, "the QOS is not allowed here", "change the --qos of --slurm-extra-sbatch"),
    "AccountNotAllowed": (
        _NEVER,
        "the account may not use {partition}",
        "set --slurm-account or --slurm-partition",
    ),
    "BadConstraints": (
        _NEVER,
        "no node has the features (--constraint) the job asks for",
        "change the --constraint of --slurm-extra-sbatch",
    ),
    "DependencyNeverSatisfied": (
        _NEVER,
        "the job's dependency can never be met",
        "remove the --dependency of --slurm-extra-sbatch",
    ),
}


def classify_pending_reason(reason: str | None, settings: SlurmSettings | None = None) -> PendingVerdict:
    """Whether the pending reason ``reason`` (``squeue %r``) can clear by waiting.

    Rules for reasons not in the table: a per-job limit of the account or QOS (``...PerJob...``,
    ``QOSMin...``) never clears; group and per-user limits (``AssocGrp...``, ``QOSGrp...``,
    ``...PerUser...``, ``...PerAccount...``, ``...MaxJobs...``, ``...Submit...``) clear as other jobs
    end; SLURM's sentence for an account a partition does not allow never clears; anything else
    is taken as may clear (an unknown reason is not a reason to stop).
    """
    text = (reason or "").strip()
    code = text.split(",", 1)[0].split(" ", 1)[0].strip("()") if text else "None"
    partition = settings.partition if settings is not None else None
    values = {
        "partition": f"partition {partition}" if partition else "the default partition",
        "show_partition": f"scontrol show partition {partition}" if partition else "scontrol show partition",
        "time_limit": "?",
        "memory_gb": 0.0,
    }
    if settings is not None:
        values = {
            **values,
            "time_limit": settings.time_limit,
            "memory_gb": settings.memory_gb,
        }
    if code in _PENDING_REASONS:
        clears, meaning, change = _PENDING_REASONS[code]
        return PendingVerdict(
            code=code,
            clears=clears,
            meaning=meaning.format(**values),
            change=change.format(**values),
        )
    if "PerJob" in code or code.startswith(("QOSMin", "AssocMin")):
        return PendingVerdict(
            code=code,
            clears="will_not_clear",
            meaning=f"the job is above a per-job limit of its account or QOS ({code})",
            change=f"lower {_SIZE} / --slurm-time-limit, or use another --slurm-account or QOS",
        )
    if code.startswith(("AssocGrp", "QOSGrp")) or any(
        part in code for part in ("PerUser", "PerAccount", "MaxJobs", "Submit")
    ):
        return PendingVerdict(
            code=code,
            clears="may_clear",
            meaning=f"a limit on the running jobs of the account or QOS is reached ({code}); it clears "
            "as they end",
            change="lower --slurm-max-workers if this lasts",
        )
    if "account" in text.lower() and "partition" in text.lower():
        return PendingVerdict(
            code=code,
            clears="will_not_clear",
            meaning=f"{values['partition']} does not take the job's account ({text})",
            change="set --slurm-account to an account the partition allows, or choose another --slurm-partition",
        )
    return PendingVerdict(
        code=code, clears="may_clear", meaning=f"SLURM's reason {text!r} (not one known to stay)"
    )


# ---------------------------------------------------------------------------------------------
# Lost workers: their final state and who ended them (pure)
# ---------------------------------------------------------------------------------------------
class Canceller(BaseModel):
    """Who cancelled a job, as far as this SLURM can tell."""

    uid: int | None = None
    user: str | None = None
    source: str = Field(description="Where it was read: this service, sacct, the controller's log, or none.")
    note: str | None = Field(None, description="Why it is unknown, when it is.")

    def describe(self) -> str:
        if self.uid is None and self.user is None:
            return f"by an unknown user ({self.note or 'not recorded'})"
        who = f"uid {self.uid}" if self.uid is not None else ""
        if self.user:
            who = f"{who} ({self.user})" if who else self.user
        return f"by {who}, per {self.source}"


_KILL_RE = re.compile(r"REQUEST_KILL_JOB JobId=(\d+(?:_\d+)?) uid (\d+)")
_CANCELLED_BY_RE = re.compile(r"^CANCELLED\s+by\s+(\d+)", re.IGNORECASE)


def parse_kill_requests(log_text: str) -> dict[str, int]:
    """``slurmctld`` log lines ``_slurm_rpc_kill_job: REQUEST_KILL_JOB JobId=98 uid 0``: the uid
    of the last kill request per job id."""
    return {match.group(1): int(match.group(2)) for match in _KILL_RE.finditer(log_text)}


def cancelled_by_uid(raw_state: str) -> int | None:
    """The uid of sacct's ``CANCELLED by 1000`` (accounting only; squeue and jobcomp omit it)."""
    match = _CANCELLED_BY_RE.match(raw_state.strip())
    return int(match.group(1)) if match else None


_LOSS_CAUSES = {
    JobState.TIMEOUT: "its walltime ({time_limit}) ran out",
    JobState.NODE_FAIL: "its node failed",
    JobState.FAILED: "it exited with an error (see its output file)",
    JobState.OUT_OF_MEMORY: "it ran out of memory",
    JobState.PREEMPTED: "a job of higher priority preempted it",
    JobState.BOOT_FAIL: "its node failed to boot",
    JobState.DEADLINE: "it reached its deadline",
    JobState.COMPLETED: "its Ray worker exited",
    JobState.UNKNOWN: "squeue no longer lists it and no final state is known",
}


def is_lost(job: SlurmJob, cancelled_by_us: Iterable[str] = ()) -> bool:
    """Ended without this service asking: walltime, node failure, crash, preemption, or a
    ``scancel`` from someone else."""
    if job.state in LOST_STATES:
        return True
    return job.state == JobState.CANCELLED and job.job_id not in set(cancelled_by_us)


def describe_loss(job: SlurmJob, canceller: Canceller | None = None, ray_node_id: str | None = None) -> str:
    """One line on a lost worker job: its final state and the cause (who cancelled it)."""
    where = f" (Ray node {ray_node_id[:12]})" if ray_node_id else ""
    state = job.raw_state if job.raw_state and job.raw_state != "GONE" else job.state.value
    if job.state == JobState.CANCELLED:
        by = canceller.describe() if canceller is not None else "by an unknown user"
        cause = f"cancelled outside this service {by}"
    else:
        cause = _LOSS_CAUSES.get(job.state, "it ended").format(time_limit=job.time_limit or "?")
    exit_code = f", exit code {job.exit_code}" if job.exit_code and job.exit_code != "0:0" else ""
    return f"job {job.job_id}{where} ended {state}: {cause}{exit_code}"


# ---------------------------------------------------------------------------------------------
# The scaling policy (pure)
# ---------------------------------------------------------------------------------------------
class RayWorkerNode(BaseModel):
    """A Ray node as the policy sees it."""

    node_id: str
    slurm_job_id: str | None = Field(None, description="From its slurm_job_id:<id> resource; None: head.")
    alive: bool = True
    total: dict[str, float] = Field(default_factory=dict)
    available: dict[str, float] = Field(default_factory=dict)
    idle_s: float = Field(0.0, ge=0, description="How long none of its resources were in use.")
    only_zero_cpu_actors: bool = Field(
        False, description="Idle, but 0-CPU actors (e.g. Serve proxies) live on it; draining moves them."
    )


class BlockedSubmission(BaseModel):
    """Why no worker job is submitted any more: a job was given up for a reason that will not
    clear by waiting, so the same job would pend the same way. Lifted by a restart (with the
    setting changed, or after the admin changed SLURM)."""

    job_id: str
    reason_code: str = Field(description="SLURM's pending reason, e.g. PartitionConfig.")
    message: str = Field(description="What SLURM's reason means for this job.")
    change: str = Field(description="What to change so a worker job can run.")
    since: float


class BackoffState(BaseModel):
    """Failed launches in a row (sbatch failures and jobs given up), for the exponential backoff,
    and the block after a job that can never run."""

    consecutive_failures: int = Field(0, ge=0, description="sbatch failures plus jobs given up, in a row.")
    give_ups: int = Field(
        0,
        ge=0,
        description="Of those, jobs given up (pending or join timeout): a successful sbatch "
        "does not clear them, only a newer job whose Ray node joined.",
    )
    last_failure_at: float | None = None
    last_give_up_at: float | None = None
    last_error: str | None = None
    blocked: BlockedSubmission | None = None

    def delay_s(self, settings: SlurmSettings) -> float:
        if self.consecutive_failures <= 0:
            return 0.0
        exponent = min(self.consecutive_failures - 1, 30)
        return min(settings.backoff_initial_s * 2**exponent, settings.backoff_max_s)

    def retry_at(self, settings: SlurmSettings) -> float | None:
        if self.consecutive_failures <= 0 or self.last_failure_at is None:
            return None
        return self.last_failure_at + self.delay_s(settings)

    def failed(self, now: float, error: str, count: int = 1) -> BackoffState:
        """``count`` more sbatch failures."""
        return self.model_copy(
            update={
                "consecutive_failures": self.consecutive_failures + count,
                "last_failure_at": now,
                "last_error": error,
            }
        )

    def gave_up(self, now: float, error: str, count: int = 1) -> BackoffState:
        """``count`` more jobs given up: they count until a newer job's Ray node joins."""
        return self.model_copy(
            update={
                "consecutive_failures": self.consecutive_failures + count,
                "give_ups": self.give_ups + count,
                "last_failure_at": now,
                "last_give_up_at": now,
                "last_error": error,
            }
        )

    def succeeded(self) -> BackoffState:
        """An sbatch worked: its failures are forgiven, not the jobs given up (a job that pends
        until it is given up is submitted fine every time), nor a block."""
        if not self.give_ups and self.blocked is None:
            return BackoffState()
        return self.model_copy(
            update={"consecutive_failures": self.give_ups, "last_failure_at": self.last_give_up_at}
        )


class ScalingInputs(BaseModel):
    jobs: list[SlurmJob] = Field(default_factory=list, description="This worker's jobs (squeue by tag).")
    ray_nodes: list[RayWorkerNode] = Field(default_factory=list, description="All Ray nodes, head included.")
    demand: list[PendingDemand] = Field(
        default_factory=list,
        description="Pending bundles (task_actor, placement_group) and request_resources constraints.",
    )
    backoff: BackoffState = Field(default_factory=BackoffState)
    cancelled_by_us: list[str] = Field(
        default_factory=list, description="Job ids this service cancelled: their end is no loss."
    )


class JobCancel(BaseModel):
    job_id: str
    kind: Literal["idle", "pending_timeout", "join_timeout", "unrunnable"]
    reason: str


class Decision(BaseModel):
    at: float
    action: Literal["submit", "cancel", "keep", "wait", "limit", "backoff", "blocked", "infeasible", "lost"]
    message: str
    inputs: dict[str, Any] = Field(default_factory=dict)


class ScalingPlan(BaseModel):
    submit: list[JobSpec] = Field(default_factory=list, description="Jobs to sbatch, each of this size.")
    cancel: list[JobCancel] = Field(default_factory=list)
    infeasible: list[PendingDemand] = Field(
        default_factory=list, description="Demand no worker job can ever hold: reported, not submitted."
    )
    decisions: list[Decision] = Field(default_factory=list)
    failures: int = Field(
        0, description="Cancellations that count as failed launches: add them to the backoff state."
    )
    lost: list[str] = Field(
        default_factory=list,
        description="Job ids ended without this service asking (timeout, node failure, scancel by "
        "someone else...).",
    )
    backoff: BackoffState = Field(
        default_factory=BackoffState, description="The backoff state after this round's give-ups."
    )


def _describe(resources: Mapping[str, float]) -> str:
    parts = []
    for name, amount in resources.items():
        if name == "memory":
            parts.append(f"{amount / _GIB:.3g} GiB memory")
        else:
            parts.append(f"{amount:g} {name}")
    return "{" + ", ".join(parts) + "}"


def _shortfall(needed: Mapping[str, float], offered: Mapping[str, float]) -> str:
    for name, amount in needed.items():
        have = offered.get(name, 0.0)
        if amount > _EPSILON and have + _EPSILON < amount:
            if name == "memory":
                return f"needs {amount / _GIB:.3g} GiB memory, a worker job offers {have / _GIB:.3g} GiB"
            return f"needs {amount:g} {name}, a worker job offers {have:g}"
    return "does not fit a worker job"


class _Bin:
    __slots__ = ("free", "key")

    def __init__(self, key: str, free: Mapping[str, float]) -> None:
        self.key = key
        self.free = dict(free)

    def take(self, needed: Mapping[str, float]) -> bool:
        if not _fits(needed, self.free):
            return False
        for name, amount in needed.items():
            self.free[name] = self.free.get(name, 0.0) - amount
        return True


def _expand(demand: Iterable[PendingDemand]) -> list[dict[str, float]]:
    bundles = []
    for entry in demand:
        resources = {name: float(amount) for name, amount in entry.resources.items() if amount > _EPSILON}
        if resources:
            bundles += [resources] * max(0, entry.count)

    def size(bundle: Mapping[str, float]) -> tuple[float, float, float]:
        return (bundle.get("GPU", 0.0), bundle.get("CPU", 0.0), bundle.get("memory", 0.0))

    return sorted(bundles, key=size, reverse=True)


def _pack(bundles: list[dict[str, float]], bins: list[_Bin], used: set[str]) -> list[dict[str, float]]:
    """First fit; returns what did not fit; records the keys of bins that took something."""
    left = []
    for bundle in bundles:
        for candidate in bins:
            if candidate.take(bundle):
                used.add(candidate.key)
                break
        else:
            left.append(bundle)
    return left


def plan_scaling(observed: ScalingInputs, settings: SlurmSettings, now: float) -> ScalingPlan:
    """What to submit and what to cancel now, with the reasons.

    Rules: pending and starting jobs count as capacity (no double submission); demand is packed
    first into the free resources of the Ray nodes, then into coming jobs, then into new jobs;
    ``request_resources`` constraints are packed into the total resources (Ray's semantics); a
    bundle no worker job can hold is reported infeasible; ``max_workers`` bounds pending + running
    jobs; ``min_workers`` are kept; a job pending past ``pending_timeout_s`` or running without its
    Ray node past ``join_timeout_s`` is cancelled and counts as a failure; ``sbatch`` failures and
    jobs given up back off exponentially up to ``backoff_max_s`` (given-up jobs are forgiven only
    when a newer job's Ray node joins, not by a successful ``sbatch``); a job pending for a reason
    that will not clear (:func:`classify_pending_reason`) is given up after at most
    ``UNRUNNABLE_AFTER_S`` and blocks further submission (the same job would pend the same way)
    with what to change; workers idle past ``idle_timeout_s`` are cancelled unless needed for
    ``min_workers``, a constraint or pending demand; lost jobs (ended without this service asking,
    ``scancel`` by someone else included) are replaced by the demand rule.
    """
    plan = ScalingPlan()

    def decide(action: Any, message: str, **inputs: Any) -> None:
        plan.decisions.append(Decision(at=now, action=action, message=message, inputs=inputs))

    name, comment = job_name(settings.tag), job_comment(settings.tag)
    own = [j for j in observed.jobs if j.name == name and (j.comment is None or j.comment == comment)]
    foreign = len(observed.jobs) - len(own)
    if foreign:
        decide("keep", f"ignored {foreign} job(s) not tagged {settings.tag}", ignored=foreign)
    active = [j for j in own if j.active]
    alive_nodes = [n for n in observed.ray_nodes if n.alive]
    node_of_job = {n.slurm_job_id: n for n in alive_nodes if n.slurm_job_id}
    new_job = settings.job_spec().ray_resources()

    # 0. The backoff: jobs given up are forgiven once a job submitted after them has joined Ray.
    backoff = observed.backoff
    if backoff.give_ups and backoff.last_give_up_at is not None:
        joined = [
            j.job_id
            for j in own
            if j.job_id in node_of_job and (j.submitted_at or 0.0) > backoff.last_give_up_at
        ]
        if joined:
            backoff = BackoffState(blocked=backoff.blocked)
            decide("keep", f"job {joined[0]} joined Ray: the backoff is reset", job_id=joined[0])

    # 1. Jobs that will not become workers: stuck in the queue, or running without joining Ray.
    cancelled: set[str] = set()
    errors: list[str] = []
    for job in active:
        if job.state in WAITING_STATES and job.submitted_at is not None:
            waited = now - job.submitted_at
            verdict = classify_pending_reason(job.reason, settings)
            if verdict.clears == "will_not_clear" and waited > min(
                settings.pending_timeout_s, UNRUNNABLE_AFTER_S
            ):
                reason = (
                    f"pending for {waited:.0f} s with SLURM reason {verdict.code}, which will not clear: "
                    f"{verdict.meaning}. Change: {verdict.change}"
                )
                plan.cancel.append(JobCancel(job_id=job.job_id, kind="unrunnable", reason=reason))
                decide("cancel", f"job {job.job_id}: {reason}", job_id=job.job_id, reason_code=job.reason)
                cancelled.add(job.job_id)
                errors.append(f"job {job.job_id}: SLURM reason {verdict.code} will not clear")
                if backoff.blocked is None:
                    backoff = backoff.model_copy(
                        update={
                            "blocked": BlockedSubmission(
                                job_id=job.job_id,
                                reason_code=verdict.code,
                                message=verdict.meaning,
                                change=verdict.change,
                                since=now,
                            )
                        }
                    )
            elif waited > settings.pending_timeout_s:
                reason = (
                    f"pending for {waited:.0f} s (> pending_timeout_s {settings.pending_timeout_s:g}); "
                    f"SLURM reason: {job.reason or 'none given'} ({verdict.meaning}; may clear)"
                )
                plan.cancel.append(JobCancel(job_id=job.job_id, kind="pending_timeout", reason=reason))
                decide("cancel", f"job {job.job_id}: {reason}", job_id=job.job_id, reason_code=job.reason)
                cancelled.add(job.job_id)
                errors.append(f"job {job.job_id} pending past the timeout ({verdict.code})")
        elif job.state == JobState.RUNNING and job.job_id not in node_of_job and job.started_at is not None:
            waited = now - job.started_at
            if waited > settings.join_timeout_s:
                reason = (
                    f"running for {waited:.0f} s without its Ray node joining "
                    f"(> join_timeout_s {settings.join_timeout_s:g}); see the job's output file"
                )
                plan.cancel.append(JobCancel(job_id=job.job_id, kind="join_timeout", reason=reason))
                decide("cancel", f"job {job.job_id}: {reason}", job_id=job.job_id, nodes=job.nodes)
                cancelled.add(job.job_id)
                errors.append(f"job {job.job_id}: Ray node did not join")
    plan.failures = len(cancelled)
    if cancelled:
        backoff = backoff.gave_up(now, "gave up on " + "; ".join(errors), count=len(cancelled))
    remaining = [j for j in active if j.job_id not in cancelled]

    lost = [j for j in own if is_lost(j, observed.cancelled_by_us)]
    plan.lost = [j.job_id for j in lost]

    # 2. Capacity: Ray nodes (head first, then workers busiest first), then coming jobs.
    def node_order(node: RayWorkerNode) -> tuple[int, float]:
        return (0 if node.slurm_job_id is None else 1, node.idle_s)

    ordered_nodes = sorted(alive_nodes, key=node_order)
    coming = [
        j
        for j in remaining
        if j.job_id not in node_of_job and (j.state in WAITING_STATES or j.state == JobState.RUNNING)
    ]

    def job_capacity(job: SlurmJob) -> dict[str, float]:
        size = job.resources()
        return size.ray_resources() if size is not None else new_job

    constraints = _expand(d for d in observed.demand if d.source == "request_resources")
    pending = _expand(d for d in observed.demand if d.source != "request_resources")
    used: set[str] = set()
    new_bins: list[_Bin] = []
    infeasible: list[dict[str, float]] = []
    waiting: list[dict[str, float]] = []

    def open_new(bundles: list[dict[str, float]], total_of_nodes: Sequence[Mapping[str, float]]) -> None:
        for bundle in bundles:
            if any(b.take(bundle) for b in new_bins):
                continue
            fresh = _Bin(f"new-{len(new_bins)}", new_job)
            if fresh.take(bundle):
                new_bins.append(fresh)
            elif any(_fits(bundle, total) for total in total_of_nodes):
                waiting.append(bundle)
            else:
                infeasible.append(bundle)

    totals = [n.total for n in ordered_nodes]
    if constraints:
        bins = [_Bin(f"node:{n.node_id}", n.total) for n in ordered_nodes]
        bins += [_Bin(f"job:{j.job_id}", job_capacity(j)) for j in coming]
        open_new(_pack(constraints, bins, used), totals)
    if pending:
        bins = [_Bin(f"node:{n.node_id}", n.available) for n in ordered_nodes]
        bins += [_Bin(f"job:{j.job_id}", job_capacity(j)) for j in coming]
        # New jobs opened for constraints start empty: pending demand can use all of them too.
        new_bins[:] = [_Bin(b.key, new_job) for b in new_bins]
        bins += new_bins
        open_new(_pack(pending, bins, used), totals)

    if infeasible:
        seen: dict[tuple[tuple[str, float], ...], PendingDemand] = {}
        for bundle in infeasible:
            key = tuple(sorted(bundle.items()))
            if key in seen:
                seen[key].count += 1
            else:
                seen[key] = PendingDemand(resources=bundle, count=1, source="infeasible")
        plan.infeasible = list(seen.values())
        for entry in plan.infeasible:
            decide(
                "infeasible",
                f"{entry.count} x {_describe(entry.resources)} can never run here: "
                f"{_shortfall(entry.resources, new_job)} and no Ray node is large enough",
                bundle=entry.resources,
                count=entry.count,
                worker_job=new_job,
            )
    if waiting:
        decide(
            "wait",
            f"{len(waiting)} bundle(s) larger than a worker job wait for a busy Ray node to free up",
            bundles=waiting[:5],
        )

    # 3. Idle workers: cancel those past the idle timeout that nothing needs, keeping min_workers.
    live = len(remaining)
    for job in sorted(
        (j for j in remaining if j.job_id in node_of_job and j.state == JobState.RUNNING),
        key=lambda j: -node_of_job[j.job_id].idle_s,
    ):
        node = node_of_job[job.job_id]
        if node.idle_s < settings.idle_timeout_s:
            continue
        if f"node:{node.node_id}" in used:
            decide("keep", f"job {job.job_id}: idle but needed for pending demand", job_id=job.job_id)
            continue
        if live - 1 < settings.min_workers:
            decide(
                "keep",
                f"job {job.job_id}: idle {node.idle_s:.0f} s but kept for min_workers={settings.min_workers}",
                job_id=job.job_id,
                live=live,
            )
            continue
        reason = f"idle for {node.idle_s:.0f} s (> idle_timeout_s {settings.idle_timeout_s:g})"
        if node.only_zero_cpu_actors:
            reason += "; only 0-CPU actors left, draining moves them"
        plan.cancel.append(JobCancel(job_id=job.job_id, kind="idle", reason=reason))
        decide("cancel", f"job {job.job_id}: {reason}", job_id=job.job_id, idle_s=node.idle_s)
        live -= 1

    # 4. How many new jobs: demand, then min_workers, bounded by max_workers and the backoff.
    needed = len(new_bins)
    inputs = {
        "pending_bundles": len(pending),
        "constraint_bundles": len(constraints),
        "coming_jobs": [j.job_id for j in coming],
        "live_jobs": live,
        "max_workers": settings.max_workers,
        "min_workers": settings.min_workers,
    }
    why = "demand"
    if live + needed < settings.min_workers:
        needed = settings.min_workers - live
        why = "min_workers"
    allowed = max(0, settings.max_workers - live)
    if needed > allowed:
        decide(
            "limit",
            f"{needed} new job(s) wanted but max_workers={settings.max_workers} allows {allowed} "
            f"({live} pending or running)",
            wanted=needed,
            **inputs,
        )
        needed = allowed
    if needed > 0 and backoff.blocked is not None:
        block = backoff.blocked
        decide(
            "blocked",
            f"not submitting {needed} job(s): job {block.job_id} pended with SLURM reason "
            f"{block.reason_code}, which will not clear ({block.message}); the same job would pend the "
            f"same way. Change: {block.change}; then restart bioengine-cluster",
            wanted=needed,
            reason_code=block.reason_code,
            **inputs,
        )
        needed = 0
    if needed > 0 and plan.failures:
        decide(
            "backoff",
            f"not submitting {needed} job(s) in the round that gave up on {plan.failures} job(s); "
            f"next try in {backoff.delay_s(settings):.0f} s",
            wanted=needed,
            retry_at=backoff.retry_at(settings),
            **inputs,
        )
        needed = 0
    retry_at = backoff.retry_at(settings)
    if needed > 0 and retry_at is not None and now < retry_at:
        decide(
            "backoff",
            f"not submitting {needed} job(s) for {retry_at - now:.0f} s more after "
            f"{backoff.consecutive_failures} failed launch(es): {backoff.last_error or ''}".rstrip(": "),
            wanted=needed,
            retry_at=retry_at,
            **inputs,
        )
        needed = 0
    if needed > 0:
        if lost and why == "demand":
            decide(
                "lost",
                "replacing lost worker job(s) "
                + ", ".join(f"{j.job_id} ({j.state.value})" for j in lost[:10]),
                lost=[j.job_id for j in lost],
            )
        size = settings.job_spec()
        plan.submit = [size.model_copy() for _ in range(needed)]
        decide(
            "submit",
            f"submit {needed} job(s) of {_describe(new_job)} for {why}",
            count=needed,
            **inputs,
        )
    plan.backoff = backoff
    return plan


# ---------------------------------------------------------------------------------------------
# The adapter: sbatch, squeue, scancel, sacct
# ---------------------------------------------------------------------------------------------
class SlurmCommandError(RuntimeError):
    """A SLURM client command failed, timed out or is missing."""

    def __init__(self, command: Sequence[str], message: str, returncode: int | None = None) -> None:
        self.command = list(command)
        self.returncode = returncode
        super().__init__(f"{shlex.join(self.command)}: {message}")


class SlurmCommands:
    """Runs the SLURM client commands for the worker with ``tag``, only ever on its own jobs.

    ``cancel`` accepts only job ids that ``list_jobs`` (squeue filtered by this tag) returned, and
    passes ``--name`` to ``scancel`` as a second guard.
    """

    def __init__(
        self,
        tag: str,
        *,
        timeout_s: float = 30.0,
        bin_dir: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not _TAG_RE.match(tag):
            raise ValueError(f"tag: invalid worker tag {tag!r}")
        self.tag = tag
        self.job_name = job_name(tag)
        self.comment = job_comment(tag)
        self.timeout_s = timeout_s
        self._bin_dir = bin_dir
        self._env = dict(env) if env is not None else None
        self._listed: set[str] = set()
        self.sacct_mode: Literal["accounting", "jobcomp", "unavailable"] | None = None
        self._controller_log: str | None = None

    @staticmethod
    def available(bin_dir: str | None = None) -> bool:
        """Whether the SLURM client commands are on PATH (or in ``bin_dir``)."""
        return (
            shutil.which("sinfo", path=bin_dir) is not None
            and shutil.which("sbatch", path=bin_dir) is not None
        )

    def _command(self, name: str) -> str:
        return os.path.join(self._bin_dir, name) if self._bin_dir else name

    async def _run(self, args: list[str], stdin: str | None = None) -> tuple[int, str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # sbatch hands its environment to the job (--export=ALL by default): no secrets.
                env=scrub_environment(self._env if self._env is not None else os.environ),
            )
        except FileNotFoundError:
            raise SlurmCommandError(args, f"{args[0]} not found: is this a SLURM login node?") from None
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), self.timeout_s
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SlurmCommandError(
                args, f"no answer within {self.timeout_s:g} s (slurmctld down?)"
            ) from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def submit(self, script: str) -> str:
        """``sbatch`` the script (on stdin) tagged for this worker; returns the job id."""
        if not script.startswith("#!"):
            raise ValueError("script: a batch script must start with '#!'")
        log_dir = re.search(r"^#SBATCH --output=(\S+)/[^/\s]+$", script, re.MULTILINE)
        if log_dir and "%" not in log_dir.group(1):
            # SLURM does not create it: a job whose output dir is missing fails (JobLaunchFailure).
            # A relative one is relative to the job's --chdir (or to where sbatch runs).
            chdir = re.search(r"^#SBATCH --chdir=(\S+)$", script, re.MULTILINE)
            base = chdir.group(1) if chdir and "%" not in chdir.group(1) else "."
            os.makedirs(os.path.join(base, log_dir.group(1)), exist_ok=True)
        args = [
            self._command("sbatch"),
            "--parsable",
            f"--job-name={self.job_name}",  # the command line wins over the script's #SBATCH lines
            f"--comment={self.comment}",
        ]
        code, out, err = await self._run(args, stdin=script)
        if code != 0:
            raise SlurmCommandError(args, (err.strip() or out.strip() or "failed"), code)
        job_id = out.strip().split(";", 1)[0]
        if not _JOB_ID_RE.match(job_id):
            raise SlurmCommandError(args, f"unexpected answer {out.strip()!r}", code)
        self._listed.add(job_id)
        return job_id

    async def list_jobs(self, *, include_finished: bool = False) -> list[SlurmJob]:
        """This worker's jobs from ``squeue`` (finished ones too, for ``MinJobAge``, if asked)."""
        args = [
            self._command("squeue"),
            "--noheader",
            "--me",
            f"--name={self.job_name}",
            f"--format={SQUEUE_FORMAT}",
        ]
        if include_finished:
            args.append("--states=all")
        code, out, err = await self._run(args)
        if code != 0:
            raise SlurmCommandError(args, err.strip() or "failed", code)
        jobs = [j for j in parse_squeue(out) if j.name == self.job_name and j.comment in (None, self.comment)]
        self._listed.update(j.job_id for j in jobs)
        return jobs

    async def cancel(self, job_ids: Iterable[str]) -> list[str]:
        """``scancel`` jobs of this worker; returns the ids asked for. Jobs already gone are fine."""
        ids = [str(job_id) for job_id in job_ids]
        foreign = [job_id for job_id in ids if job_id not in self._listed or not _JOB_ID_RE.match(job_id)]
        if foreign:
            raise ValueError(
                f"job_ids: refusing to cancel {', '.join(foreign)}: not listed by squeue for tag {self.tag}"
            )
        if not ids:
            return []
        args = [self._command("scancel"), f"--name={self.job_name}", *ids]
        code, _out, err = await self._run(args)
        if code != 0:
            problems = [line for line in err.splitlines() if line.strip() and "Invalid job id" not in line]
            if problems:
                raise SlurmCommandError(args, "; ".join(problems), code)
        return ids

    async def finished_jobs(self, since: str = "now-1days") -> list[SlurmJob] | None:
        """Final states from ``sacct`` (accounting) or ``sacct -c`` (jobcomp/filetxt); None when
        neither is configured. ``sacct -c`` ignores ``--name``: filtered here."""
        base = [
            self._command("sacct"),
            "--parsable2",
            "--noheader",
            "--allocations",
            f"--starttime={since}",
            f"--format={SACCT_FIELDS}",
        ]
        attempts: list[tuple[Literal["accounting", "jobcomp"], list[str]]] = [
            ("accounting", [*base, f"--name={self.job_name}"]),
            ("jobcomp", [*base, "--completion"]),
        ]
        if self.sacct_mode == "jobcomp":
            attempts.reverse()
        for mode, args in attempts:
            try:
                code, out, _err = await self._run(args)
            except SlurmCommandError:
                continue
            if code == 0:
                self.sacct_mode = mode
                return [j for j in parse_sacct(out) if j.name == self.job_name]
        self.sacct_mode = "unavailable"
        return None

    async def controller_log(self) -> str | None:
        """The controller's log file (``scontrol show config``) when this host can read it."""
        if self._controller_log is None:
            path = ""
            try:
                code, out, _err = await self._run([self._command("scontrol"), "show", "config"])
            except SlurmCommandError:
                code, out = 1, ""
            if code == 0:
                match = re.search(r"^SlurmctldLogFile\s*=\s*(\S+)\s*$", out, re.MULTILINE)
                if match and match.group(1) != "(null)":
                    path = match.group(1)
            self._controller_log = path
        if self._controller_log and os.access(self._controller_log, os.R_OK):
            return self._controller_log
        return None

    async def who_cancelled(self, job_ids: Iterable[str]) -> dict[str, Canceller]:
        """Who cancelled each job: from sacct's ``CANCELLED by <uid>`` (SLURM accounting), else
        from the controller's log (``REQUEST_KILL_JOB JobId=<id> uid <uid>``) when it is readable
        here, else unknown with the reason. Without accounting, squeue, scontrol and the jobcomp
        log show ``CANCELLED`` but not by whom."""
        ids = {str(job_id) for job_id in job_ids}
        found: dict[str, Canceller] = {}
        if ids and self.sacct_mode in (None, "accounting"):
            with contextlib.suppress(Exception):
                for job in await self.finished_jobs() or []:
                    uid = cancelled_by_uid(job.raw_state) if self.sacct_mode == "accounting" else None
                    if job.job_id in ids and uid is not None:
                        found[job.job_id] = Canceller(uid=uid, user=_user_name(uid), source="sacct")
        missing = ids - set(found)
        log = await self.controller_log() if missing else None
        if log is not None:
            try:
                text = await asyncio.to_thread(_read_tail, log, CONTROLLER_LOG_TAIL)
            except OSError:
                text = ""
            requests = parse_kill_requests(text)
            for job_id in missing:
                if job_id in requests:
                    uid = requests[job_id]
                    found[job_id] = Canceller(uid=uid, user=_user_name(uid), source="the slurmctld log")
        note = "no SLURM accounting here (sacct) and " + (
            "the controller's log does not name it" if log else "the controller's log is not readable here"
        )
        for job_id in ids - set(found):
            found[job_id] = Canceller(source="none", note=note)
        return found


#: How much of the end of the controller's log is searched for kill requests.
CONTROLLER_LOG_TAIL = 8 * 1024 * 1024


def _read_tail(path: str, size: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        handle.seek(max(0, end - size))
        return handle.read().decode(errors="replace")


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
