"""slurm mode end to end: bioengine-cluster with a real Ray head (0 CPUs) and the real SLURM of
this machine (``infra/slurm/setup-slurm.sh``) submits Ray worker jobs for demand, releases idle
ones, gives up on jobs stuck in the queue and cancels only its own jobs on shutdown.

Skipped where SLURM is not running, but FAIL instead when ``BIOENGINE_REQUIRE_SLURM=1`` (CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bioengine_cluster.slurm import SlurmCommands, SlurmSettings, render_job_script
from bioengine_common import connect
from bioengine_common.local_stack import HeadOptions, LocalHead, short_temp_dir
from bioengine_common.testing import ADMIN_USER, wait_for_service

pytestmark = pytest.mark.integration


def _tag() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def cleanup_tags(slurm) -> Any:
    """Tags used by a test: whatever jobs they still have are cancelled afterwards, and no Ray head
    outlives the test."""
    tags: list[str] = []
    dirs: list[Path] = []
    yield tags, dirs
    for tag in tags:
        cmds = SlurmCommands(tag)
        with contextlib.suppress(Exception):
            await cmds.cancel([j.job_id for j in await cmds.list_jobs()])
    for directory in dirs:
        head = LocalHead(short_temp_dir(directory / "ray"), HeadOptions(), logging.getLogger("test"))
        if head.adopt():
            head.stop()


async def _start(start_service, hypha_server, admin_client, workspace_dir, tag, client_id, *flags):
    service = start_service(
        "cluster",
        hypha_server,
        "--mode",
        "slurm",
        "--object-store-memory-in-gb",
        "0.2",
        "--status-interval",
        "1",
        "--slurm-tag",
        tag,
        "--slurm-poll-interval",
        "1",
        "--slurm-worker-cpus",
        "1",
        "--slurm-worker-memory-gb",
        "1",
        "--slurm-time-limit",
        "10",
        "--client-id",
        client_id,
        *flags,
        workspace_dir=workspace_dir,
    )
    info = await wait_for_service(admin_client, f"{client_id}:bioengine-cluster", timeout=60)
    return service, await admin_client.get_service(info["id"])


async def _wait(proxy, predicate, timeout, what):
    deadline = time.monotonic() + timeout
    status = None
    while True:
        with contextlib.suppress(Exception):
            status = await proxy.get_status()
            if predicate(status):
                return status
        if time.monotonic() > deadline:
            slurm = (status or {}).get("ray_cluster", {}).get("slurm")
            raise AssertionError(f"{what}: not reached within {timeout} s; slurm status: {slurm}")
        await asyncio.sleep(0.5)


async def _queue_empty(cmds: SlurmCommands, timeout: float = 30.0) -> None:
    """No job of this tag left in the queue (COMPLETING passes within SLURM's KillWait)."""
    deadline = time.monotonic() + timeout
    while jobs := await cmds.list_jobs():
        assert time.monotonic() < deadline, f"jobs of {cmds.tag} still queued: {jobs}"
        await asyncio.sleep(0.5)


def _slurm(status: dict) -> dict:
    return status["ray_cluster"]["slurm"]


WHERE = """
import os
import subprocess
import ray

def analyze():
    return {"job": os.environ.get("SLURM_JOB_ID"), "node": ray.get_runtime_context().get_node_id()}
"""


async def test_demand_submits_a_worker_that_runs_the_task_then_idles_out(
    slurm, cleanup_tags, hypha_server, start_service, admin_client, tmp_path, monkeypatch
):
    # The service holds Hypha tokens in its environment (BIOENGINE_TOKEN, and HYPHA_TOKEN here):
    # none may reach the SLURM job (sbatch exports its whole environment by default).
    monkeypatch.setenv("HYPHA_TOKEN", "hypha-token-value-of-the-service")
    tags, dirs = cleanup_tags
    tag = _tag()
    tags.append(tag)
    dirs.append(tmp_path / "w1")
    _, proxy = await _start(
        start_service, hypha_server, admin_client, tmp_path / "w1", tag, "slurm-a",
        "--slurm-idle-timeout", "10", "--slurm-max-workers", "2",
    )  # fmt: skip
    status = await _wait(proxy, lambda s: s["ready"] and _slurm(s)["rounds"] > 0, 90, "ready")
    assert status["ray_cluster"]["cluster"]["total_cpu"] == 0 and _slurm(status)["jobs"] == []

    # The dry run: the exact script, with this environment's ray and the tag; nothing submitted.
    script = await proxy.render_job_script()
    assert script.startswith("#!/bin/bash") and f"--job-name=bioengine-{tag}-worker" in script
    assert "/.venv/bin/ray start --address=" in script and "RAY_ENABLE_UV_RUN_RUNTIME_ENV=0" in script
    assert _slurm(await proxy.get_status())["jobs"] == []
    # A new worker job would hold a 1-CPU request: "fits after scale-up".
    fit = await proxy.check_resources(num_cpus=1)
    assert fit["verdict"] == "fits_after_scale_up", fit
    assert (await proxy.check_resources(num_cpus=2))["verdict"] == "cannot_fit"

    # (a) 1 CPU of demand on a head with none: a job is submitted, joins, runs the task.
    started = time.monotonic()
    result = await proxy.run_code(code=WHERE, remote_options={"num_cpus": 1}, timeout=150)
    elapsed = time.monotonic() - started
    assert "error" not in result, result
    ran_on = result["result"]

    # The status is sampled (the cluster and the scaling round each once a second here), so the
    # task may return before either has seen its node: wait for both to name it.
    def _job_on_node(s: dict) -> bool:
        job = next((j for j in _slurm(s)["jobs"] if j["job_id"] == ran_on["job"]), None)
        node = s["ray_cluster"]["nodes"].get(ran_on["node"]) or {}
        return (
            job is not None
            and job["ray_node_id"] == ran_on["node"]
            and node.get("slurm_job_id") == job["job_id"]
        )

    status = await _wait(proxy, _job_on_node, 15, f"job {ran_on['job']} shown on node {ran_on['node']}")
    jobs = {j["job_id"]: j for j in _slurm(status)["jobs"]}
    job = jobs[ran_on["job"]]
    assert job["state"] == "RUNNING", job
    # No double submission while the job was pending. (On a loaded machine a worker's raylet may
    # time out at start: that job FAILED, is reported lost and replaced, which is no double.)
    assert [j for j in jobs.values() if not j["lost"]] == [job], jobs
    submits = [d for d in _slurm(status)["decisions"] if d["action"] == "submit"]
    assert submits and submits[0]["inputs"]["observed"]["demand"]
    print(f"demand -> task returned from a new SLURM worker in {elapsed:.1f} s")

    # The job's Ray worker runs behind the head's token, read from the file; the task sees the
    # path, no token value and no Hypha token. Neither the script nor scontrol shows the token.
    token_file = (tmp_path / "w1" / "ray" / "auth_token").resolve()
    token = token_file.read_text().strip()
    on_job = await proxy.run_code(code=ENVIRONMENT, remote_options={"num_cpus": 1}, timeout=60)
    task_env = on_job["result"]
    assert "error" not in on_job and task_env.get("SLURM_JOB_ID"), "ran on the head, not in a job"
    assert task_env["RAY_AUTH_MODE"] == "token" and task_env["RAY_AUTH_TOKEN_PATH"] == str(token_file)
    assert not [k for k in task_env if k.startswith("HYPHA_") or k in ("BIOENGINE_TOKEN", "RAY_AUTH_TOKEN")]
    assert not [k for k, v in task_env.items() if token in v or "hypha-token-value" in v]
    assert token not in script and token not in json.dumps(await proxy.get_status())
    for command in (["scontrol", "show", "job", task_env["SLURM_JOB_ID"]], ["squeue", "--format=%all"]):
        shown = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, check=True)
        assert shown.stdout.strip() and token not in shown.stdout and "hypha-token-value" not in shown.stdout

    # (b) demand is over: after the 10 s idle timeout the worker is cancelled and leaves Ray.
    idle_start = time.monotonic()
    status = await _wait(
        proxy,
        lambda s: (
            _slurm(s)["live_jobs"] == 0
            and all(n["slurm_job_id"] is None for n in s["ray_cluster"]["nodes"].values() if n["alive"])
        ),
        60,
        "idle worker cancelled",
    )
    print(f"idle worker cancelled and gone from Ray {time.monotonic() - idle_start:.1f} s after the task")
    job = next(j for j in _slurm(status)["jobs"] if j["job_id"] == job["job_id"])
    assert job["cancelled_by_us"] and job["reason"].startswith("idle:"), job
    await _queue_empty(SlurmCommands(tag))


