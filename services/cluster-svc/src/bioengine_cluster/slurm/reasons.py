"""What SLURM's answers mean for a worker job (pure): whether a pending reason can clear by
waiting, and why a job was lost (its final state, who cancelled it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, Field

from .queue import LOST_STATES, JobState, SlurmJob
from .settings import SlurmSettings

__all__ = ["Canceller", "PendingVerdict", "classify_pending_reason", "describe_loss", "is_lost"]


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
