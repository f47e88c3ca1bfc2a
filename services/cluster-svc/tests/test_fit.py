"""The fit check: a pure function, many cases."""

import pytest

from bioengine_cluster._fit import FitResult, NodeResources, ResourceRequest, check_fit
from bioengine_common import InvalidRequest

GIB = 1024**3


def node(
    node_id="n1",
    cpu=2.0,
    free_cpu=None,
    gpu=0.0,
    free_gpu=None,
    mem=8 * GIB,
    free_mem=None,
    alive=True,
    **custom,
):
    total = {"CPU": cpu, "GPU": gpu, "memory": mem, **custom}
    available = {
        "CPU": cpu if free_cpu is None else free_cpu,
        "GPU": gpu if free_gpu is None else free_gpu,
        "memory": mem if free_mem is None else free_mem,
        **custom,
    }
    return NodeResources(
        node_id=node_id, node_ip=f"10.0.0.{len(node_id)}", alive=alive, total=total, available=available
    )


def fit(nodes, scale_up=None, **request) -> FitResult:
    return check_fit(ResourceRequest(**request), nodes, scale_up)


def test_no_nodes():
    result = fit([], num_cpus=1)
    assert result.verdict == "cannot_fit" and result.reason == "the cluster has no alive nodes"


def test_only_dead_nodes_count_as_none():
    assert fit([node(alive=False)], num_cpus=1).verdict == "cannot_fit"


def test_no_nodes_but_scale_up_possible():
    result = fit([], scale_up={"CPU": 8, "GPU": 1, "memory": 64 * GIB}, num_cpus=4, num_gpus=1)
    assert result.verdict == "fits_after_scale_up"
    assert "8 CPUs" in result.reason


def test_empty_request_fits_anywhere_alive():
    result = fit([node()])
    assert result.verdict == "fits" and result.node_id == "n1"


@pytest.mark.parametrize(
    ("free", "wanted", "verdict"),
    [
        (1.5, 1.5, "fits"),
        (1.5, 1.0, "fits"),
        (1.5, 0.25, "fits"),
        (1.5, 1.6, "cannot_fit"),
        (0.1, 0.1, "fits"),
        (0.3, 0.1 + 0.2, "fits"),
    ],
)
def test_fractional_cpus(free, wanted, verdict):
    assert fit([node(cpu=2, free_cpu=free)], num_cpus=wanted).verdict == verdict


def test_reason_names_the_largest_free_node():
    result = fit([node("a", cpu=2, free_cpu=1.5), node("bb", cpu=2, free_cpu=0.5)], num_cpus=4)
    assert result.verdict == "cannot_fit"
    assert "largest node has 2 CPUs, 4 CPUs needed" in result.reason
    assert "no node of this cluster is large enough" in result.reason
    assert result.fits_when_idle is False


def test_busy_but_large_enough_is_reported_as_such():
    result = fit([node(cpu=4, free_cpu=1.5)], num_cpus=3)
    assert result.verdict == "cannot_fit" and result.fits_when_idle is True
    assert "largest free node has 1.5 CPUs, 3 CPUs needed" in result.reason
    assert "fits once running work" in result.reason


def test_picks_a_node_that_fits_among_many():
    nodes = [node("a", free_cpu=0), node("bb", cpu=8, free_cpu=6), node("ccc", free_cpu=1)]
    result = fit(nodes, num_cpus=5)
    assert result.verdict == "fits" and result.node_id == "bb"


def test_gpu_requests():
    cpu_only = [node("a", cpu=16)]
    no_gpu = fit(cpu_only, num_gpus=1)
    assert no_gpu.verdict == "cannot_fit" and "largest node has 0 GPUs, 1 GPUs needed" in no_gpu.reason
    gpu_nodes = [node("a", cpu=16), node("gpu", cpu=8, gpu=2, free_gpu=1)]
    assert fit(gpu_nodes, num_gpus=1, num_cpus=4).node_id == "gpu"
    busy = fit(gpu_nodes, num_gpus=2)
    assert busy.verdict == "cannot_fit" and busy.fits_when_idle
    assert fit(gpu_nodes, num_gpus=0.5).verdict == "fits"


def test_cpu_and_gpu_must_be_on_the_same_node():
    nodes = [node("cpus", cpu=16, gpu=0), node("gpus", cpu=1, gpu=1)]
    result = fit(nodes, num_cpus=8, num_gpus=1)
    assert result.verdict == "cannot_fit"
    assert "no single node offers 8 CPUs and 1 GPUs at once" in result.reason


def test_memory_bound():
    result = fit([node(cpu=8, mem=4 * GIB)], num_cpus=1, memory=6 * GIB)
    assert result.verdict == "cannot_fit"
    assert "largest node has 4 GiB of memory, 6 GiB of memory needed" in result.reason
    assert fit([node(cpu=8, mem=8 * GIB, free_mem=7 * GIB)], memory=6 * GIB).verdict == "fits"


def test_custom_resources():
    nodes = [node("a"), node("bb", slurm_job_id_17=1.0)]
    assert fit(nodes, resources={"slurm_job_id_17": 1}).node_id == "bb"
    assert fit(nodes, resources={"tpu": 1}).verdict == "cannot_fit"


def test_scale_up_only_when_the_new_worker_is_large_enough():
    nodes = [node(cpu=2, free_cpu=0)]
    assert fit(nodes, scale_up={"CPU": 8, "memory": 32 * GIB}, num_cpus=4).verdict == "fits_after_scale_up"
    too_big = fit(nodes, scale_up={"CPU": 8, "memory": 32 * GIB}, num_cpus=16)
    assert too_big.verdict == "cannot_fit"
    assert "nor would a new worker (a new worker has 8 CPUs, 16 CPUs needed)" in too_big.reason


@pytest.mark.parametrize(
    "bad", [{"num_cpus": -1}, {"num_gpus": -0.5}, {"memory": -1}, {"num_cpus": float("nan")}]
)
def test_bad_requests_are_refused_with_the_field_name(bad):
    with pytest.raises(
        InvalidRequest,
        match=next(iter({"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}[k] for k in bad)),
    ):
        fit([node()], **bad)
