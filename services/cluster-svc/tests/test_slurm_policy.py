"""SLURM worker jobs without SLURM: the scaling policy, the job script and the output parsers.

The squeue/sacct samples were captured from the real single-node SLURM 22.05.8 that
``infra/slurm/setup-slurm.sh`` starts (Debian bookworm).
"""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import datetime

import pytest

from bioengine_cluster.slurm import (
    SQUEUE_FORMAT,
    BackoffState,
    JobSpec,
    JobState,
    PendingDemand,
    RayWorkerNode,
    ScalingInputs,
    SlurmJob,
    SlurmSettings,
    fits_after_scale_up,
    job_comment,
    job_name,
    normalize_state,
    parse_sacct,
    parse_squeue,
    plan_scaling,
    render_job_script,
    worker_resources,
)

GIB = 1024**3
NOW = 1_800_000_000.0
TAG = "w1"


def settings(**overrides) -> SlurmSettings:
    values = dict(tag=TAG, cpus=2, memory_gb=4, max_workers=3, head_address="10.0.0.1:6379")
    values.update(overrides)
    return SlurmSettings(**values)


def job(job_id, state="RUNNING", submitted=-100.0, started=-90.0, reason=None, tag=TAG, **kw) -> SlurmJob:
    state = JobState(state)
    return SlurmJob(
        job_id=str(job_id),
        name=job_name(tag),
        comment=job_comment(tag),
        state=state,
        reason=reason,
        submitted_at=None if submitted is None else NOW + submitted,
        started_at=None if (started is None or state == JobState.PENDING) else NOW + started,
        **kw,
    )


def node(job_id=None, cpu=2.0, free_cpu=None, gpu=0.0, idle=0.0, mem=2.4 * GIB, zero_cpu_actors=False):
    total = {"CPU": cpu, "memory": mem}
    if gpu:
        total["GPU"] = gpu
    available = dict(total)
    if free_cpu is not None:
        available["CPU"] = free_cpu
    return RayWorkerNode(
        node_id=f"node-{job_id or 'head'}",
        slurm_job_id=None if job_id is None else str(job_id),
        total=total,
        available=available,
        idle_s=idle,
        only_zero_cpu_actors=zero_cpu_actors,
    )


HEAD = node(None, cpu=0.0)


def demand(count=1, source="task_actor", **resources) -> PendingDemand:
    return PendingDemand(resources=resources, count=count, source=source)


def plan(jobs=(), nodes=(HEAD,), wanted=(), backoff=None, now=NOW, **overrides):
    observed = ScalingInputs(
        jobs=list(jobs), ray_nodes=list(nodes), demand=list(wanted), backoff=backoff or BackoffState()
    )
    return plan_scaling(observed, settings(**overrides), now)


def actions(result) -> list[str]:
    return [d.action for d in result.decisions]


# ---------------------------------------------------------------------------------------------
# plan_scaling
# ---------------------------------------------------------------------------------------------
def test_no_demand_no_jobs_does_nothing():
    result = plan()
    assert result.submit == [] and result.cancel == [] and result.decisions == []


def test_cpu_demand_submits_one_job_of_the_configured_size():
    result = plan(wanted=[demand(CPU=1)])
    assert len(result.submit) == 1
    assert result.submit[0] == JobSpec(cpus=2, memory_gb=4, gpus=0, time_limit="04:00:00")
    submit = next(d for d in result.decisions if d.action == "submit")
    assert submit.inputs["pending_bundles"] == 1 and submit.inputs["live_jobs"] == 0
    assert submit.at == NOW


def test_pending_job_counts_against_demand():
    result = plan(jobs=[job(11, "PENDING", reason="Resources")], wanted=[demand(CPU=2)])
    assert result.submit == [] and result.cancel == []


def test_pending_job_covers_only_what_it_holds():
    result = plan(jobs=[job(11, "PENDING")], wanted=[demand(count=3, CPU=2)])
    assert len(result.submit) == 2


def test_bundles_are_packed_into_jobs():
    # 2-CPU jobs: 4 x 1 CPU -> 2 jobs; 1.5 + 0.5 + 1 + 1 -> 2 jobs
    assert len(plan(wanted=[demand(count=4, CPU=1)]).submit) == 2
    mixed = [demand(CPU=1.5), demand(CPU=0.5), demand(count=2, CPU=1)]
    assert len(plan(wanted=mixed).submit) == 2


def test_memory_demand_is_packed_too():
    # a 4 GB job offers 60% = 2.4 GiB of Ray memory: three 1 GiB bundles need two jobs
    assert len(plan(wanted=[demand(count=3, CPU=0.1, memory=1 * GIB)]).submit) == 2


def test_demand_beyond_max_workers_is_capped():
    result = plan(wanted=[demand(count=10, CPU=2)], max_workers=3)
    assert len(result.submit) == 3
    limit = next(d for d in result.decisions if d.action == "limit")
    assert "max_workers=3" in limit.message and limit.inputs["wanted"] == 10


def test_max_workers_counts_pending_and_running_jobs():
    jobs = [job(1), job(2), job(3, "PENDING")]
    nodes = [HEAD, node(1, free_cpu=0), node(2, free_cpu=0)]
    result = plan(jobs=jobs, nodes=nodes, wanted=[demand(count=5, CPU=2)], max_workers=3)
    assert result.submit == []
    assert "limit" in actions(result)


def test_finished_jobs_do_not_count_against_max_workers():
    jobs = [job(1, "COMPLETED"), job(2, "CANCELLED"), job(3, "FAILED")]
    result = plan(jobs=jobs, wanted=[demand(count=5, CPU=2)], max_workers=2)
    assert len(result.submit) == 2


def test_min_workers_are_started_without_demand():
    result = plan(min_workers=2)
    assert len(result.submit) == 2
    assert "min_workers" in next(d for d in result.decisions if d.action == "submit").message


