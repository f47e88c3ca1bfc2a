"""The scaling loop's ``run_round`` against a fake SLURM and hand-made Ray nodes: no daemons.

The autoscaler takes its SLURM client (:class:`SlurmClient`) and its Ray observation as
parameters; here both are in-memory, so each round's decisions and commands are checked exactly.
The real SLURM runs in ``test_slurm_real.py`` and ``test_slurm_autoscale.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from bioengine_cluster._settings import ClusterSettings
from bioengine_cluster.slurm import (
    Canceller,
    JobState,
    PendingDemand,
    RayWorkerNode,
    SlurmAutoscaler,
    SlurmClient,
    SlurmCommandError,
    SlurmCommands,
    SlurmJob,
    job_comment,
    job_name,
)

TAG = "fake1"
HEAD = "10.0.0.1:6379"


class FakeSlurm:
    """An in-memory SLURM queue for one worker tag: jobs start PENDING; tests move them on."""

    def __init__(self, tag: str = TAG, cpus: int = 2, memory_gb: float = 4.0) -> None:
        self.job_name = job_name(tag)
        self.comment = job_comment(tag)
        self.cpus, self.memory_mb = cpus, memory_gb * 1024
        self.jobs: dict[str, SlurmJob] = {}
        self.scripts: list[str] = []
        self.cancelled: list[str] = []
        self.submit_errors: list[str] = []
        self._next = 1000

    async def submit(self, script: str) -> str:
        if self.submit_errors:
            raise SlurmCommandError(["sbatch", "--parsable"], self.submit_errors.pop(0), 1)
        self._next += 1
        job_id = str(self._next)
        self.jobs[job_id] = SlurmJob(
            job_id=job_id,
            name=self.job_name,
            comment=self.comment,
            state=JobState.PENDING,
            raw_state="PENDING",
            submitted_at=time.time(),
            cpus=self.cpus,
            memory_mb=self.memory_mb,
        )
        self.scripts.append(script)
        return job_id

    async def list_jobs(self, *, include_finished: bool = False) -> list[SlurmJob]:
        return [j.model_copy() for j in self.jobs.values() if include_finished or j.active]

    async def cancel(self, job_ids: Iterable[str]) -> list[str]:
        ids = list(job_ids)
        unknown = [job_id for job_id in ids if job_id not in self.jobs]
        assert not unknown, f"cancelled jobs it never listed: {unknown}"
        for job_id in ids:
            self.set_state(job_id, JobState.CANCELLED)
        self.cancelled += ids
        return ids

    async def finished_jobs(self, since: str = "now-1days") -> list[SlurmJob] | None:
        return None

    async def who_cancelled(self, job_ids: Iterable[str]) -> dict[str, Canceller]:
        return {job_id: Canceller(source="none", note="fake SLURM") for job_id in job_ids}

    # ---- test controls ----------------------------------------------------------------------------
    def set_state(self, job_id: str, state: JobState) -> None:
        update: dict[str, Any] = {"state": state, "raw_state": state.value}
        if state == JobState.RUNNING:
            update |= {"started_at": time.time(), "nodes": "node1"}
        self.jobs[job_id] = self.jobs[job_id].model_copy(update=update)


class FakeRay:
    """What ``observe_ray`` would read: the head, worker nodes by SLURM job id, the demand."""

    def __init__(self) -> None:
        self.nodes: list[RayWorkerNode] = [RayWorkerNode(node_id="head", total={}, available={})]
        self.demand: list[PendingDemand] = []
        self.addresses: list[str] = []

    def __call__(self, gcs_address: str) -> tuple[list[RayWorkerNode], list[PendingDemand]]:
        self.addresses.append(gcs_address)
        return [n.model_copy() for n in self.nodes], [d.model_copy() for d in self.demand]

    def join(self, job_id: str, *, cpus: float = 2.0, free: float | None = None, idle_s: float = 0.0) -> None:
        total = {"CPU": cpus, f"slurm_job_id:{job_id}": 1.0}
        self.nodes.append(
            RayWorkerNode(
                node_id=f"node-{job_id}",
                slurm_job_id=job_id,
                total=total,
                available={**total, "CPU": cpus if free is None else free},
                idle_s=idle_s,
            )
        )

    def want(self, count: int = 1, **resources: float) -> None:
        self.demand = [PendingDemand(resources=resources, count=count, source="task_actor")]


def make_scaler(tmp_path: Path, slurm: FakeSlurm, ray: FakeRay, **settings: Any) -> SlurmAutoscaler:
    values: dict[str, Any] = dict(
        mode="slurm",
        workspace_dir=tmp_path / "ws",
        slurm_tag=TAG,
        slurm_worker_cpus=2,
        slurm_worker_memory_gb=4,
        slurm_max_workers=3,
    )
    values.update(settings)
    return SlurmAutoscaler(ClusterSettings(**values), logging.getLogger("test"), commands=slurm, observe=ray)


def run(scaler: SlurmAutoscaler) -> None:
    asyncio.run(scaler.run_round(HEAD, "10.0.0.1:6379"))


def actions(scaler: SlurmAutoscaler) -> list[str]:
    return [d["action"] for d in scaler.decisions]


@pytest.fixture
def fake_slurm() -> FakeSlurm:
    return FakeSlurm()


@pytest.fixture
def ray() -> FakeRay:
    return FakeRay()


def test_the_fake_and_the_real_adapter_are_slurm_clients(fake_slurm):
    assert isinstance(fake_slurm, SlurmClient) and isinstance(SlurmCommands(TAG), SlurmClient)
    assert fake_slurm.job_name == SlurmCommands(TAG).job_name == "bioengine-fake1-worker"


def test_no_demand_no_job(tmp_path, fake_slurm, ray):
    scaler = make_scaler(tmp_path, fake_slurm, ray)
    run(scaler)
    assert fake_slurm.scripts == [] and scaler.live_jobs() == 0
    assert ray.addresses == ["10.0.0.1:6379"] and scaler.rounds == 1


def test_pending_demand_submits_one_job_and_counts_it_while_it_pends(tmp_path, fake_slurm, ray):
    scaler = make_scaler(tmp_path, fake_slurm, ray)
    ray.want(CPU=1)
    run(scaler)
    assert len(fake_slurm.scripts) == 1
    script = fake_slurm.scripts[0]
    assert "#SBATCH --cpus-per-task=2" in script and f"--address={HEAD}" in script
    assert "#SBATCH --job-name=bioengine-fake1-worker" in script
    assert actions(scaler)[-1] == "submit" and scaler.live_jobs() == 1
    # The job pends: it is capacity on its way, so the same demand submits nothing more.
    run(scaler)
    assert len(fake_slurm.scripts) == 1
    # It runs and its node joins with the demand placed on it: still one job, none cancelled.
    (job_id,) = fake_slurm.jobs
    fake_slurm.set_state(job_id, JobState.RUNNING)
    ray.join(job_id, free=1.0)
    ray.demand = []
    run(scaler)
    assert len(fake_slurm.scripts) == 1 and fake_slurm.cancelled == []
    status = scaler.status()
    assert [(j["job_id"], j["state"], j["ray_node_id"]) for j in status["jobs"]] == [
        (job_id, "RUNNING", f"node-{job_id}")
    ]
    # The caller's own view of the nodes, when given, names each job's node (get_status passes
    # the cluster sample its "nodes" section shows, so one answer agrees with itself).
    assert scaler.status(ray_node_of_job={})["jobs"][0]["ray_node_id"] is None
    assert scaler.status(ray_node_of_job={job_id: "n2"})["jobs"][0]["ray_node_id"] == "n2"


def test_demand_beyond_max_workers_is_limited(tmp_path, fake_slurm, ray):
    scaler = make_scaler(tmp_path, fake_slurm, ray, slurm_max_workers=2)
    ray.want(count=5, CPU=2)  # five jobs' worth
    run(scaler)
    assert len(fake_slurm.scripts) == 2 and scaler.live_jobs() == 2
    limit = next(d for d in scaler.decisions if d["action"] == "limit")
    assert "max_workers=2 allows 2" in limit["message"] and limit["inputs"]["wanted"] == 5
    # Both pend: the next round is at the maximum and submits nothing.
    run(scaler)
    assert len(fake_slurm.scripts) == 2
    assert "max_workers=2 allows 0" in scaler.decisions[-1]["message"]


def test_idle_worker_is_cancelled_unless_needed(tmp_path, fake_slurm, ray):
    scaler = make_scaler(tmp_path, fake_slurm, ray, slurm_idle_timeout=300)
    job_id = asyncio.run(fake_slurm.submit("#!/bin/bash\n"))
    fake_slurm.set_state(job_id, JobState.RUNNING)
    ray.join(job_id, idle_s=100)
    run(scaler)
    assert fake_slurm.cancelled == []  # idle, but not for long enough
    # Idle past the timeout, with demand that fits on it: kept.
    ray.nodes[-1].idle_s = 400
    ray.want(CPU=1)
    run(scaler)
    assert fake_slurm.cancelled == [] and "needed for pending demand" in scaler.decisions[-1]["message"]
    # No demand left: cancelled with the reason, and not counted as a loss.
    ray.demand = []
    run(scaler)
    assert fake_slurm.cancelled == [job_id]
    assert scaler.cancel_reasons[job_id].startswith("idle: idle for 400 s")
    run(scaler)
    (job,) = scaler.status()["jobs"]
    assert job["state"] == "CANCELLED" and job["cancelled_by_us"] and not job["lost"]


def test_min_workers_keep_an_idle_worker(tmp_path, fake_slurm, ray):
    scaler = make_scaler(tmp_path, fake_slurm, ray, slurm_min_workers=1)
    job_id = asyncio.run(fake_slurm.submit("#!/bin/bash\n"))
    fake_slurm.set_state(job_id, JobState.RUNNING)
    ray.join(job_id, idle_s=10_000)
    run(scaler)
    assert fake_slurm.cancelled == [] and "min_workers=1" in scaler.decisions[-1]["message"]


def test_failed_submission_backs_off_then_retries(tmp_path, fake_slurm, ray):
    scaler = make_scaler(tmp_path, fake_slurm, ray, slurm_backoff=0.2, slurm_backoff_max=1.0)
    fake_slurm.submit_errors = ["sbatch: error: Batch job submission failed: Invalid account"]
    ray.want(CPU=1)
    run(scaler)
    assert fake_slurm.jobs == {} and scaler.backoff.consecutive_failures == 1
    last = scaler.decisions[-1]
    assert last["action"] == "backoff" and "Invalid account" in last["message"]
    # Within the backoff: no sbatch at all.
    run(scaler)
    assert fake_slurm.jobs == {} and scaler.decisions[-1]["action"] == "backoff"
    assert scaler.status()["backoff"]["consecutive_failures"] == 1
    # After it: submitted, and the failure is forgiven.
    time.sleep(0.25)
    run(scaler)
    assert len(fake_slurm.jobs) == 1 and scaler.backoff.consecutive_failures == 0


def test_repeated_failures_double_the_wait(tmp_path, fake_slurm, ray):
    scaler = make_scaler(tmp_path, fake_slurm, ray, slurm_backoff=0.1, slurm_backoff_max=0.3)
    fake_slurm.submit_errors = ["sbatch: error: slurmctld down"] * 3
    ray.want(CPU=1)
    delays = []
    for _ in range(3):
        run(scaler)
        settings = scaler.slurm_settings()
        delays.append(scaler.backoff.delay_s(settings))
        time.sleep(delays[-1] + 0.02)
    assert delays == [0.1, 0.2, 0.3]  # doubling, capped by --slurm-backoff-max
    run(scaler)
    assert len(fake_slurm.jobs) == 1


def test_a_lost_worker_is_reported_and_replaced(tmp_path, fake_slurm, ray):
    scaler = make_scaler(tmp_path, fake_slurm, ray)
    job_id = asyncio.run(fake_slurm.submit("#!/bin/bash\n"))
    fake_slurm.set_state(job_id, JobState.RUNNING)
    ray.join(job_id, free=0.0)
    run(scaler)
    # Its walltime runs out: the node leaves Ray, the work it held is pending again.
    fake_slurm.set_state(job_id, JobState.TIMEOUT)
    ray.nodes = ray.nodes[:1]
    ray.want(CPU=2)
    run(scaler)
    assert job_id in scaler.losses and "walltime" in scaler.losses[job_id]["message"]
    assert "lost" in actions(scaler) and len(fake_slurm.scripts) == 2
    assert scaler.live_jobs() == 1


def test_jobs_submitted_by_the_fake_are_tagged(tmp_path, fake_slurm, ray):
    """The fake's jobs pass the policy's tag filter (a wrong name would be ignored as foreign)."""
    scaler = make_scaler(tmp_path, fake_slurm, ray)
    ray.want(CPU=1)
    run(scaler)
    run(scaler)
    assert not any("not tagged" in d["message"] for d in scaler.decisions)