ENVIRONMENT = """
import os

def analyze():
    return dict(os.environ)
"""


async def test_stuck_job_is_given_up_and_shutdown_cancels_only_own_jobs(
    slurm, cleanup_tags, hypha_server, start_service, admin_client, tmp_path
):
    tags, dirs = cleanup_tags
    tag, other = _tag(), _tag()
    tags += [tag, other]
    dirs.append(tmp_path / "w2")
    # Another worker's job (another tag) on the same SLURM: it must survive this worker.
    other_cmds = SlurmCommands(other)
    other_job = await other_cmds.submit(
        render_job_script(
            SlurmSettings(
                tag=other, memory_gb=0.5, time_limit="5", worker_command="sleep 300",
                log_dir=str(tmp_path / "other-logs"),
            )
        )
    )  # fmt: skip
    # min_workers=1 with a start time an hour away: the job can never start within the test.
    service, proxy = await _start(
        start_service, hypha_server, admin_client, tmp_path / "w2", tag, "slurm-b",
        "--slurm-min-workers", "1", "--slurm-pending-timeout", "6", "--slurm-backoff", "3",
        "--slurm-backoff-max", "5", "--slurm-extra-sbatch", "#SBATCH --begin=now+1hour",
    )  # fmt: skip

    await _wait(proxy, lambda s: s["ready"] and _slurm(s)["rounds"] > 0, 90, "ready")
    # (c) cancelled after the pending timeout, with SLURM's reason in the status.
    status = await _wait(
        proxy,
        lambda s: any(j["reason"] and j["reason"].startswith("pending_timeout") for j in _slurm(s)["jobs"]),
        60,
        "pending job given up",
    )
    given_up = next(j for j in _slurm(status)["jobs"] if (j["reason"] or "").startswith("pending_timeout"))
    assert "BeginTime" in given_up["reason"] and given_up["cancelled_by_us"], given_up
    assert any(d["action"] == "cancel" and "pending" in d["message"] for d in _slurm(status)["decisions"])
    assert other_job not in {j["job_id"] for j in _slurm(status)["jobs"]}

    # BeginTime may clear: min_workers asks again after the backoff, a fresh pending job ...
    status = await _wait(proxy, lambda s: _slurm(s)["live_jobs"] == 1, 40, "job resubmitted after backoff")
    own = await SlurmCommands(tag).list_jobs()
    assert own and all(j.state.value == "PENDING" for j in own)
    assert _slurm(status)["blocked"] is None
    # ... given up in turn: the wait doubles (3 s, then 6 s capped at --slurm-backoff-max 5), a
    # successful sbatch in between does not reset it.
    status = await _wait(proxy, lambda s: _slurm(s)["backoff"]["give_ups"] >= 2, 40, "second job given up")
    waits = [
        d["message"].rsplit("next try in ", 1)[1]
        for d in _slurm(status)["decisions"]
        if d["action"] == "backoff" and "next try in" in d["message"]
    ]
    assert waits[:2] == ["3 s", "5 s"], _slurm(status)["decisions"]
    assert _slurm(status)["backoff"]["max_s"] == 5

    # (d) SIGTERM: this worker's jobs are cancelled, the other worker's job is untouched.
    service.stop(timeout=60)
    await _queue_empty(SlurmCommands(tag))
    finished = await SlurmCommands(tag).list_jobs(include_finished=True)
    assert finished and all(j.state.value == "CANCELLED" for j in finished)
    survivors = await other_cmds.list_jobs()
    assert [j.job_id for j in survivors] == [other_job], survivors