def test_min_workers_already_pending_submits_nothing():
    result = plan(jobs=[job(1, "PENDING"), job(2)], nodes=[HEAD, node(2)], min_workers=2)
    assert result.submit == []


def test_idle_worker_past_timeout_is_cancelled():
    result = plan(jobs=[job(5)], nodes=[HEAD, node(5, idle=400)], idle_timeout_s=300)
    assert [(c.job_id, c.kind) for c in result.cancel] == [("5", "idle")]
    assert "idle for 400 s" in result.cancel[0].reason
    assert result.failures == 0


def test_idle_worker_below_timeout_is_kept():
    result = plan(jobs=[job(5)], nodes=[HEAD, node(5, idle=200)], idle_timeout_s=300)
    assert result.cancel == []


def test_idle_worker_kept_for_min_workers():
    jobs = [job(5), job(6)]
    nodes = [HEAD, node(5, idle=900), node(6, idle=400)]
    result = plan(jobs=jobs, nodes=nodes, idle_timeout_s=300, min_workers=1)
    # the longest idle goes first; the other stays for min_workers
    assert [c.job_id for c in result.cancel] == ["5"]
    keep = next(d for d in result.decisions if d.action == "keep")
    assert "min_workers=1" in keep.message and keep.inputs["job_id"] == "6"
    assert result.submit == []


def test_idle_node_with_only_zero_cpu_actors_is_cancelled_with_reason():
    result = plan(jobs=[job(5)], nodes=[HEAD, node(5, idle=400, zero_cpu_actors=True)], idle_timeout_s=300)
    assert "only 0-CPU actors" in result.cancel[0].reason


def test_idle_worker_that_can_take_pending_demand_is_kept():
    # Ray's demand may lag: a bundle that fits the idle node's free resources keeps it
    result = plan(jobs=[job(5)], nodes=[HEAD, node(5, idle=400)], wanted=[demand(CPU=1)], idle_timeout_s=300)
    assert result.cancel == [] and result.submit == []
    assert "keep" in actions(result)


def test_pending_past_timeout_is_cancelled_and_counts_as_failure():
    jobs = [job(7, "PENDING", submitted=-700, reason="Resources")]
    result = plan(jobs=jobs, wanted=[demand(CPU=2)], pending_timeout_s=600)
    assert [(c.job_id, c.kind) for c in result.cancel] == [("7", "pending_timeout")]
    assert "Resources" in result.cancel[0].reason and "700 s" in result.cancel[0].reason
    assert "may clear" in result.cancel[0].reason
    assert result.failures == 1 and result.backoff.give_ups == 1 and result.backoff.blocked is None
    # no resubmission in the same round: the caller records the failure, the backoff paces retries
    assert result.submit == [] and "backoff" in actions(result)


def test_pending_within_timeout_is_kept():
    result = plan(jobs=[job(7, "PENDING", submitted=-500)], wanted=[demand(CPU=2)], pending_timeout_s=600)
    assert result.cancel == [] and result.submit == []


def test_pending_timeout_ignores_min_workers():
    jobs = [job(7, "PENDING", submitted=-700)]
    result = plan(jobs=jobs, pending_timeout_s=600, min_workers=1)
    assert [c.kind for c in result.cancel] == ["pending_timeout"]


def test_running_job_whose_ray_node_never_joined_is_cancelled():
    result = plan(jobs=[job(8, started=-400)], wanted=[demand(CPU=2)], join_timeout_s=300)
    assert [(c.job_id, c.kind) for c in result.cancel] == [("8", "join_timeout")]
    assert result.failures == 1


def test_running_job_still_joining_counts_as_capacity():
    result = plan(jobs=[job(8, started=-20)], wanted=[demand(CPU=2)], join_timeout_s=300)
    assert result.cancel == [] and result.submit == []


@pytest.mark.parametrize(
    ("failures", "ago", "submits"),
    [
        (1, 5, False),  # first failure: 10 s
        (1, 11, True),
        (3, 39, False),  # third: 40 s
        (3, 41, True),
        (10, 299, False),  # capped at 300 s
        (10, 301, True),
    ],
)
def test_sbatch_failures_back_off_exponentially(failures, ago, submits):
    backoff = BackoffState(
        consecutive_failures=failures, last_failure_at=NOW - ago, last_error="sbatch: error: x"
    )
    result = plan(wanted=[demand(CPU=1)], backoff=backoff)
    assert bool(result.submit) is submits
    if not submits:
        wait = next(d for d in result.decisions if d.action == "backoff")
        assert "sbatch: error: x" in wait.message and wait.inputs["retry_at"] > NOW


def test_backoff_state_transitions():
    conf = settings()
    state = BackoffState()
    assert state.retry_at(conf) is None and state.delay_s(conf) == 0
    state = state.failed(NOW, "boom").failed(NOW + 1, "boom again")
    assert state.consecutive_failures == 2 and state.delay_s(conf) == 20
    assert state.retry_at(conf) == NOW + 21 and state.last_error == "boom again"
    assert state.succeeded() == BackoffState()


def test_backoff_does_not_block_idle_cancellation():
    backoff = BackoffState(consecutive_failures=2, last_failure_at=NOW)
    result = plan(jobs=[job(5)], nodes=[HEAD, node(5, idle=400)], backoff=backoff, idle_timeout_s=300)
    assert [c.kind for c in result.cancel] == ["idle"]


def test_infeasible_bundle_is_reported_not_submitted():
    result = plan(wanted=[demand(count=2, CPU=64)])
    assert result.submit == []
    assert result.infeasible[0].resources == {"CPU": 64} and result.infeasible[0].count == 2
    message = next(d for d in result.decisions if d.action == "infeasible").message
    assert "a worker job has 2 CPUs, 64 CPUs needed" in message


