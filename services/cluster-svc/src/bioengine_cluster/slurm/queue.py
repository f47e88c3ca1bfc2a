"""SLURM job states and the parsers of ``squeue``, ``sacct`` and the controller's log (pure).

Checked against SLURM 22.05 from Debian (see ``infra/slurm/setup-slurm.sh``).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from bioengine_common.cluster_options import MIN_WORKER_MEMORY_GB

from .settings import JobSpec

__all__ = [
    "ACTIVE_STATES",
    "LOST_STATES",
    "SACCT_FIELDS",
    "SQUEUE_FORMAT",
    "WAITING_STATES",
    "JobState",
    "SlurmJob",
    "cancelled_by_uid",
    "normalize_state",
    "parse_kill_requests",
    "parse_sacct",
    "parse_squeue",
]


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
        return JobSpec(
            cpus=max(1, self.cpus),
            memory_gb=max(MIN_WORKER_MEMORY_GB, self.memory_mb / 1024),
            gpus=self.gpus or 0,
        )


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


# Who cancelled a job: the controller's log, or sacct's state (SLURM accounting only).
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