async def test_a_job_the_partition_cannot_hold_blocks_submission_and_says_what_to_change(
    slurm, cleanup_tags, hypha_server, start_service, admin_client, tmp_path
):
    tags, dirs = cleanup_tags
    tag = _tag()
    tags.append(tag)
    dirs.append(tmp_path / "w6")
    # More CPUs per job than any node of the (default) partition has: SLURM accepts the job, which
    # then pends with reason PartitionConfig for ever.
    _, proxy = await _start(
        start_service, hypha_server, admin_client, tmp_path / "w6", tag, "slurm-f",
        "--slurm-min-workers", "1", "--slurm-worker-cpus", "64", "--slurm-pending-timeout", "3",
        "--slurm-backoff", "1", "--slurm-backoff-max", "2",
    )  # fmt: skip
    status = await _wait(proxy, lambda s: _slurm(s)["blocked"] is not None, 90, "submission blocked")
    block = _slurm(status)["blocked"]
    (job,) = _slurm(status)["jobs"]
    assert block["job_id"] == job["job_id"] and block["reason_code"] == "PartitionConfig", block
    assert "--slurm-worker-cpus" in block["change"] and "--slurm-partition" in block["change"]
    assert job["cancelled_by_us"] and job["reason"].startswith("unrunnable: pending for"), job
    assert "PartitionConfig, which will not clear" in job["reason"]
    # min_workers still wants a job; far past the backoff (2 s at most) nothing is resubmitted.
    await asyncio.sleep(8)
    status = await proxy.get_status()
    assert [j["job_id"] for j in _slurm(status)["jobs"]] == [job["job_id"]]
    assert _slurm(status)["live_jobs"] == 0
    blocked = [d for d in _slurm(status)["decisions"] if d["action"] == "blocked"]
    assert len(blocked) == 1, blocked  # said once, not every round
    assert "not submitting 1 job(s)" in blocked[0]["message"] and "restart" in blocked[0]["message"]
    assert [j.job_id for j in await SlurmCommands(tag).list_jobs()] == []
    # and no request "fits after a scale-up" while no job can be submitted
    assert (await proxy.check_resources(num_cpus=1))["verdict"] == "cannot_fit"


