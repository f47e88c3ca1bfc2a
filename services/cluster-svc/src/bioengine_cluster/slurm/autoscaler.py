"""slurm mode's scaling loop: observe, :func:`plan_scaling`, act with a :class:`SlurmClient`.

One round: this worker's jobs from ``squeue`` (by tag, finished ones too), the Ray nodes with
their ``slurm_job_id:<id>`` resource and idle time and the pending demand from Ray's autoscaler
v2 SDK (``get_cluster_status``: task/actor and placement-group demand, ``request_resources``
constraints); the pure policy decides; jobs are cancelled and submitted here, ``sbatch`` failures
back off. The decisions of the last rounds are kept (bounded) with what they were based on.

The SLURM commands and the Ray observation are parameters: the service passes
:class:`SlurmCommands` and :func:`observe_ray`, tests a fake SLURM and hand-made nodes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import shlex
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bioengine_common import ConfigurationError, ray_environment
from bioengine_common.local_stack import Sandbox
from bioengine_common.metrics import counter

from .._settings import ClusterSettings
from .._status import PendingDemand
from .commands import SlurmClient, SlurmCommandError, SlurmCommands
from .job_script import render_job_script
from .policy import BackoffState, Decision, RayWorkerNode, ScalingInputs, plan_scaling
from .queue import JobState, SlurmJob
from .reasons import Canceller, describe_loss
from .settings import JOB_RESOURCE_PREFIX, SlurmSettings

__all__ = ["ObserveRay", "SlurmAutoscaler", "demand_of", "observe_ray"]

#: Decisions kept for the status; finished jobs kept after squeue forgot them.
DECISIONS_KEPT = 100
FINISHED_KEPT = 30


#: Every decision the autoscaler records (submit, cancel, lost, backoff, blocked...), by action.
SCALING_ACTIONS = counter(
    "bioengine_slurm_scaling_actions",
    "Decisions recorded by the SLURM autoscaler (repeats of the same wait/keep not counted), by action.",
    ["action"],
)
for _action in typing.get_args(Decision.model_fields["action"].annotation):
    SCALING_ACTIONS.labels(_action)  # every action shows, at 0 until it happens


def demand_of(status: Any) -> list[PendingDemand]:
    """Pending bundles and constraints of an autoscaler v2 ``ClusterStatus``."""
    summary = status.resource_demands
    demands: list[PendingDemand] = []
    for source, entries in (
        ("task_actor", summary.ray_task_actor_demand),
        ("placement_group", summary.placement_group_demand),
        ("request_resources", summary.cluster_constraint_demand),
    ):
        for entry in entries:
            for bundle in getattr(entry, "bundles_by_count", []):
                demands.append(
                    PendingDemand(resources=dict(bundle.bundle), count=bundle.count, source=source)
                )
    return demands


def observe_ray(gcs_address: str) -> tuple[list[RayWorkerNode], list[PendingDemand]]:
    """The Ray nodes (with SLURM job id and idle time) and the pending demand. Blocking."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(gcs_address)
    nodes = []
    for info in [*status.active_nodes, *status.idle_nodes]:
        total = info.total_resources()
        job_id = next(
            (n[len(JOB_RESOURCE_PREFIX) :] for n in total if n.startswith(JOB_RESOURCE_PREFIX)), None
        )
        job_id = job_id or (info.labels or {}).get("bioengine-slurm-job-id")
        usage = info.resource_usage
        nodes.append(
            RayWorkerNode(
                node_id=info.node_id or info.instance_id,
                slurm_job_id=job_id,
                total=total,
                available=info.available_resources(),
                idle_s=max(0.0, usage.idle_time_ms / 1000) if usage is not None else 0.0,
            )
        )
    return nodes, demand_of(status)


#: Reads the Ray nodes and the pending demand from the GCS address (blocking; run in a thread).
ObserveRay = Callable[[str], tuple[list[RayWorkerNode], list[PendingDemand]]]


def _age(since: float | None, now: float) -> float | None:
    return round(now - since, 1) if since is not None else None


