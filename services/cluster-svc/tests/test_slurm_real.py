"""SlurmCommands against a real SLURM (``infra/slurm/setup-slurm.sh`` starts one on this machine).

Skipped where SLURM is not running, but FAIL instead when ``BIOENGINE_REQUIRE_SLURM=1`` (CI).
The jobs run ``sleep`` instead of ``ray start`` (the ``worker_command`` setting).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bioengine_cluster.slurm import (
    BackoffState,
    JobState,
    RayWorkerNode,
    ScalingInputs,
    SlurmCommandError,
    SlurmCommands,
    SlurmJob,
    SlurmSettings,
    plan_scaling,
    render_job_script,
)

pytestmark = pytest.mark.integration


def new_tag() -> str:
    return f"test{uuid.uuid4().hex[:10]}"


def settings(tag: str, tmp_path: Path, **overrides) -> SlurmSettings:
    values = dict(
        tag=tag,
        cpus=1,
        memory_gb=0.5,
        time_limit="5",
        worker_command="sleep 30",
        log_dir=str(tmp_path / "slurm-logs"),
        pending_timeout_s=1,
    )
    values.update(overrides)
    return SlurmSettings(**values)


@pytest.fixture
async def commands(slurm) -> AsyncIterator[list[SlurmCommands]]:
    """SlurmCommands made in a test; their remaining jobs are cancelled afterwards."""
    made: list[SlurmCommands] = []
    yield made
    for cmds in made:
        jobs = await cmds.list_jobs()
        await cmds.cancel([j.job_id for j in jobs])


async def wait_for(cmds: SlurmCommands, predicate, timeout: float = 30.0, **kw) -> list[SlurmJob]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = await cmds.list_jobs(**kw)
        if predicate(jobs):
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last listing: {[(j.job_id, j.state, j.reason) for j in jobs]}")
        await asyncio.sleep(0.2)


async def test_submit_list_cancel(commands, tmp_path):
    tag = new_tag()
    cmds = SlurmCommands(tag)
    commands.append(cmds)
    conf = settings(tag, tmp_path)
    started = time.monotonic()
    job_id = await cmds.submit(render_job_script(conf))
    assert job_id.isdigit()

    jobs = await wait_for(
        cmds, lambda js: any(j.job_id == job_id and j.state == JobState.RUNNING for j in js)
    )
    running_after = time.monotonic() - started
    (job,) = jobs
    assert job.name == f"bioengine-{tag}-worker" and job.comment == f"bioengine:{tag}" and job.tag == tag
    assert job.cpus == 1 and job.memory_mb == 512 and job.nodes and job.started_at is not None
    assert running_after < 20

    # the output file lands in the log dir, which submit() created
    log = Path(conf.log_dir or "") / f"bioengine-{tag}-worker-{job_id}.out"
    deadline = time.monotonic() + 10
    while not (log.exists() and "bioengine worker job" in log.read_text()) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert f"bioengine worker job {job_id}" in log.read_text()

    assert await cmds.cancel([job_id]) == [job_id]
    await wait_for(cmds, lambda js: not js)
    finished = await cmds.list_jobs(include_finished=True)
    assert [(j.job_id, j.state) for j in finished] == [(job_id, JobState.CANCELLED)]
    # cancelling a job that is already gone is fine
    await cmds.cancel([job_id])


async def test_tags_never_see_each_other(commands, tmp_path):
    tag_a, tag_b = new_tag(), new_tag()
    a, b = SlurmCommands(tag_a), SlurmCommands(tag_b)
    commands += [a, b]
    job_a = await a.submit(render_job_script(settings(tag_a, tmp_path)))
    job_b = await b.submit(render_job_script(settings(tag_b, tmp_path)))

    listed_a = await a.list_jobs(include_finished=True)
    listed_b = await b.list_jobs(include_finished=True)
    assert [j.job_id for j in listed_a] == [job_a]
    assert [j.job_id for j in listed_b] == [job_b]
    with pytest.raises(ValueError, match=f"refusing to cancel {job_b}"):
        await a.cancel([job_b])

    # a script rendered for another tag is re-tagged by the command line: it stays A's job
    job_a2 = await a.submit(render_job_script(settings(tag_b, tmp_path)))
    assert {j.job_id for j in await a.list_jobs()} == {job_a, job_a2}
    assert [j.job_id for j in await b.list_jobs()] == [job_b]

    await a.cancel([job_a, job_a2])
    await wait_for(a, lambda js: not js)
    assert [(j.job_id, j.active) for j in await b.list_jobs()] == [(job_b, True)]


async def test_job_that_never_starts_is_cancelled_by_the_policy(commands, tmp_path):
    tag = new_tag()
    cmds = SlurmCommands(tag)
    commands.append(cmds)
    # more CPUs than the node has: SLURM accepts it, then it pends for ever (PartitionConfig here)
    conf = settings(tag, tmp_path, cpus=512, max_workers=1)
    job_id = await cmds.submit(render_job_script(conf))
    jobs = await wait_for(cmds, lambda js: bool(js) and js[0].reason is not None)
    assert jobs[0].state == JobState.PENDING and jobs[0].started_at is None
    reason = jobs[0].reason or ""

    observed = ScalingInputs(jobs=jobs, ray_nodes=[RayWorkerNode(node_id="head")], backoff=BackoffState())
    plan = plan_scaling(observed, conf, now=(jobs[0].submitted_at or 0) + 5)
    # a job no node of the partition can hold: the reason will not clear, submission stops
    assert reason == "PartitionConfig"
    assert [(c.job_id, c.kind) for c in plan.cancel] == [(job_id, "unrunnable")]
    assert reason in plan.cancel[0].reason and plan.failures == 1
    assert plan.backoff.blocked is not None and plan.backoff.blocked.reason_code == reason
    await cmds.cancel([c.job_id for c in plan.cancel])
    await wait_for(cmds, lambda js: not js)


async def test_final_states(commands, tmp_path):
    tag = new_tag()
    cmds = SlurmCommands(tag)
    commands.append(cmds)
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    # a relative log dir is under the job's --chdir; submit() creates it there
    ok_conf = settings(tag, tmp_path, worker_command="echo done", work_dir=str(work_dir), log_dir="logs")
    ok = await cmds.submit(render_job_script(ok_conf))
    bad = await cmds.submit(render_job_script(settings(tag, tmp_path, worker_command="exit 3")))
    jobs = await wait_for(
        cmds,
        lambda js: {j.job_id for j in js if not j.active} >= {ok, bad},
        include_finished=True,
    )
    states = {j.job_id: j for j in jobs}
    assert states[ok].state == JobState.COMPLETED and states[ok].ended_at is not None
    assert states[bad].state == JobState.FAILED and states[bad].reason == "NonZeroExitCode"
    assert (work_dir / "logs" / f"bioengine-{tag}-worker-{ok}.out").read_text().splitlines()[-1] == "done"

    # sacct: accounting storage or, as set up here, the jobcomp/filetxt log (sacct -c)
    finished = await cmds.finished_jobs()
    if finished is None:
        assert cmds.sacct_mode == "unavailable"
        return
    by_id = {j.job_id: j for j in finished}
    assert by_id[ok].state == JobState.COMPLETED and by_id[ok].exit_code == "0:0"
    assert by_id[bad].state == JobState.FAILED and by_id[bad].exit_code == "3:0"
    assert all(j.name == f"bioengine-{tag}-worker" for j in finished)


async def test_sbatch_errors_are_clear(commands, tmp_path):
    tag = new_tag()
    cmds = SlurmCommands(tag)
    commands.append(cmds)
    with pytest.raises(SlurmCommandError, match=r"(?i)invalid partition"):
        await cmds.submit(render_job_script(settings(tag, tmp_path, partition="no-such-partition")))
    missing = SlurmCommands(tag, bin_dir=str(tmp_path / "nowhere"))
    with pytest.raises(SlurmCommandError, match="not found"):
        await missing.list_jobs()
    assert await cmds.list_jobs() == []


async def test_who_cancelled_a_job(commands, tmp_path):
    """Without SLURM accounting (as set up here) squeue, scontrol and sacct -c say CANCELLED but
    not by whom; the controller's log does, when this host can read it."""
    tag = new_tag()
    cmds = SlurmCommands(tag)
    commands.append(cmds)
    job_id = await cmds.submit(render_job_script(settings(tag, tmp_path, worker_command="sleep 60")))
    await wait_for(cmds, lambda js: any(j.state == JobState.RUNNING for j in js))
    scancel = await asyncio.create_subprocess_exec("scancel", job_id)
    assert await scancel.wait() == 0
    jobs = await wait_for(
        cmds, lambda js: bool(js) and js[0].state == JobState.CANCELLED, include_finished=True
    )
    assert jobs[0].reason is None  # squeue gives no reason for a cancelled job
    who = (await cmds.who_cancelled([job_id]))[job_id]
    log = await cmds.controller_log()
    if cmds.sacct_mode == "accounting":
        assert who.source == "sacct" and who.uid == os.getuid()
    elif log is not None:
        assert (who.uid, who.source) == (os.getuid(), "the slurmctld log"), who
        assert who.user == pwd.getpwuid(os.getuid()).pw_name
    else:
        assert who.uid is None and who.note and "not readable" in who.note
    # a job id the log does not name: unknown, with the reason
    other = (await cmds.who_cancelled(["999999999"]))["999999999"]
    assert other.uid is None and other.source == "none" and "sacct" in (other.note or "")