BUSY = """
import os
import time

def analyze(path):
    while True:
        with open(path, "a") as beat:
            beat.write(f"{os.environ.get('SLURM_JOB_ID')}\\n")
        time.sleep(0.5)
"""


async def test_a_run_code_whose_caller_disconnects_is_cancelled(
    slurm, cleanup_tags, hypha_server, start_service, admin_client, tmp_path
):
    tags, dirs = cleanup_tags
    tag = _tag()
    tags.append(tag)
    dirs.append(tmp_path / "w7")
    _, proxy = await _start(
        start_service, hypha_server, admin_client, tmp_path / "w7", tag, "slurm-g",
        "--slurm-idle-timeout", "5", "--slurm-max-workers", "1",
        "--run-code-caller-check", "1", "--run-code-caller-grace", "2",
    )  # fmt: skip
    await _wait(proxy, lambda s: s["ready"] and _slurm(s)["rounds"] > 0, 90, "ready")
    client_id = f"rc-caller-{uuid.uuid4().hex[:8]}"
    caller = await connect(
        hypha_server.url,
        workspace=hypha_server.workspace,
        token=hypha_server.mint(ADMIN_USER, "admin"),
        client_id=client_id,
        method_timeout=600,
    )
    service = await caller.get_service("slurm-g:bioengine-cluster")
    beats = tmp_path / "beats.txt"
    call = asyncio.ensure_future(
        service.run_code(code=BUSY, args=[str(beats)], remote_options={"num_cpus": 1}, timeout=600)
    )
    deadline = time.monotonic() + 120
    while not beats.exists():  # it runs, on a SLURM worker started for it
        assert time.monotonic() < deadline, _slurm(await proxy.get_status())
        await asyncio.sleep(0.5)
    running = (await proxy.get_status())["run_code"]["running"]
    assert [r["callers"] for r in running] == [[f"{hypha_server.workspace}/{client_id}"]]

    # The caller goes away mid-task (its call can never be answered now).
    await caller.disconnect()
    call.cancel()
    status = await _wait(proxy, lambda s: s["run_code"]["recent"], 30, "run_code cancelled")
    (run,) = status["run_code"]["recent"]
    assert run["state"] == "cancelled" and run["callers"][0] in run["reason"], run
    assert "disconnected" in run["reason"] and status["run_code"]["running"] == []
    # The task no longer runs: its heartbeat stops ...
    size = beats.stat().st_size
    await asyncio.sleep(3)
    assert beats.stat().st_size == size, "the task still runs after its caller left"
    # ... and with no demand left its worker idles out; no job was started for it after that.
    status = await _wait(proxy, lambda s: _slurm(s)["live_jobs"] == 0, 60, "worker released")
    assert len(_slurm(status)["jobs"]) == 1