class SlurmAutoscaler:
    """The scaling state of one BioEngine worker in slurm mode."""

    def __init__(
        self,
        settings: ClusterSettings,
        logger: logging.Logger,
        token_file: Path | None = None,
        *,
        commands: SlurmClient | None = None,
        observe: ObserveRay = observe_ray,
        sandbox: Sandbox | None = None,
    ):
        """``token_file``: the head's Ray token file (its path goes in the job script), None when
        the head runs without token authentication. ``commands``: how SLURM is reached (default
        :class:`SlurmCommands` for this worker's tag); ``observe``: how Ray is read; ``sandbox``:
        what the jobs' Ray processes must not see (None: no sandbox)."""
        self.cluster_settings = settings
        self.sandbox = sandbox
        self.logger = logger
        self.token_file = token_file
        self.tag = settings.resolved_slurm_tag()
        self.commands: SlurmClient = commands if commands is not None else SlurmCommands(self.tag)
        self.observe = observe
        self.backoff = BackoffState()
        self.decisions: collections.deque[dict[str, Any]] = collections.deque(maxlen=DECISIONS_KEPT)
        #: Every job of this worker seen, newest last: the last listing, plus our cancel reason.
        self.jobs: collections.OrderedDict[str, SlurmJob] = collections.OrderedDict()
        self.cancel_reasons: dict[str, str] = {}
        #: Jobs ended without this service asking: what ended them (final state, who cancelled).
        self.losses: dict[str, dict[str, Any]] = {}
        #: Jobs this service saw pending or running: only those can be lost (a job that had ended
        #: before this service started, e.g. one it cancelled before a restart, is not).
        self.seen_active: set[str] = set()
        self.ray_node_of_job: dict[str, str] = {}
        #: The last Ray node seen for each job (a lost job's node has left Ray).
        self.last_node_of_job: dict[str, str] = {}
        self.error: str | None = None
        self.last_round_at: float | None = None
        self.rounds = 0
        base = settings.workspace_dir.expanduser().resolve()
        self.work_dir = base / "slurm"
        self.log_dir = base / "logs" / "slurm"
        try:  # a bad --slurm-* value ends the start-up, not every scaling round
            self.slurm_settings()
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'slurm'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigurationError(f"invalid slurm settings: {problems}") from None

    # ---- settings and script ------------------------------------------------------------------
    def ray_executable(self) -> str:
        s = self.cluster_settings
        if s.slurm_ray_executable:
            return s.slurm_ray_executable
        if s.slurm_image:
            return "ray"
        # This environment's ray: never `uv run` in a job (it would re-sync the environment).
        local = Path(sys.executable).parent / "ray"
        return str(local) if local.exists() else "ray"

    def slurm_settings(self, head_address: str | None = None) -> SlurmSettings:
        s = self.cluster_settings
        token_file = self.token_file
        # The script sets RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH itself (from ray_token_file).
        exports = "\n".join(
            f"export {name}={shlex.quote(value)}"
            for name, value in sorted(ray_environment().items())
            if not name.startswith("RAY_AUTH_")
        )
        prologue = exports + ("\n" + s.slurm_prologue if s.slurm_prologue.strip() else "")
        return SlurmSettings(
            tag=self.tag,
            cpus=s.slurm_worker_cpus,
            memory_gb=s.slurm_worker_memory_gb,
            gpus=s.slurm_worker_gpus,
            time_limit=s.slurm_time_limit,
            gpu_flag_template=s.slurm_gpu_flag,
            partition=s.slurm_partition,
            account=s.slurm_account,
            extra_sbatch_lines=list(s.slurm_extra_sbatch),
            prologue=prologue,
            apptainer_image=s.slurm_image,
            apptainer_binds=list(s.slurm_binds),
            sandbox=self.sandbox,
            sandbox_required=s.app_sandbox == "on",
            head_address=head_address,
            ray_token_file=str(token_file) if token_file else None,
            ray_executable=self.ray_executable(),
            work_dir=str(self.work_dir),
            log_dir=str(self.log_dir),
            min_workers=s.slurm_min_workers,
            max_workers=s.slurm_max_workers,
            idle_timeout_s=s.slurm_idle_timeout,
            pending_timeout_s=s.slurm_pending_timeout,
            join_timeout_s=s.slurm_join_timeout,
            backoff_initial_s=s.slurm_backoff,
            backoff_max_s=max(s.slurm_backoff_max, s.slurm_backoff),
        )

    def render(self, head_address: str) -> str:
        return render_job_script(self.slurm_settings(head_address))

    def live_jobs(self) -> int:
        return sum(1 for job in self.jobs.values() if job.active and job.job_id not in self.cancel_reasons)

    def scale_up_node(self) -> dict[str, float] | None:
        """One more worker's Ray resources, or None when max_workers is reached or submission is
        blocked (a job pended for a reason that will not clear)."""
        settings = self.slurm_settings()
        if self.live_jobs() >= settings.max_workers or self.backoff.blocked is not None:
            return None
        return settings.job_spec().ray_resources()

    def worker_shape(self) -> dict[str, float] | None:
        """The Ray resources of one worker job of the configured size, whether or not one could
        be submitted right now; None when --slurm-max-workers is 0 (the cluster never grows)."""
        settings = self.slurm_settings()
        return settings.job_spec().ray_resources() if settings.max_workers > 0 else None

    # ---- one round ------------------------------------------------------------------------------
    def _record(self, decision: Decision, observed: dict[str, Any]) -> None:
        entry = decision.model_dump()
        entry["inputs"] = {**entry["inputs"], "observed": observed}
        self.decisions.append(entry)
        SCALING_ACTIONS.labels(decision.action).inc()

    def not_lost(self, jobs: list[SlurmJob]) -> list[str]:
        """Ended jobs that are no loss: cancelled by this service, or already ended when this
        service first saw them (e.g. cancelled by it before a restart)."""
        ended_unseen = [j.job_id for j in jobs if not j.active and j.job_id not in self.seen_active]
        return list(dict.fromkeys([*self.cancel_reasons, *ended_unseen]))

    def _repeats(self, decision: Decision) -> bool:
        """The same keep/wait/blocked message, or a backoff towards the same retry time, as the
        last decision: not recorded again."""
        if not self.decisions or decision.action not in ("keep", "wait", "blocked", "backoff"):
            return False
        last = self.decisions[-1]
        if last["action"] != decision.action:
            return False
        if decision.action == "backoff":
            return last["inputs"].get("retry_at") == decision.inputs.get("retry_at") is not None
        return bool(last["message"] == decision.message)

    async def _report_losses(self, lost: list[str], observed: dict[str, Any]) -> None:
        """Each job that ended without this service asking, once: its final state and cause (who
        cancelled it, when SLURM can tell)."""
        new = [job_id for job_id in lost if job_id not in self.losses and job_id in self.jobs]
        if not new:
            return
        cancelled = [job_id for job_id in new if self.jobs[job_id].state == JobState.CANCELLED]
        cancellers: dict[str, Canceller] = {}
        if cancelled:
            try:
                cancellers = await self.commands.who_cancelled(cancelled)
            except Exception as exc:
                self.logger.debug("slurm: who cancelled %s: %s", cancelled, exc)
        for job_id in new:
            job = self.jobs[job_id]
            canceller = cancellers.get(job_id)
            if job.state == JobState.CANCELLED and canceller is None:
                canceller = Canceller(source="none", note="the lookup failed")
            node = self.ray_node_of_job.get(job_id) or self.last_node_of_job.get(job_id)
            message = describe_loss(job, canceller, node)
            self.losses[job_id] = {
                "final_state": job.raw_state or job.state.value,
                "message": message,
                "cancelled_by": canceller.model_dump() if canceller is not None else None,
                "ray_node_id": node,
                "seen_at": time.time(),
            }
            self._record(
                Decision(
                    at=time.time(),
                    action="lost",
                    message=f"worker lost: {message}",
                    inputs={"job_id": job_id, "state": job.state.value, "exit_code": job.exit_code},
                ),
                observed,
            )
            self.logger.warning("slurm: worker lost: %s", message)

    def vanished(self, jobs: list[SlurmJob]) -> list[str]:
        """Jobs we think active that ``squeue`` no longer lists (they ended past MinJobAge)."""
        listed = {job.job_id for job in jobs}
        return [job_id for job_id, job in self.jobs.items() if job.active and job_id not in listed]

    def _remember(self, jobs: list[SlurmJob], final: dict[str, SlurmJob] | None = None) -> None:
        """Merge a ``squeue`` listing; vanished jobs take their final state from ``final`` (sacct)
        when it knows them, else UNKNOWN."""
        for job in jobs:
            self.jobs.pop(job.job_id, None)
            self.jobs[job.job_id] = job
            if job.active:
                self.seen_active.add(job.job_id)
        for job_id in self.vanished(jobs):
            known = (final or {}).get(job_id)
            if known is not None and not known.active:
                self.jobs[job_id] = known
            else:
                self.jobs[job_id] = self.jobs[job_id].model_copy(
                    update={"state": JobState.UNKNOWN, "raw_state": "GONE"}
                )
        finished = [job_id for job_id, job in self.jobs.items() if not job.active]
        for job_id in finished[: max(0, len(finished) - FINISHED_KEPT)]:
            del self.jobs[job_id]
            self.cancel_reasons.pop(job_id, None)
            self.losses.pop(job_id, None)
            self.seen_active.discard(job_id)

    async def run_round(self, head_address: str, gcs_address: str) -> None:
        settings = self.slurm_settings(head_address)
        jobs = await self.commands.list_jobs(include_finished=True)
        nodes, demand = await asyncio.to_thread(self.observe, gcs_address)
        now = time.time()
        final: dict[str, SlurmJob] = {}
        if self.vanished(jobs):
            # Final states of jobs squeue has forgotten: sacct (accounting or jobcomp) if there is one.
            try:
                finished = await self.commands.finished_jobs()
            except Exception as exc:
                self.logger.debug("slurm: sacct unavailable: %s", exc)
                finished = None
            final = {job.job_id: job for job in finished or []}
        self._remember(jobs, final)
        self.ray_node_of_job = {n.slurm_job_id: n.node_id for n in nodes if n.slurm_job_id}
        self.last_node_of_job.update(self.ray_node_of_job)
        # Jobs we already cancelled may still be listed as active for a moment: not capacity.
        considered = [j for j in jobs if not (j.active and j.job_id in self.cancel_reasons)]
        plan = plan_scaling(
            ScalingInputs(
                jobs=considered,
                ray_nodes=nodes,
                demand=demand,
                backoff=self.backoff,
                cancelled_by_us=self.not_lost(considered),
            ),
            settings,
            now,
        )
        observed = {
            "jobs": {j.job_id: j.state.value for j in considered if j.active},
            "ray_workers": {n.slurm_job_id: round(n.idle_s, 1) for n in nodes if n.slurm_job_id},
            "demand": [d.model_dump() for d in demand],
            "backoff_failures": self.backoff.consecutive_failures,
        }
        await self._report_losses(plan.lost, observed)
        for decision in plan.decisions:
            if self._repeats(decision):
                continue
            self._record(decision, observed)
            log = self.logger.warning if decision.action in ("blocked", "cancel") else self.logger.info
            log("slurm: %s: %s", decision.action, decision.message)
        if plan.cancel:
            for cancel in plan.cancel:
                self.cancel_reasons[cancel.job_id] = f"{cancel.kind}: {cancel.reason}"
            await self.commands.cancel([c.job_id for c in plan.cancel])
        self.backoff = plan.backoff
        if plan.submit:
            self.work_dir.mkdir(parents=True, exist_ok=True)  # the jobs' --chdir
            self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in plan.submit:
            try:
                job_id = await self.commands.submit(render_job_script(settings, job=spec))
            except (SlurmCommandError, OSError) as exc:
                self.backoff = self.backoff.failed(time.time(), str(exc))
                delay = self.backoff.delay_s(settings)
                message = f"sbatch failed ({exc}); retrying in {delay:.0f} s"
                self._record(Decision(at=time.time(), action="backoff", message=message), observed)
                self.logger.warning("slurm: %s", message)
                break
            self.backoff = self.backoff.succeeded()
            self.jobs[job_id] = SlurmJob(
                job_id=job_id, name=self.commands.job_name, state=JobState.PENDING, submitted_at=time.time()
            )
            self.seen_active.add(job_id)
            self.logger.info("slurm: submitted job %s", job_id)
        self.last_round_at = time.time()
        self.rounds += 1

    async def shutdown(self) -> list[str]:
        """Cancel every active job of this worker (and only those)."""
        jobs = await self.commands.list_jobs()
        ids = [job.job_id for job in jobs if job.active]
        for job_id in ids:
            self.cancel_reasons.setdefault(job_id, "shutdown: the service stopped")
        if ids:
            await self.commands.cancel(ids)
            self.logger.info("slurm: cancelled %s on shutdown", ", ".join(ids))
        return ids

    # ---- status ----------------------------------------------------------------------------------
    def status(self, decisions: int = 20, ray_node_of_job: dict[str, str] | None = None) -> dict[str, Any]:
        """``ray_node_of_job``: which live Ray node each job runs on, as the caller's own status
        shows its nodes, so that for live jobs one answer agrees with itself; default: as this
        service's last scaling round saw them. A lost job keeps the node recorded at its loss."""
        now = time.time()
        live_nodes = self.ray_node_of_job if ray_node_of_job is None else ray_node_of_job
        s = self.cluster_settings
        settings = self.slurm_settings()
        retry_at = self.backoff.retry_at(settings)
        jobs = []
        for job in reversed(self.jobs.values()):
            jobs.append(
                {
                    "job_id": job.job_id,
                    "state": job.state.value,
                    "reason": self.cancel_reasons.get(job.job_id)
                    or (f"lost: {self.losses[job.job_id]['message']}" if job.job_id in self.losses else None)
                    or job.reason,
                    "slurm_reason": job.reason,
                    "final_state": None if job.active else (job.raw_state or job.state.value),
                    "lost": job.job_id in self.losses,
                    "cancelled_by": (self.losses.get(job.job_id) or {}).get("cancelled_by"),
                    "node": job.nodes,
                    "age_s": _age(job.submitted_at, now),
                    "running_s": _age(job.started_at, job.ended_at or now) if job.started_at else None,
                    "ray_node_id": live_nodes.get(job.job_id)
                    or (self.losses.get(job.job_id) or {}).get("ray_node_id"),
                    "cancelled_by_us": job.job_id in self.cancel_reasons,
                }
            )
        return {
            "tag": self.tag,
            "job_name": self.commands.job_name,
            "worker": {
                "cpus": s.slurm_worker_cpus,
                "memory_gb": s.slurm_worker_memory_gb,
                "gpus": s.slurm_worker_gpus,
                "time_limit": s.slurm_time_limit,
                "partition": s.slurm_partition,
                "image": s.slurm_image,
            },
            "min_workers": s.slurm_min_workers,
            "max_workers": s.slurm_max_workers,
            "idle_timeout": s.slurm_idle_timeout,
            "pending_timeout": s.slurm_pending_timeout,
            "live_jobs": self.live_jobs(),
            "jobs": jobs,
            "decisions": list(self.decisions)[-decisions:],
            "backoff": {
                **self.backoff.model_dump(exclude={"blocked"}),
                "retry_in_s": round(max(0.0, retry_at - now), 1) if retry_at is not None else None,
                "max_s": settings.backoff_max_s,
            },
            # Submission stopped: a job pended for a reason that will not clear (what to change).
            "blocked": self.backoff.blocked.model_dump() if self.backoff.blocked else None,
            "error": self.error,
            "last_round_at": self.last_round_at,
            "rounds": self.rounds,
            "log_dir": str(self.log_dir),
        }