def test_gpu_demand_against_cpu_only_spec_is_infeasible():
    result = plan(wanted=[demand(CPU=1, GPU=1)])
    assert result.submit == [] and result.infeasible[0].resources == {"CPU": 1, "GPU": 1}
    assert "a worker job has 0 GPUs, 1 GPUs needed" in result.decisions[0].message


def test_gpu_demand_with_gpu_spec_submits():
    result = plan(wanted=[demand(count=2, CPU=1, GPU=1)], gpus=1)
    assert len(result.submit) == 2 and result.submit[0].gpus == 1 and result.infeasible == []


def test_feasible_and_infeasible_bundles_mix():
    result = plan(wanted=[demand(CPU=1), demand(CPU=1, resources_x=0), demand(custom_thing=1)])
    assert len(result.submit) == 1
    assert [e.resources for e in result.infeasible] == [{"custom_thing": 1}]


def test_bundle_larger_than_a_job_but_fitting_the_head_waits():
    head = node(None, cpu=8, free_cpu=0)
    result = plan(nodes=[head], wanted=[demand(CPU=4)])
    assert result.submit == [] and result.infeasible == []
    assert "wait" in actions(result)


def test_lost_job_is_replaced_while_demand_lasts():
    jobs = [job(9, "TIMEOUT"), job(10, "NODE_FAIL")]
    result = plan(jobs=jobs, wanted=[demand(CPU=2)])
    assert len(result.submit) == 1
    assert result.lost == ["9", "10"]
    lost = next(d for d in result.decisions if d.action == "lost")
    assert "9 (TIMEOUT)" in lost.message and "10 (NODE_FAIL)" in lost.message


def test_lost_job_without_demand_is_not_replaced():
    result = plan(jobs=[job(9, "TIMEOUT")])
    assert result.submit == [] and result.lost == ["9"]


def test_request_resources_is_packed_against_totals():
    # constraint: 2 x 2 CPUs; one worker exists (busy): its total counts, so one more job
    jobs, nodes = [job(1)], [HEAD, node(1, free_cpu=0)]
    wanted = [demand(count=2, source="request_resources", CPU=2)]
    assert len(plan(jobs=jobs, nodes=nodes, wanted=wanted).submit) == 1
    assert len(plan(wanted=wanted).submit) == 2


def test_request_resources_and_pending_demand_share_new_jobs():
    # the fit check asked for 2 CPUs and the replica that needs them is pending: one job, not two
    wanted = [demand(source="request_resources", CPU=2), demand(source="task_actor", CPU=2)]
    assert len(plan(wanted=wanted).submit) == 1


def test_request_resources_keeps_an_idle_worker():
    wanted = [demand(source="request_resources", CPU=2)]
    result = plan(jobs=[job(5)], nodes=[HEAD, node(5, idle=900)], wanted=wanted, idle_timeout_s=300)
    assert result.cancel == [] and result.submit == []


def test_jobs_of_other_tags_are_ignored():
    other = job(3, "PENDING", submitted=-10_000, tag="someone-else")
    result = plan(jobs=[other], wanted=[demand(CPU=2)], pending_timeout_s=60)
    assert result.cancel == []
    assert len(result.submit) == 1  # the foreign job is no capacity of ours
    assert any("not tagged" in d.message for d in result.decisions)


def test_idle_cancellation_frees_a_slot_under_max_workers():
    # one idle CPU worker at max_workers=1 while a bundle waits that it cannot take (memory)
    jobs, nodes = [job(5)], [HEAD, node(5, idle=400, mem=0.5 * GIB)]
    result = plan(jobs=jobs, nodes=nodes, wanted=[demand(CPU=1, memory=2 * GIB)], max_workers=1)
    assert [c.kind for c in result.cancel] == ["idle"]
    assert len(result.submit) == 1


def test_completing_job_counts_against_max_but_is_no_capacity():
    result = plan(jobs=[job(5, "COMPLETING")], wanted=[demand(CPU=2)], max_workers=2)
    assert len(result.submit) == 1
    assert plan(jobs=[job(5, "COMPLETING")], wanted=[demand(CPU=2)], max_workers=1).submit == []


def test_completing_worker_is_not_cancelled_again():
    result = plan(jobs=[job(5, "COMPLETING")], nodes=[HEAD, node(5, idle=900)], idle_timeout_s=300)
    assert result.cancel == []


def test_plan_is_pure():
    observed = ScalingInputs(jobs=[job(1, "PENDING")], ray_nodes=[HEAD], demand=[demand(count=3, CPU=2)])
    before = observed.model_dump()
    first = plan_scaling(observed, settings(), NOW)
    second = plan_scaling(observed, settings(), NOW)
    assert first == second and observed.model_dump() == before


# ---------------------------------------------------------------------------------------------
# fits_after_scale_up
# ---------------------------------------------------------------------------------------------
def test_fits_after_scale_up():
    spec = settings(cpus=4, memory_gb=10, gpus=1)
    assert fits_after_scale_up({"CPU": 4, "GPU": 1, "memory": 5 * GIB}, spec)
    assert not fits_after_scale_up({"CPU": 5}, spec)
    assert not fits_after_scale_up({"memory": 7 * GIB}, spec)  # 60% of 10 GB is Ray's
    assert not fits_after_scale_up({"CPU": 1, "special": 1}, spec)
    assert fits_after_scale_up({"CPU": 1, "GPU": 0}, settings(gpus=0))
    assert not fits_after_scale_up({"CPU": 1}, settings(max_workers=0))
    assert fits_after_scale_up({"CPU": 2}, JobSpec(cpus=2))
    with pytest.raises(ValueError, match="CPU"):
        fits_after_scale_up({"CPU": -1}, spec)


def test_worker_resources_feed_the_fit_check():
    assert worker_resources(settings(cpus=3, memory_gb=10, gpus=2)) == {
        "CPU": 3.0,
        "memory": float(int(10 * GIB * 0.6)),
        "GPU": 2.0,
    }


