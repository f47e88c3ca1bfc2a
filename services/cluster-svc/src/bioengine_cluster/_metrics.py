"""cluster-svc's Prometheus metrics: the Ray cluster's totals and use (from the last sample),
SLURM jobs of this worker by state and the autoscaler's actions. Labels are resource names,
job states and action words; never a job id, node id or user."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bioengine_common.metrics import gauge

from ._status import ClusterSample
from .slurm import JobState, SlurmJob

__all__ = ["families"]

_RESOURCES = (
    ("cpu", "CPU"),
    ("gpu", "GPU"),
    ("memory", "memory_bytes"),
    ("object_store_memory", "object_store_bytes"),
)


def families(sample: ClusterSample | None, jobs: Iterable[SlurmJob] | None) -> list[Any]:
    """The gauges of one scrape. ``jobs`` None: not in slurm mode (the family is empty)."""
    total = gauge("bioengine_ray_resources_total", "Ray cluster totals of the live nodes.", ["resource"])
    used = gauge(
        "bioengine_ray_resources_used", "Ray cluster resources in use on the live nodes.", ["resource"]
    )
    nodes = gauge("bioengine_ray_nodes", "Ray nodes by liveness.", ["alive"])
    if sample is not None:
        for field, resource in _RESOURCES:
            total.add_metric([resource], getattr(sample.cluster, f"total_{field}"))
            used.add_metric([resource], getattr(sample.cluster, f"used_{field}"))
        alive = sum(1 for node in sample.nodes.values() if node.alive)
        nodes.add_metric(["true"], alive)
        nodes.add_metric(["false"], len(sample.nodes) - alive)
    by_state = gauge("bioengine_slurm_jobs", "SLURM jobs of this worker by state.", ["state"])
    if jobs is not None:
        counts = dict.fromkeys((state.value for state in JobState), 0)
        for job in jobs:
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
        for state, count in counts.items():
            by_state.add_metric([state], count)
    return [total, used, nodes, by_state]
