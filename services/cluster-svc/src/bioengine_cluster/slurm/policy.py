"""The scaling policy (pure): what to submit and what to cancel, from one observation.

The autoscaler feeds :func:`plan_scaling` this worker's jobs from ``squeue``, the Ray nodes, the
pending demand and the ``sbatch`` backoff state, and carries out the returned :class:`ScalingPlan`.
No subprocess, no Ray, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from .._resources import EPSILON, describe, fits, shortfall
from .._status import PendingDemand
from .queue import WAITING_STATES, JobState, SlurmJob
from .reasons import classify_pending_reason, is_lost
from .settings import JobSpec, SlurmSettings, job_comment, job_name

__all__ = [
    "UNRUNNABLE_AFTER_S",
    "BackoffState",
    "BlockedSubmission",
    "Decision",
    "JobCancel",
    "RayWorkerNode",
    "ScalingInputs",
    "ScalingPlan",
    "plan_scaling",
]

#: A job pending for a reason that will not clear is given up after this long at most (SLURM may
#: show a passing reason right after submission), or after the pending timeout when shorter.
UNRUNNABLE_AFTER_S = 30.0


def _bundle(resources: Mapping[str, float]) -> str:
    return "{" + describe(resources) + "}"


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


class _Bin:
    __slots__ = ("free", "key")

    def __init__(self, key: str, free: Mapping[str, float]) -> None:
        self.key = key
        self.free = dict(free)

    def take(self, needed: Mapping[str, float]) -> bool:
        if not fits(needed, self.free):
            return False
        for name, amount in needed.items():
            self.free[name] = self.free.get(name, 0.0) - amount
        return True


def _expand(demand: Iterable[PendingDemand]) -> list[dict[str, float]]:
    bundles = []
    for entry in demand:
        resources = {name: float(amount) for name, amount in entry.resources.items() if amount > EPSILON}
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
            elif any(fits(bundle, total) for total in total_of_nodes):
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
                f"{entry.count} x {_bundle(entry.resources)} can never run here: "
                f"{shortfall(entry.resources, [new_job], 'a worker job')} and no Ray node is large enough",
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
            f"submit {needed} job(s) of {_bundle(new_job)} for {why}",
            count=needed,
            **inputs,
        )
    plan.backoff = backoff
    return plan
