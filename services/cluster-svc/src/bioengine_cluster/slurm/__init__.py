"""slurm mode: Ray workers as SLURM jobs, split by concern.

- :mod:`.settings`: the size of one job and everything around it (:class:`SlurmSettings`).
- :mod:`.job_script`: the exact batch script of a job (:func:`render_job_script`).
- :mod:`.queue`: job states and the ``squeue``/``sacct``/controller-log parsers.
- :mod:`.reasons`: whether a pending reason can clear, why a job was lost.
- :mod:`.policy`: the pure scaling policy (:func:`plan_scaling`).
- :mod:`.commands`: the adapter running ``sbatch``/``squeue``/``scancel``/``sacct``
  (:class:`SlurmCommands`) and the protocol the autoscaler needs of it (:class:`SlurmClient`).
- :mod:`.autoscaler`: the scaling loop (:class:`SlurmAutoscaler`), which takes its SLURM client
  and its Ray observation as parameters.

Everything but :mod:`.commands` and :func:`.autoscaler.observe_ray` is pure: no subprocess, no
Ray, no clock. Resource arithmetic (fits, shortfalls, their wording) is shared with the fit check
in ``bioengine_cluster._resources``.
"""

from .._status import PendingDemand
from .autoscaler import ObserveRay, SlurmAutoscaler, demand_of, observe_ray
from .commands import CONTROLLER_LOG_TAIL, SlurmClient, SlurmCommandError, SlurmCommands
from .job_script import render_job_script
from .policy import (
    UNRUNNABLE_AFTER_S,
    BackoffState,
    BlockedSubmission,
    Decision,
    JobCancel,
    RayWorkerNode,
    ScalingInputs,
    ScalingPlan,
    plan_scaling,
)
from .queue import (
    ACTIVE_STATES,
    LOST_STATES,
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    WAITING_STATES,
    JobState,
    SlurmJob,
    cancelled_by_uid,
    normalize_state,
    parse_kill_requests,
    parse_sacct,
    parse_squeue,
)
from .reasons import Canceller, PendingVerdict, classify_pending_reason, describe_loss, is_lost
from .settings import (
    JOB_RESOURCE_PREFIX,
    OBJECT_STORE_FRACTION,
    RAY_MEMORY_FRACTION,
    JobSpec,
    SlurmSettings,
    fits_after_scale_up,
    job_comment,
    job_name,
    worker_resources,
)

__all__ = [
    "ACTIVE_STATES",
    "CONTROLLER_LOG_TAIL",
    "JOB_RESOURCE_PREFIX",
    "LOST_STATES",
    "OBJECT_STORE_FRACTION",
    "RAY_MEMORY_FRACTION",
    "SACCT_FIELDS",
    "SQUEUE_FORMAT",
    "UNRUNNABLE_AFTER_S",
    "WAITING_STATES",
    "BackoffState",
    "BlockedSubmission",
    "Canceller",
    "Decision",
    "JobCancel",
    "JobSpec",
    "JobState",
    "ObserveRay",
    "PendingDemand",
    "PendingVerdict",
    "RayWorkerNode",
    "ScalingInputs",
    "ScalingPlan",
    "SlurmAutoscaler",
    "SlurmClient",
    "SlurmCommandError",
    "SlurmCommands",
    "SlurmJob",
    "SlurmSettings",
    "cancelled_by_uid",
    "classify_pending_reason",
    "demand_of",
    "describe_loss",
    "fits_after_scale_up",
    "is_lost",
    "job_comment",
    "job_name",
    "normalize_state",
    "observe_ray",
    "parse_kill_requests",
    "parse_sacct",
    "parse_squeue",
    "plan_scaling",
    "render_job_script",
    "worker_resources",
]
