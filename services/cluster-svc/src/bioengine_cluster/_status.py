"""The cluster's status in the public worker's shape, built from raw Ray data by pure functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from ._fit import NodeResources

__all__ = ["ClusterSample", "ClusterTotals", "NodeStatus", "PendingDemand", "summarize"]


class NodeStatus(BaseModel):
    node_ip: str | None
    head: bool
    alive: bool = True
    total_cpu: float = 0.0
    used_cpu: float = 0.0
    total_gpu: float = 0.0
    used_gpu: float = 0.0
    total_gpu_memory: int | str = "NA"
    used_gpu_memory: int | str = "NA"
    total_memory: float = 0.0
    used_memory: float = 0.0
    total_object_store_memory: float = 0.0
    used_object_store_memory: float = 0.0
    accelerator_type: str = "NA"
    slurm_job_id: str | None = None
    custom_resources: dict[str, float] = Field(default_factory=dict)


class PendingDemand(BaseModel):
    resources: dict[str, float]
    count: int
    source: str = Field(description="task_actor, placement_group or request_resources")


class ClusterTotals(BaseModel):
    total_cpu: float = 0.0
    used_cpu: float = 0.0
    total_gpu: float = 0.0
    used_gpu: float = 0.0
    total_memory: float = 0.0
    used_memory: float = 0.0
    total_object_store_memory: float = 0.0
    used_object_store_memory: float = 0.0
    pending_resources: dict[str, Any] = Field(default_factory=dict)


class ClusterSample(BaseModel):
    """One observation of the cluster."""

    sampled_at: float
    cluster: ClusterTotals
    nodes: dict[str, NodeStatus]
    pending_demand: list[PendingDemand] = Field(default_factory=list)
    per_node_usage_known: bool = True

    def node_resources(self) -> list[NodeResources]:
        """The snapshot the fit check works on."""
        result = []
        for node_id, node in self.nodes.items():
            total = {
                "CPU": node.total_cpu,
                "GPU": node.total_gpu,
                "memory": node.total_memory,
                **node.custom_resources,
            }
            available = {
                "CPU": node.total_cpu - node.used_cpu,
                "GPU": node.total_gpu - node.used_gpu,
                "memory": node.total_memory - node.used_memory,
                **node.custom_resources,
            }
            result.append(
                NodeResources(
                    node_id=node_id, node_ip=node.node_ip, alive=node.alive, total=total, available=available
                )
            )
        return result


_STANDARD = {"CPU", "GPU", "memory", "object_store_memory"}


def _custom(resources: Mapping[str, float]) -> dict[str, float]:
    return {
        name: value
        for name, value in resources.items()
        if name not in _STANDARD and not name.startswith(("node:", "accelerator_type:", "slurm_job_id:"))
    }


def summarize(
    raw_nodes: Sequence[Mapping[str, Any]],
    available: Mapping[str, Mapping[str, float]] | None,
    demands: Sequence[PendingDemand],
    sampled_at: float,
) -> ClusterSample:
    """Build a :class:`ClusterSample` from ``ray.nodes()``, per-node available resources
    (``None`` when unknown, e.g. over Ray Client) and the pending demand."""
    nodes: dict[str, NodeStatus] = {}
    totals = ClusterTotals()
    for raw in raw_nodes:
        node_id = str(raw.get("NodeID"))
        resources: Mapping[str, float] = raw.get("Resources") or {}
        alive = bool(raw.get("Alive", True))
        free = (available or {}).get(node_id)
        used: dict[str, float] = {}
        if free is not None:
            used = {name: max(0.0, resources.get(name, 0.0) - free.get(name, 0.0)) for name in _STANDARD}
        accelerator = next((n.split(":", 1)[1] for n in resources if n.startswith("accelerator_type:")), "NA")
        slurm_job = next((n.split(":", 1)[1] for n in resources if n.startswith("slurm_job_id:")), None)
        node = NodeStatus(
            node_ip=raw.get("NodeManagerAddress"),
            head="node:__internal_head__" in resources,
            alive=alive,
            total_cpu=resources.get("CPU", 0.0),
            used_cpu=used.get("CPU", 0.0),
            total_gpu=resources.get("GPU", 0.0),
            used_gpu=used.get("GPU", 0.0),
            total_memory=resources.get("memory", 0.0),
            used_memory=used.get("memory", 0.0),
            total_object_store_memory=resources.get("object_store_memory", 0.0),
            used_object_store_memory=used.get("object_store_memory", 0.0),
            accelerator_type=accelerator,
            slurm_job_id=slurm_job,
            custom_resources=_custom(resources),
        )
        nodes[node_id] = node
        if not alive:
            continue
        for field in ("cpu", "gpu", "memory", "object_store_memory"):
            for kind in ("total", "used"):
                name = f"{kind}_{field}"
                setattr(totals, name, getattr(totals, name) + getattr(node, name))
    if demands:
        totals.pending_resources = {
            "total": sum(d.count for d in demands),
            "demands": [d.model_dump() for d in demands],
        }
    return ClusterSample(
        sampled_at=sampled_at, cluster=totals, nodes=nodes, pending_demand=list(demands),
        per_node_usage_known=available is not None,
    )  # fmt: skip