# ---- without SLURM: the flags and the tag -------------------------------------------------------
def test_flags_map_onto_the_job_settings(tmp_path):
    from bioengine_cluster._settings import ClusterSettings
    from bioengine_cluster.slurm import SlurmAutoscaler
    from bioengine_common import ConfigurationError

    settings = ClusterSettings(
        mode="slurm",
        workspace_dir=tmp_path / "ws",
        slurm_worker_cpus=4,
        slurm_worker_memory_gb=8,
        slurm_worker_gpus=1,
        slurm_partition="gpu",
        slurm_extra_sbatch=["--qos=short"],
        slurm_prologue="module load cuda",
        slurm_image="/images/ray.sif",
        slurm_binds=["/data:/data"],
        slurm_max_workers=3,
    )
    token_file = (tmp_path / "ws" / "ray" / "auth_token").resolve()
    scaler = SlurmAutoscaler(settings, logging.getLogger("test"), token_file)
    script = scaler.render("10.1.2.3:6379")
    assert "#SBATCH --cpus-per-task=4" in script and "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --qos=short" in script
    assert "module load cuda" in script and "export RAY_ENABLE_UV_RUN_RUNTIME_ENV=0" in script
    assert (
        f"exec apptainer exec --nv --bind /data:/data --bind {token_file}:{token_file}:ro "
        "/images/ray.sif ray start --address=10.1.2.3:6379" in script
    )
    # the head's token file, by path only
    assert f"export RAY_AUTH_TOKEN_PATH={token_file}" in script and "export RAY_AUTH_MODE=token" in script
    assert f"--chdir={tmp_path / 'ws' / 'slurm'}" in script
    assert scaler.scale_up_node() == {"CPU": 4.0, "GPU": 1.0, "memory": float(int(8 * 1024**3 * 0.6))}

    # the tag: stable for a workspace dir, different for another, or as given
    again = SlurmAutoscaler(ClusterSettings(mode="slurm", workspace_dir=tmp_path / "ws"), logging.getLogger())
    other = SlurmAutoscaler(ClusterSettings(mode="slurm", workspace_dir=tmp_path / "x"), logging.getLogger())
    assert scaler.tag == again.tag != other.tag
    assert ClusterSettings(mode="slurm", slurm_tag="mine").resolved_slurm_tag() == "mine"
    with pytest.raises(ConfigurationError, match="time_limit"):
        SlurmAutoscaler(ClusterSettings(mode="slurm", slurm_time_limit="soon"), logging.getLogger())


SLOW = """
import os
import time

def analyze():
    for i in range(20):
        print(f"tick {i} on job {os.environ.get('SLURM_JOB_ID')}", flush=True)
        time.sleep(1)
    return os.environ.get("SLURM_JOB_ID")
"""