# ---------------------------------------------------------------------------------------------
# render_job_script
# ---------------------------------------------------------------------------------------------
def sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def test_plain_script():
    script = render_job_script(settings(), "10.1.2.3:6379")
    assert script.startswith("#!/bin/bash\n")
    assert sbatch_lines(script) == [
        "#SBATCH --job-name=bioengine-w1-worker",
        "#SBATCH --comment=bioengine:w1",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=4096M",
        "#SBATCH --time=04:00:00",
        "#SBATCH --output=%x-%j.out",
    ]
    last = script.rstrip().splitlines()[-1]
    assert last.startswith("exec ray start --address=10.1.2.3:6379 --block --num-cpus=2 --num-gpus=0 ")
    assert '--resources="{\\"slurm_job_id:${SLURM_JOB_ID}\\": 1}"' in last
    assert 'export RAY_CLOUD_INSTANCE_ID="${SLURM_JOB_ID}"' in script
    assert "apptainer" not in script and "--gres" not in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_all_sbatch_options_and_gpu_template():
    conf = settings(
        gpus=2,
        gpu_flag_template="--gpus-per-node=a100:{gpus}",
        partition="gpu",
        account="proj_42",
        time_limit="1-00:00:00",
        work_dir="/shared/bioengine",
        log_dir="/shared/bioengine/slurm-logs/",
        extra_sbatch_lines=["--qos=short", "#SBATCH   --constraint=hopper", "  --exclusive  "],
    )
    lines = sbatch_lines(render_job_script(conf))
    assert "#SBATCH --gpus-per-node=a100:2" in lines
    assert lines[-8:] == [
        "#SBATCH --time=1-00:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj_42",
        "#SBATCH --chdir=/shared/bioengine",
        "#SBATCH --output=/shared/bioengine/slurm-logs/%x-%j.out",
        "#SBATCH --qos=short",
        "#SBATCH --constraint=hopper",
        "#SBATCH --exclusive",
    ]


def test_apptainer_wraps_ray_and_quotes_values():
    conf = settings(
        gpus=1,
        apptainer_image="/images/ray worker.sif",
        apptainer_binds=["/data:/data:ro", "/scratch/$USER"],
        apptainer_args=["--cleanenv"],
        ray_temp_dir="/tmp/ray w",
    )
    last = render_job_script(conf).rstrip().splitlines()[-1]
    assert last.startswith(
        "exec apptainer exec --nv --bind /data:/data:ro --bind '/scratch/$USER' --cleanenv "
        "'/images/ray worker.sif' ray start --address=10.0.0.1:6379 --block --num-cpus=2 --num-gpus=1 "
    )
    assert last.endswith("--temp-dir='/tmp/ray w'")


def test_no_nv_without_gpus_and_singularity():
    conf = settings(apptainer_image="docker://rayproject/ray:2.60.0", apptainer_executable="singularity")
    last = render_job_script(conf).rstrip().splitlines()[-1]
    assert last.startswith("exec singularity exec docker://rayproject/ray:2.60.0 ray start ")


def test_prologue_with_quotes_is_kept_verbatim():
    prologue = 'module load cuda/12\nexport GREETING="it\'s \\"quoted\\""\necho \'single $HOME\''
    script = render_job_script(settings(prologue=prologue))
    assert prologue in script
    # after the #SBATCH block, before ray
    assert script.index(prologue) > script.index("#SBATCH --output")
    assert script.index(prologue) < script.index("exec ray start")
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_script_runs_and_advertises_the_job_id(tmp_path):
    fake_ray = tmp_path / "fake ray"
    fake_ray.write_text('#!/bin/bash\nprintf "%s\\n" "$RAY_CLOUD_INSTANCE_ID" "$@"\n')
    fake_ray.chmod(fake_ray.stat().st_mode | stat.S_IXUSR)
    conf = settings(ray_executable=str(fake_ray), prologue='echo "prologue ran: it\'s fine"')
    script = tmp_path / "job.sh"
    script.write_text(render_job_script(conf))
    env = dict(os.environ, SLURM_JOB_ID="4242")
    out = subprocess.run(["bash", str(script)], env=env, text=True, capture_output=True, check=True).stdout
    lines = out.splitlines()
    assert "prologue ran: it's fine" in lines
    start = lines.index("4242")  # RAY_CLOUD_INSTANCE_ID
    args = lines[start + 1 :]
    assert args[:3] == ["start", "--address=10.0.0.1:6379", "--block"]
    assert '--resources={"slurm_job_id:4242": 1}' in args
    assert "--labels=bioengine-tag=w1,bioengine-slurm-job-id=4242" in args
    # outside SLURM the script refuses to start
    env.pop("SLURM_JOB_ID")
    failed = subprocess.run(["bash", str(script)], env=env, text=True, capture_output=True)
    assert failed.returncode == 1 and "SLURM_JOB_ID is unset" in failed.stderr


def test_worker_command_replaces_ray():
    script = render_job_script(settings(head_address=None, worker_command="sleep 30"))
    assert script.rstrip().endswith("exec bash -c 'sleep 30'") and "ray start" not in script
    wrapped = render_job_script(settings(worker_command="echo 'hi there'", apptainer_image="img.sif"))
    assert wrapped.rstrip().endswith("exec apptainer exec img.sif bash -c 'echo '\"'\"'hi there'\"'\"''")


