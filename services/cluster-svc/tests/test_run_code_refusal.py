"""Which run_code requests are refused at once, and how bad remote_options are named: pure
decisions (never_fits, parse_remote_options) over hand-made nodes, no Ray."""

from __future__ import annotations

import math

import pytest

from bioengine_cluster._fit import NodeResources, ResourceRequest, never_fits
from bioengine_cluster._run_code import parse_remote_options
from bioengine_common import InvalidRequest

GIB = 1024**3


def node(node_id: str, cpu: float, free_cpu: float | None = None, gpu: float = 0.0, mem: float = 8 * GIB):
    total = {"CPU": cpu, "GPU": gpu, "memory": mem}
    available = {**total, "CPU": cpu if free_cpu is None else free_cpu}
    return NodeResources(node_id=node_id, node_ip=f"10.0.0.{len(node_id)}", total=total, available=available)


def request(**options: object) -> ResourceRequest:
    return parse_remote_options(options)[1]


# ---- single-machine / external-cluster: the alive nodes' totals decide ----------------------------
def test_a_request_larger_than_every_node_is_refused_with_the_reason():
    reason = never_fits(request(num_cpus=64), [node("head", cpu=2)])
    assert reason is not None
    assert "largest node has 2 CPUs, 64 CPUs needed" in reason and "no node of this cluster" in reason


def test_a_request_that_fits_a_busy_node_is_not_refused():
    # 2 CPUs, both in use: it waits for them, as before.
    assert never_fits(request(num_cpus=2), [node("head", cpu=2, free_cpu=0)]) is None


def test_a_request_that_fits_now_is_not_refused():
    assert never_fits(request(num_cpus=0.5), [node("head", cpu=2)]) is None


def test_gpus_on_a_cluster_without_gpus_are_refused():
    reason = never_fits(request(num_gpus=1), [node("head", cpu=4)])
    assert reason is not None and "largest node has 0 GPUs, 1 GPUs needed" in reason


def test_the_default_request_is_one_cpu():
    # A 0-CPU node (e.g. a head started with --head-num-cpus 0) can never run a default task.
    reason = never_fits(request(), [node("head", cpu=0)])
    assert reason is not None and "1 CPUs needed" in reason
    assert never_fits(request(num_cpus=0), [node("head", cpu=0)]) is None


def test_dead_nodes_do_not_count_and_no_alive_node_refuses_nothing():
    big = node("big", cpu=64).model_copy(update={"alive": False})
    assert never_fits(request(num_cpus=32), [big, node("small", cpu=2)]) is not None
    assert never_fits(request(num_cpus=32), [big]) is None  # state unknown: not refused on it


# ---- slurm: the head, the workers and a worker job of the configured size -----------------------
WORKER_JOB = {"CPU": 4.0, "memory": 0.6 * 8 * GIB}


def test_slurm_request_that_a_new_worker_job_would_hold_is_not_refused():
    head = node("head", cpu=0)  # the slurm head offers no CPUs
    assert never_fits(request(num_cpus=4), [head], worker_shape=WORKER_JOB) is None


def test_slurm_request_no_worker_job_could_hold_is_refused_naming_the_job_size():
    reason = never_fits(request(num_cpus=64), [node("head", cpu=0)], worker_shape=WORKER_JOB)
    assert reason is not None
    assert "nor would a new worker (a new worker has 4 CPUs, 64 CPUs needed)" in reason


def test_slurm_memory_beyond_a_worker_job_is_refused():
    reason = never_fits(request(num_cpus=1, memory=16 * GIB), [node("head", cpu=0)], worker_shape=WORKER_JOB)
    assert reason is not None and "GiB of memory" in reason


def test_slurm_without_room_to_grow_still_waits_for_a_busy_worker():
    workers = [node("head", cpu=0), node("w1", cpu=4, free_cpu=0)]
    assert never_fits(request(num_cpus=4), workers, worker_shape=None) is None


def test_slurm_that_cannot_grow_refuses_what_no_node_holds():
    reason = never_fits(request(num_cpus=2), [node("head", cpu=0)], worker_shape=None)
    assert reason is not None and "no node of this cluster is large enough" in reason


# ---- remote_options ---------------------------------------------------------------------------------
def test_good_options_pass_through_and_give_the_request():
    options, wanted = parse_remote_options(
        {
            "num_cpus": 0.5,
            "memory": 2 * GIB,
            "resources": {"fast_disk": 1},
            "runtime_env": {"env_vars": {"A": "1"}},
            "max_retries": 0,
            "num_gpus": None,  # None: Ray's default, not passed on
        }
    )
    assert options == {
        "num_cpus": 0.5,
        "memory": 2 * GIB,
        "resources": {"fast_disk": 1},
        "runtime_env": {"env_vars": {"A": "1"}},
        "max_retries": 0,
    }
    assert wanted == ResourceRequest(num_cpus=0.5, memory=2 * GIB, resources={"fast_disk": 1.0})
    assert parse_remote_options(None) == ({}, ResourceRequest(num_cpus=1.0))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_cpu": 1}, "unknown remote_options ['num_cpu']; allowed: ["),
        ({"num_cpus": -1}, "remote_options.num_cpus must be a non-negative number, got -1"),
        ({"num_gpus": "2"}, "remote_options.num_gpus must be a non-negative number, got str '2'"),
        ({"num_cpus": True}, "remote_options.num_cpus must be a non-negative number, got bool True"),
        ({"memory": math.nan}, "remote_options.memory must be a non-negative number, got nan"),
        ({"memory": math.inf}, "remote_options.memory must be a non-negative number, got inf"),
        ({"resources": ["a"]}, "remote_options.resources must be a dict"),
        ({"resources": {"disk": -1}}, "remote_options.resources.disk must be a non-negative number"),
        ({"resources": {"CPU": 2}}, "remote_options.resources.CPU: give CPU as remote_options.num_cpus"),
        ({"runtime_env": "pip"}, "remote_options.runtime_env must be a dict, got str"),
        ({"accelerator_type": 3}, "remote_options.accelerator_type must be a str, got int"),
        ({"max_retries": -2}, "remote_options.max_retries must be a whole number >= 0"),
        ({"max_retries": 1.5}, "remote_options.max_retries must be a whole number >= 0"),
    ],
)
def test_bad_options_are_refused_naming_the_field(options, message):
    with pytest.raises(InvalidRequest) as caught:
        parse_remote_options(options)
    assert message in str(caught.value)


def test_options_that_are_not_a_dict_are_refused():
    with pytest.raises(InvalidRequest, match="remote_options must be a dict of Ray task options, got list"):
        parse_remote_options([1])
