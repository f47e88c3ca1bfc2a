"""The figures a person reads in the status: rounded when dumped, exact in the sample."""

from __future__ import annotations

import json

from bioengine_cluster._status import UsageHistory, gpu_summary, summarize, without_float_noise

GIB = 1024**3


def raw_node(node_id: str, cpu: float, gpu: float = 0.0, head: bool = False, **extra: float) -> dict:
    resources = {"CPU": cpu, "memory": 6.123456789 * GIB, "object_store_memory": 2.5 * GIB + 0.3, **extra}
    if gpu:
        resources["GPU"] = gpu
        resources["accelerator_type:A100"] = 1.0
    if head:
        resources["node:__internal_head__"] = 1.0
    return {"NodeID": node_id, "NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": resources}


def test_dumped_figures_are_rounded_and_the_sample_stays_exact():
    # 0.1 + 0.2 CPUs in use: 0.30000000000000004 in floating point.
    available = {"n1": {"CPU": 4 - (0.1 + 0.2), "memory": 1.1 * GIB, "object_store_memory": 2.5 * GIB}}
    sample = summarize([raw_node("n1", 4.0, head=True, fast_disk=0.1 + 0.2)], available, [], 1.0)
    node = sample.nodes["n1"].model_dump()
    assert node["used_cpu"] == 0.3 and node["total_cpu"] == 4.0
    assert isinstance(node["total_memory"], int) and node["total_memory"] == round(6.123456789 * GIB)
    assert node["total_memory_gb"] == 6.12 and node["used_memory_gb"] == 5.02
    assert node["total_object_store_memory"] == round(2.5 * GIB + 0.3)
    assert node["total_object_store_memory_gb"] == 2.5 and node["used_object_store_memory_gb"] == 0.0
    assert node["custom_resources"] == {"fast_disk": 0.3}
    # No GPUs: GPU counts 0, GPU memory 0 (not "NA"), accelerator "NA".
    assert (node["total_gpu"], node["total_gpu_memory"], node["accelerator_type"]) == (0.0, 0, "NA")
    totals = sample.cluster.model_dump()
    assert totals["used_cpu"] == 0.3 and totals["total_memory_gb"] == 6.12
    assert "30000000000000004" not in json.dumps([node, totals])
    # The fit check still sees Ray's own figure.
    assert sample.nodes["n1"].used_cpu == 4 - (4 - (0.1 + 0.2)) != 0.3


def test_gpu_summary_says_no_gpus_once_or_counts_them():
    assert gpu_summary(summarize([raw_node("n1", 4.0)], None, [], 1.0)) == "no GPUs"
    with_gpus = summarize([raw_node("n1", 4.0), raw_node("n2", 8.0, gpu=2)], None, [], 1.0)
    assert gpu_summary(with_gpus) == "2 GPUs (A100) on 1 node"
    node = with_gpus.nodes["n2"].model_dump()
    assert node["total_gpu"] == 2.0 and node["total_gpu_memory"] == "NA"
    assert node["accelerator_type"] == "A100"
    assert gpu_summary(None) is None


def test_without_float_noise_keeps_real_figures():
    value = {"a": [0.1 + 0.2, 1715000000.123456], "b": 3, "c": "x", "d": (1.0 - 0.9,)}
    assert without_float_noise(value) == {"a": [0.3, 1715000000.12], "b": 3, "c": "x", "d": [0.1]}


def test_usage_history_keeps_one_point_per_interval_for_the_last_hour():
    history = UsageHistory(interval=30.0, keep=120)
    available = {"n1": {"CPU": 3.0, "memory": 1.0 * GIB, "object_store_memory": 2.5 * GIB}}
    kept = [
        history.add(summarize([raw_node("n1", 4.0, head=True)], available, [], t)) for t in range(0, 4000, 10)
    ]
    assert kept[:4] == [True, False, False, True]  # one sample in three, every 30 s
    points = history.dump()
    assert len(points) == 120 and points[-1]["at"] - points[0]["at"] == 119 * 30
    assert points[-1] == {
        "at": 3990,
        "used_cpu": 1.0,
        "total_cpu": 4.0,
        "used_gpu": 0.0,
        "total_gpu": 0.0,
        "used_memory_gb": 5.12,
        "total_memory_gb": 6.12,
        "pending_demand": 0,
    }
    json.dumps(points)  # plain figures, for get_status


def test_usage_history_refuses_nonsense_settings():
    import pytest

    for interval, keep in ((0, 10), (30, 0)):
        with pytest.raises(ValueError, match="interval must be > 0"):
            UsageHistory(interval=interval, keep=keep)