def test_job_size_override():
    script = render_job_script(settings(), job=JobSpec(cpus=8, memory_gb=16, gpus=0, time_limit="30"))
    assert "#SBATCH --cpus-per-task=8" in script and "#SBATCH --mem=16384M" in script
    assert "#SBATCH --time=30" in script and "--num-cpus=8" in script


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"extra_sbatch_lines": ["--qos=short\nrm -rf /"]}, "extra_sbatch_lines[0]"),
        ({"extra_sbatch_lines": ["--ok", "echo hi"]}, "extra_sbatch_lines[1]"),
        ({"extra_sbatch_lines": ["#SBATCHX --a"]}, "extra_sbatch_lines[0]"),
        ({"cpus": -1}, "cpus"),
        ({"cpus": 0}, "cpus"),
        ({"gpus": -2}, "gpus"),
        ({"memory_gb": -4}, "memory_gb"),
        ({"max_workers": -1}, "max_workers"),
        ({"min_workers": 5, "max_workers": 2}, "min_workers"),
        ({"idle_timeout_s": 0}, "idle_timeout_s"),
        ({"tag": "bad tag"}, "tag"),
        ({"tag": "-x"}, "tag"),
        ({"time_limit": "4 hours"}, "time_limit"),
        ({"gpu_flag_template": "--gres=gpu:{count}"}, "gpu_flag_template"),
        ({"gpu_flag_template": "gres=gpu:{gpus}"}, "gpu_flag_template"),
        ({"partition": "debug; rm -rf /"}, "partition"),
        ({"account": "a b"}, "account"),
        ({"apptainer_binds": ["/a\n/b"]}, "apptainer_binds[0]"),
        ({"head_address": "h:1\nrm"}, "head_address"),
        ({"backoff_initial_s": 60, "backoff_max_s": 30}, "backoff_max_s"),
    ],
)
def test_bad_settings_are_rejected_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        settings(**overrides)


def test_render_rejects_missing_head_and_paths_with_spaces():
    with pytest.raises(ValueError, match="head_address"):
        render_job_script(settings(head_address=None))
    with pytest.raises(ValueError, match="log_dir"):
        render_job_script(settings(log_dir="/shared/my logs"))
    with pytest.raises(ValueError, match="work_dir"):
        render_job_script(settings(work_dir="/a b"))


def test_assignment_is_validated():
    conf = settings()
    with pytest.raises(ValueError, match="cpus"):
        conf.cpus = -3


# ---------------------------------------------------------------------------------------------
# parse_squeue / parse_sacct (samples captured from the real SLURM of infra/slurm/setup-slurm.sh)
# ---------------------------------------------------------------------------------------------
SQUEUE_SAMPLE = """\
3|bioengine-tagA-worker|CANCELLED|None|vm|2026-11-28T02:56:39|2026-11-28T02:56:39|2026-11-28T02:56:41|UNLIMITED|1|1G|N/A|bioengine:tagA
1|bioengine-abc123-worker|COMPLETED|None|vm|2026-11-28T02:56:06|2026-11-28T02:56:07|2026-11-28T02:56:09|UNLIMITED|1|0|N/A|bioengine:abc123
4|bioengine-tagA-worker|COMPLETED|None|vm|2026-11-28T02:56:39|2026-11-28T02:56:41|2026-11-28T02:57:41|UNLIMITED|1|1G|N/A|bioengine:tagA
7|bioengine-tagA-worker|FAILED|NonZeroExitCode|vm|2026-11-28T02:56:39|2026-11-28T02:57:41|2026-11-28T02:57:41|UNLIMITED|1|1G|N/A|bioengine:tagA
9|wrap|FAILED|BadConstraints||2026-11-28T02:56:42|2026-11-28T02:56:42|2026-11-28T02:56:42|UNLIMITED|1|100000000|N/A|(null)
6|bioengine-tagB-worker|PENDING|BeginTime||2026-11-28T02:56:39|2026-11-28T03:56:39|NONE|UNLIMITED|1|1G|N/A|bioengine:tagB
8|wrap|PENDING|PartitionConfig||2026-11-28T02:56:42|N/A|N/A|UNLIMITED|64|1G|N/A|(null)
5|bioengine-tagA-worker|PENDING|JobHeldUser||2026-11-28T02:56:39|N/A|N/A|UNLIMITED|1|1G|N/A|bioengine:tagA
10|bioengine-tagA-worker|RUNNING|None|vm|2026-11-28T02:58:38|2026-11-28T02:58:39|2026-11-28T06:58:39|4:00:00|2|1.50G|N/A|bioengine:tagA
2|bioengine-tagA-worker|TIMEOUT|TimeLimit|vm|2026-11-28T02:56:39|2026-11-28T02:56:39|2026-11-28T02:57:53|1:00|1|100M|N/A|bioengine:tagA
"""

SACCT_SAMPLE = """\
1|bioengine-abc123-worker|COMPLETED|2026-11-28T02:56:07|2026-11-28T02:56:07|2026-11-28T02:56:09|vm|0:0
3|bioengine-tagA-worker|CANCELLED|2026-11-28T02:56:39|2026-11-28T02:56:39|2026-11-28T02:56:41|vm|0:0
9|wrap|FAILED|2026-11-28T02:56:42|2026-11-28T02:56:42|2026-11-28T02:56:42|(null)|0:1
7|bioengine-tagA-worker|FAILED|2026-11-28T02:57:41|2026-11-28T02:57:41|2026-11-28T02:57:41|vm|3:0
2|bioengine-tagA-worker|TIMEOUT|2026-11-28T02:56:39|2026-11-28T02:56:39|2026-11-28T02:57:53|vm|0:0
5|bioengine-tagA-worker|CANCELLED|2026-11-28T02:58:39|2026-11-28T02:58:39|2026-11-28T02:58:39|(null)|0:0
"""


def ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()


def test_squeue_format_is_the_documented_one():
    assert SQUEUE_FORMAT.count("|") == 12 and SQUEUE_FORMAT.endswith("%k")