async def test_a_worker_lost_while_demand_lasts_is_replaced(
    slurm, cleanup_tags, hypha_server, start_service, admin_client, tmp_path
):
    tags, dirs = cleanup_tags
    tag = _tag()
    tags.append(tag)
    dirs.append(tmp_path / "w3")
    _, proxy = await _start(
        start_service, hypha_server, admin_client, tmp_path / "w3", tag, "slurm-c",
        "--slurm-idle-timeout", "30", "--slurm-max-workers", "1",
    )  # fmt: skip
    await _wait(proxy, lambda s: s["ready"] and _slurm(s)["rounds"] > 0, 90, "ready")
    # Demand that outlives the first worker: a 20 s task, retried by Ray when its node is lost.
    out: list[str] = []
    err: list[str] = []
    call = asyncio.ensure_future(
        proxy.run_code(
            code=SLOW, remote_options={"num_cpus": 1, "max_retries": 2}, timeout=240,
            write_stdout=out.append, write_stderr=err.append,
        )
    )  # fmt: skip
    status = await _wait(
        proxy,
        lambda s: any(j["state"] == "RUNNING" and j["ray_node_id"] for j in _slurm(s)["jobs"]),
        120,
        "first worker joined",
    )
    first = next(j["job_id"] for j in _slurm(status)["jobs"] if j["state"] == "RUNNING")
    first_node = next(j["ray_node_id"] for j in _slurm(status)["jobs"] if j["job_id"] == first)
    deadline = time.monotonic() + 60
    while not out:  # the task is running on it
        assert time.monotonic() < deadline and not call.done(), (out, call)
        await asyncio.sleep(0.2)
    # Lost, as to walltime or a node failure: scancel from outside the service.
    await asyncio.to_thread(subprocess.run, ["scancel", first], check=True)
    result = await asyncio.wait_for(call, 240)
    assert "error" not in result, result
    replacement = result["result"]
    assert replacement and replacement != first, (first, result)

    # (c) Ray retried the task: the output and the result say so (Ray's attempt numbers).
    assert result["attempts"] == 2 and result["slurm_job_id"] == replacement, result
    (retry,) = result["retries"]
    assert (retry["attempt"], retry["slurm_job_id"], retry["node_id"]) == (1, first, first_node), retry
    assert retry["lines_streamed"] >= 1 and "attempt 2 runs after attempt 1" in result["retried"]
    notices = [line for line in err if line.startswith("[bioengine] run_code: Ray retried the task")]
    assert len(notices) == 1 and f"SLURM job {first}" in notices[0], err
    assert result["stderr"].startswith(notices[0])
    # the streamed lines: attempt 1's, then attempt 2's from where Ray resumed the stream
    assert out[0] == f"tick 0 on job {first}" and out[-1] == f"tick 19 on job {replacement}", out
    assert result["stdout"].splitlines() == [f"tick {i} on job {replacement}" for i in range(20)]

    # (b) the lost worker: its final state, who cancelled it, and a decision saying so.
    status = await proxy.get_status()
    jobs = {j["job_id"]: j for j in _slurm(status)["jobs"]}
    assert replacement in jobs and not jobs[first]["cancelled_by_us"], jobs
    lost = jobs[first]
    assert lost["lost"] and lost["final_state"] == "CANCELLED" and lost["ray_node_id"] == first_node, lost
    assert (
        lost["reason"].startswith(f"lost: job {first}") and "cancelled outside this service" in lost["reason"]
    )
    who = lost["cancelled_by"]
    if who["source"] == "the slurmctld log":  # readable here (CI, this machine): by us, root
        assert who["uid"] == os.getuid() and f"by uid {os.getuid()}" in lost["reason"], who
    else:  # a login node without accounting nor the controller's log: unknown, and why
        assert who["uid"] is None and who["note"], who
    decisions = [d for d in _slurm(status)["decisions"] if d["action"] == "lost"]
    assert any(d["message"].startswith(f"worker lost: job {first}") for d in decisions), decisions
    assert next(d for d in decisions if d["inputs"].get("job_id") == first)["inputs"]["state"] == "CANCELLED"
    recent = status["run_code"]["recent"][0]
    assert recent["state"] == "done" and recent["attempts"] == 2
    assert [w["slurm_job_id"] for w in recent["where"]] == [first, replacement]