def test_parse_squeue_sample():
    jobs = {j.job_id: j for j in parse_squeue(SQUEUE_SAMPLE)}
    assert len(jobs) == 10
    running = jobs["10"]
    assert running.state == JobState.RUNNING and running.reason is None and running.nodes == "vm"
    assert running.submitted_at == ts("2026-11-28T02:58:38")
    assert running.started_at == ts("2026-11-28T02:58:39") and running.ended_at is None
    assert running.cpus == 2 and running.memory_mb == 1536 and running.gpus is None
    assert running.time_limit == "4:00:00" and running.tag == "tagA" and running.active
    assert running.resources() == JobSpec(cpus=2, memory_gb=1.5)

    held = jobs["5"]
    assert held.state == JobState.PENDING and held.reason == "JobHeldUser"
    assert held.started_at is None and held.nodes is None and held.active
    # a pending job's start time is SLURM's estimate, not a start
    assert jobs["6"].state == JobState.PENDING and jobs["6"].started_at is None
    assert jobs["8"].reason == "PartitionConfig" and jobs["8"].cpus == 64 and jobs["8"].comment is None

    assert jobs["2"].state == JobState.TIMEOUT and jobs["2"].reason == "TimeLimit"
    assert jobs["2"].ended_at == ts("2026-11-28T02:57:53") and jobs["2"].memory_mb == 100
    assert jobs["7"].state == JobState.FAILED and jobs["7"].reason == "NonZeroExitCode"
    assert jobs["3"].state == JobState.CANCELLED and not jobs["3"].active
    assert jobs["9"].memory_mb == 100000000 and jobs["9"].tag is None
    assert jobs["1"].memory_mb == 0


def test_parse_squeue_comment_may_hold_the_separator_and_header_is_skipped():
    header = "JOBID|NAME|STATE|REASON|NODELIST|SUBMIT_TIME|START_TIME|END_TIME|TIME_LIMIT|CPUS|MIN_MEMORY|TRES_PER_NODE|COMMENT\n"
    line = "12|bioengine-x-worker|PENDING|Priority||N/A|N/A|N/A|30:00|4|8G|gres:gpu:2|a|b|c\n"
    (job,) = parse_squeue(header + line)
    assert job.comment == "a|b|c" and job.gpus == 2 and job.memory_mb == 8192 and job.submitted_at is None


def test_parse_squeue_rejects_another_format():
    with pytest.raises(ValueError, match="expected 13"):
        parse_squeue("123 bioengine-x-worker R")


def test_parse_sacct_sample():
    jobs = {j.job_id: j for j in parse_sacct(SACCT_SAMPLE)}
    assert jobs["7"].state == JobState.FAILED and jobs["7"].exit_code == "3:0"
    assert jobs["2"].state == JobState.TIMEOUT and jobs["2"].ended_at == ts("2026-11-28T02:57:53")
    assert jobs["5"].state == JobState.CANCELLED and jobs["5"].nodes is None and jobs["5"].started_at is None
    assert jobs["1"].started_at == ts("2026-11-28T02:56:07")


def test_parse_sacct_with_accounting_skips_steps():
    text = (
        "JobID|JobName|State|Submit|Start|End|NodeList|ExitCode\n"
        "51|bioengine-x-worker|CANCELLED by 1000|2026-11-28T02:56:39|2026-11-28T02:56:40|2026-11-28T03:00:00|c1|0:15\n"
        "51.batch|batch|CANCELLED|2026-11-28T02:56:40|2026-11-28T02:56:40|2026-11-28T03:00:00|c1|0:15\n"
        "51.extern|extern|COMPLETED|2026-11-28T02:56:40|2026-11-28T02:56:40|2026-11-28T03:00:00|c1|0:0\n"
        "52|bioengine-x-worker|NODE_FAIL|2026-11-28T02:56:39|2026-11-28T02:56:40|Unknown|c2|0:0\n"
        "53|bioengine-x-worker|OUT_OF_MEMORY|2026-11-28T02:56:39|2026-11-28T02:56:40|2026-11-28T02:57:00|c2|0:125\n"
    )
    jobs = parse_sacct(text)
    assert [(j.job_id, j.state) for j in jobs] == [
        ("51", JobState.CANCELLED),
        ("52", JobState.NODE_FAIL),
        ("53", JobState.OUT_OF_MEMORY),
    ]
    assert jobs[0].raw_state == "CANCELLED by 1000" and jobs[1].ended_at is None


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("PENDING", JobState.PENDING),
        ("PD", JobState.PENDING),
        ("R", JobState.RUNNING),
        ("running", JobState.RUNNING),
        ("CG", JobState.COMPLETING),
        ("CANCELLED by 0", JobState.CANCELLED),
        ("CA", JobState.CANCELLED),
        ("TO", JobState.TIMEOUT),
        ("NF", JobState.NODE_FAIL),
        ("OOM", JobState.OUT_OF_MEMORY),
        ("REQUEUE_HOLD", JobState.REQUEUED),
        ("COMPLETED+", JobState.COMPLETED),
        ("", JobState.UNKNOWN),
        ("WHATEVER", JobState.UNKNOWN),
    ],
)
def test_normalize_state(raw, state):
    assert normalize_state(raw) == state


def test_parsed_squeue_jobs_feed_the_policy():
    jobs = [j for j in parse_squeue(SQUEUE_SAMPLE) if j.tag == "tagA"]
    submitted = ts("2026-11-28T02:56:39")
    result = plan_scaling(
        ScalingInputs(jobs=jobs, ray_nodes=[HEAD], demand=[demand(CPU=1)]),
        SlurmSettings(tag="tagA", cpus=1, memory_gb=1, pending_timeout_s=60, join_timeout_s=600),
        submitted + 120,
    )
    # job 5 (held) pends past the timeout; job 10 runs and is still joining; 2 and 7 are lost, and
    # 3, cancelled by someone else than this service (it did not pass it as its own)
    assert [(c.job_id, c.kind) for c in result.cancel] == [("5", "pending_timeout")]
    assert sorted(result.lost) == ["2", "3", "7"]


# ---------------------------------------------------------------------------------------------
# Pending reasons that will not clear, the give-up backoff, lost workers
# ---------------------------------------------------------------------------------------------
from bioengine_cluster.slurm import (  # noqa: E402
    UNRUNNABLE_AFTER_S,
    BlockedSubmission,
    Canceller,
    cancelled_by_uid,
    classify_pending_reason,
    describe_loss,
    is_lost,
    parse_kill_requests,
)


@pytest.mark.parametrize(
    ("reason", "clears", "code"),
    [
        ("Resources", "may_clear", "Resources"),
        ("Priority", "may_clear", "Priority"),
        ("BeginTime", "may_clear", "BeginTime"),
        ("(Dependency)", "may_clear", "Dependency"),
        (None, "may_clear", "None"),
        ("", "may_clear", "None"),
        ("ReqNodeNotAvail, UnavailableNodes:c[1-4]", "may_clear", "ReqNodeNotAvail"),
        ("PartitionDown", "may_clear", "PartitionDown"),
        ("AssocMaxJobsLimit", "may_clear", "AssocMaxJobsLimit"),
        ("AssocGrpCpuLimit", "may_clear", "AssocGrpCpuLimit"),
        ("QOSMaxJobsPerUserLimit", "may_clear", "QOSMaxJobsPerUserLimit"),
        ("QOSGrpGRES", "may_clear", "QOSGrpGRES"),
        ("JobHeldUser", "may_clear", "JobHeldUser"),
        ("PartitionConfig", "will_not_clear", "PartitionConfig"),
        ("PartitionTimeLimit", "will_not_clear", "PartitionTimeLimit"),
        ("PartitionNodeLimit", "will_not_clear", "PartitionNodeLimit"),
        ("MaxMemPerLimit", "will_not_clear", "MaxMemPerLimit"),
        ("InvalidAccount", "will_not_clear", "InvalidAccount"),
        ("InvalidQOS", "will_not_clear", "InvalidQOS"),
        ("BadConstraints", "will_not_clear", "BadConstraints"),
        ("DependencyNeverSatisfied", "will_not_clear", "DependencyNeverSatisfied"),
        ("QOSMaxWallDurationPerJobLimit", "will_not_clear", "QOSMaxWallDurationPerJobLimit"),
        ("AssocMaxCpuPerJobLimit", "will_not_clear", "AssocMaxCpuPerJobLimit"),
        ("QOSMinGRES", "will_not_clear", "QOSMinGRES"),
        # SLURM 22.05's sentence for a partition with AllowAccounts the job's account is not in
        (
            "Job's account not known, so it can't use this partition (gpu allows a1)",
            "will_not_clear",
            "Job's",
        ),
        ("SomethingNew", "may_clear", "SomethingNew"),
    ],
)
def test_pending_reasons_are_classified(reason, clears, code):
    verdict = classify_pending_reason(reason, settings(partition="gpu"))
    assert (verdict.clears, verdict.code) == (clears, code)
    assert verdict.meaning
    if clears == "will_not_clear":
        assert verdict.change, verdict


def test_will_not_clear_verdicts_name_the_setting_to_change():
    conf = settings(partition="short", time_limit="2-00:00:00", memory_gb=64)
    config = classify_pending_reason("PartitionConfig", conf)
    assert "partition short" in config.meaning and "--slurm-worker-cpus" in config.change
    assert "scontrol show partition short" in config.change
    time_limit = classify_pending_reason("PartitionTimeLimit", conf)
    assert "2-00:00:00" in time_limit.meaning and "--slurm-time-limit" in time_limit.change
    assert "64 GB" in classify_pending_reason("MaxMemPerLimit", conf).meaning
    default = classify_pending_reason("PartitionConfig", settings())
    assert "more than the default partition allows" in default.meaning
    assert "`scontrol show partition` allows" in default.change


def test_job_pending_for_a_reason_that_will_not_clear_is_given_up_and_blocks_submission():
    jobs = [job(7, "PENDING", submitted=-(UNRUNNABLE_AFTER_S + 1), reason="PartitionConfig")]
    result = plan(jobs=jobs, wanted=[demand(CPU=2)], pending_timeout_s=600, min_workers=1)
    # given up before the (long) pending timeout: waiting cannot help
    assert [(c.job_id, c.kind) for c in result.cancel] == [("7", "unrunnable")]
    assert "will not clear" in result.cancel[0].reason and "--slurm-worker-cpus" in result.cancel[0].reason
    block = result.backoff.blocked
    assert block is not None and (block.job_id, block.reason_code, block.since) == (
        "7",
        "PartitionConfig",
        NOW,
    )
    assert result.submit == []

    # later rounds: demand and min_workers still want a job, nothing is submitted, and why
    later = plan(wanted=[demand(CPU=2)], backoff=result.backoff, now=NOW + 10_000, min_workers=1)
    assert later.submit == [] and later.backoff.blocked == block
    blocked = next(d for d in later.decisions if d.action == "blocked")
    assert "PartitionConfig" in blocked.message and "restart" in blocked.message
    assert "--slurm-partition" in blocked.message and blocked.inputs["wanted"] == 1


def test_will_not_clear_waits_for_the_pending_timeout_when_shorter():
    jobs = [job(7, "PENDING", submitted=-5, reason="PartitionConfig")]
    assert plan(jobs=jobs, pending_timeout_s=10).cancel == []
    assert [c.kind for c in plan(jobs=jobs, pending_timeout_s=4).cancel] == ["unrunnable"]
    # just submitted: SLURM's first reason gets UNRUNNABLE_AFTER_S before it is believed
    assert plan(jobs=jobs, pending_timeout_s=600).cancel == []


def test_a_block_does_not_stop_idle_cancellation():
    block = BlockedSubmission(job_id="1", reason_code="PartitionConfig", message="m", change="c", since=NOW)
    result = plan(
        jobs=[job(5)],
        nodes=[HEAD, node(5, idle=400)],
        backoff=BackoffState(blocked=block),
        idle_timeout_s=300,
    )
    assert [c.kind for c in result.cancel] == ["idle"] and result.backoff.blocked == block