async def test_two_workers_in_one_slurm_account_keep_to_their_own_jobs(
    slurm, cleanup_tags, hypha_server, start_service, admin_client, tmp_path
):
    tags, dirs = cleanup_tags
    first_tag, second_tag = _tag(), _tag()
    tags += [first_tag, second_tag]
    dirs += [tmp_path / "w4", tmp_path / "w5"]
    common = ("--slurm-min-workers", "1", "--slurm-idle-timeout", "5")
    first, first_proxy = await _start(
        start_service, hypha_server, admin_client, tmp_path / "w4", first_tag, "slurm-d", *common
    )
    _, second_proxy = await _start(
        start_service, hypha_server, admin_client, tmp_path / "w5", second_tag, "slurm-e", *common
    )

    def one_running(status: dict) -> bool:
        return [j["state"] for j in _slurm(status)["jobs"] if j["state"] != "CANCELLED"] == ["RUNNING"]

    a = await _wait(first_proxy, one_running, 120, "first worker's min_workers job running")
    b = await _wait(second_proxy, one_running, 120, "second worker's min_workers job running")
    (a_job,) = {j["job_id"] for j in _slurm(a)["jobs"]}
    (b_job,) = {j["job_id"] for j in _slurm(b)["jobs"]}
    assert a_job != b_job
    # Each sees only its own job, even with the other's idle past the idle timeout.
    await asyncio.sleep(8)
    a = await first_proxy.get_status()
    assert {j["job_id"] for j in _slurm(a)["jobs"]} == {a_job}
    first.stop(timeout=90)  # shutdown: cancels the first worker's job only
    await _queue_empty(SlurmCommands(first_tag))
    assert [j.job_id for j in await SlurmCommands(second_tag).list_jobs()] == [b_job]
    b = await second_proxy.get_status()
    assert [j["state"] for j in _slurm(b)["jobs"] if j["job_id"] == b_job] == ["RUNNING"]


def test_jobs_gone_from_squeue_take_their_final_state_from_sacct(tmp_path):
    from bioengine_cluster._settings import ClusterSettings
    from bioengine_cluster.slurm import JobState, SlurmAutoscaler, SlurmJob

    scaler = SlurmAutoscaler(
        ClusterSettings(mode="slurm", workspace_dir=tmp_path, slurm_tag="tagx"), logging.getLogger("t")
    )
    name = scaler.commands.job_name
    running = [SlurmJob(job_id=str(i), name=name, state=JobState.RUNNING) for i in (1, 2, 3)]
    scaler._remember(running)
    assert scaler.vanished(running) == []
    # squeue now lists only job 3; sacct knows job 1 timed out and says nothing of job 2.
    still = running[2:]
    assert sorted(scaler.vanished(still)) == ["1", "2"]
    scaler._remember(still, {"1": SlurmJob(job_id="1", name=name, state=JobState.TIMEOUT)})
    assert scaler.jobs["1"].state == JobState.TIMEOUT
    assert scaler.jobs["2"].state == JobState.UNKNOWN and scaler.jobs["2"].raw_state == "GONE"
    assert scaler.jobs["3"].state == JobState.RUNNING and scaler.vanished(still) == []


def test_only_jobs_seen_active_can_be_lost(tmp_path):
    from bioengine_cluster._settings import ClusterSettings
    from bioengine_cluster.slurm import JobState, SlurmAutoscaler, SlurmJob

    scaler = SlurmAutoscaler(
        ClusterSettings(mode="slurm", workspace_dir=tmp_path, slurm_tag="tagy"), logging.getLogger("t")
    )
    name = scaler.commands.job_name
    # first listing after a (re)start: job 1 runs, job 2 was already cancelled (by the service
    # before it restarted, or by anyone: its end is not news to report)
    first = [
        SlurmJob(job_id="1", name=name, state=JobState.RUNNING),
        SlurmJob(job_id="2", name=name, state=JobState.CANCELLED),
    ]
    scaler._remember(first)
    assert scaler.not_lost(first) == ["2"]
    # next: job 1 was scancelled by someone, job 3 this service cancelled itself
    scaler.cancel_reasons["3"] = "idle: ..."
    later = [
        SlurmJob(job_id="1", name=name, state=JobState.CANCELLED),
        SlurmJob(job_id="2", name=name, state=JobState.CANCELLED),
        SlurmJob(job_id="3", name=name, state=JobState.CANCELLED),
    ]
    scaler._remember(later)
    assert sorted(scaler.not_lost(later)) == ["2", "3"]