def test_jobs_given_up_for_reasons_that_may_clear_back_off_doubling_to_the_cap():
    conf = dict(pending_timeout_s=60, backoff_initial_s=10, backoff_max_s=35)
    backoff, now, delays = BackoffState(), NOW, []
    for round_ in range(5):
        # a fresh job pends past the timeout with a reason that may clear
        stuck = job(100 + round_, "PENDING", submitted=now - NOW - 61, reason="Resources")
        result = plan(jobs=[stuck], wanted=[demand(CPU=2)], backoff=backoff, now=now, **conf)
        assert [c.kind for c in result.cancel] == ["pending_timeout"] and result.backoff.blocked is None
        backoff = result.backoff
        retry_at = backoff.retry_at(settings(**conf))
        assert retry_at is not None
        delays.append(retry_at - now)
        # not before the retry time ...
        assert plan(wanted=[demand(CPU=2)], backoff=backoff, now=retry_at - 1, **conf).submit == []
        # ... then one job; its successful sbatch does not forgive the give-ups
        again = plan(wanted=[demand(CPU=2)], backoff=backoff, now=retry_at + 1, **conf)
        assert len(again.submit) == 1
        backoff = again.backoff.succeeded()
        now = retry_at + 1
    assert delays == [10, 20, 35, 35, 35]
    assert backoff.give_ups == 5 and backoff.consecutive_failures == 5


def test_a_newer_job_that_joins_resets_the_give_up_backoff():
    backoff = BackoffState().gave_up(NOW - 100, "gave up on job 1").gave_up(NOW - 50, "gave up on job 2")
    assert backoff.give_ups == 2 and backoff.succeeded().consecutive_failures == 2
    # a job submitted before the last give-up joining is no proof the queue clears
    old = plan(jobs=[job(1, submitted=-60)], nodes=[HEAD, node(1)], backoff=backoff)
    assert old.backoff.give_ups == 2
    fresh = plan(jobs=[job(3, submitted=-40)], nodes=[HEAD, node(3)], backoff=backoff)
    assert fresh.backoff == BackoffState()
    assert any(d.action == "keep" and "backoff is reset" in d.message for d in fresh.decisions)


def test_sbatch_success_forgives_sbatch_failures_only():
    state = BackoffState().failed(NOW, "sbatch: error").failed(NOW, "sbatch: error")
    assert state.succeeded() == BackoffState()
    state = BackoffState().gave_up(NOW, "gave up").failed(NOW + 1, "sbatch: error")
    assert state.consecutive_failures == 2
    after = state.succeeded()
    assert (after.consecutive_failures, after.give_ups, after.last_failure_at) == (1, 1, NOW)


def test_a_worker_cancelled_by_someone_else_is_lost_and_replaced():
    jobs = [job(9, "CANCELLED", raw_state="CANCELLED"), job(8, "CANCELLED")]
    result = plan(jobs=jobs, wanted=[demand(CPU=2)], backoff=BackoffState())
    assert result.lost == ["9", "8"] and len(result.submit) == 1
    # the ones this service cancelled itself are no loss
    observed = ScalingInputs(jobs=jobs, ray_nodes=[HEAD], cancelled_by_us=["8"])
    assert plan_scaling(observed, settings(), NOW).lost == ["9"]
    assert is_lost(job(1, "TIMEOUT"), ["1"]) and not is_lost(job(1, "COMPLETING"))
    assert not is_lost(job(1, "CANCELLED"), ["1"]) and is_lost(job(1, "CANCELLED"), ["2"])


def test_describe_loss_names_the_final_state_and_who_cancelled():
    cancelled = job(9, "CANCELLED", raw_state="CANCELLED")
    by_root = Canceller(uid=0, user="root", source="the slurmctld log")
    text = describe_loss(cancelled, by_root, "0123456789abcdef")
    assert text == (
        "job 9 (Ray node 0123456789ab) ended CANCELLED: cancelled outside this service by uid 0 (root), "
        "per the slurmctld log"
    )
    unknown = Canceller(source="none", note="no SLURM accounting here (sacct)")
    assert "by an unknown user (no SLURM accounting here (sacct))" in describe_loss(cancelled, unknown)
    timeout = job(10, "TIMEOUT", raw_state="TIMEOUT", time_limit="00:10:00", exit_code="0:15")
    assert describe_loss(timeout) == "job 10 ended TIMEOUT: its walltime (00:10:00) ran out, exit code 0:15"
    assert "its node failed" in describe_loss(job(11, "NODE_FAIL"))
    assert "no final state is known" in describe_loss(job(12, "UNKNOWN", raw_state="GONE"))


def test_who_cancelled_parsers():
    log = (
        "[2026-12-01T03:10:14.976] _slurm_rpc_submit_batch_job: JobId=98 InitPrio=4294901662 usec=1522\n"
        "[2026-12-01T03:10:16.987] _slurm_rpc_kill_job: REQUEST_KILL_JOB JobId=98 uid 0\n"
        "[2026-12-01T03:11:00.001] _slurm_rpc_kill_job: REQUEST_KILL_JOB JobId=99_3 uid 1000\n"
        "[2026-12-01T03:12:00.001] _slurm_rpc_kill_job: REQUEST_KILL_JOB JobId=98 uid 1001\n"
    )
    assert parse_kill_requests(log) == {"98": 1001, "99_3": 1000}
    assert parse_kill_requests("garbage") == {}
    assert cancelled_by_uid("CANCELLED by 1000") == 1000
    assert cancelled_by_uid("cancelled by 0") == 0
    assert cancelled_by_uid("CANCELLED") is None and cancelled_by_uid("FAILED") is None
