"""The cluster's status in the public worker's shape, built from raw Ray data by pure functions.

The samples keep Ray's exact figures (the fit check works on them); what a person reads is
rounded when a sample is dumped: CPUs and GPUs to at most 2 decimals, memory in whole bytes
(the public worker's fields) plus the same in GB (GiB, as every ``*_gb`` setting here) with 2
decimals, and any other float without binary noise (``0.30000000000000004`` reads ``0.3``).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field, computed_field, field_serializer

from ._fit import NodeResources

__all__ = [
    "ClusterSample",
    "ClusterTotals",
    "NodeStatus",
    "PendingDemand",
    "UsageHistory",
    "gpu_summary",
    "summarize",
    "without_float_noise",
]

_GIB = 1024**3


def without_float_noise(value: Any) -> Any:
    """``value`` with every float cut to 12 significant digits, recursively (dicts, lists):
    binary noise such as ``0.1 + 0.2 == 0.30000000000000004`` goes, real figures stay (an
    epoch time keeps its hundredths of a second)."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {key: without_float_noise(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_float_noise(item) for item in value]
    return value


class _Resources(BaseModel):
    """CPU, GPU and memory figures (the public worker's names), rounded when dumped."""

    total_cpu: float = 0.0
    used_cpu: float = 0.0
    total_gpu: float = 0.0
    used_gpu: float = 0.0
    total_memory: float = Field(0.0, description="Bytes.")
    used_memory: float = Field(0.0, description="Bytes.")
    total_object_store_memory: float = Field(0.0, description="Bytes.")
    used_object_store_memory: float = Field(0.0, description="Bytes.")

    @field_serializer("total_cpu", "used_cpu", "total_gpu", "used_gpu")
    def _count(self, value: float) -> float:
        return round(value, 2) + 0.0  # + 0.0: no "-0.0"

    @field_serializer("total_memory", "used_memory", "total_object_store_memory", "used_object_store_memory")
    def _bytes(self, value: float) -> int:
        return round(value)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_memory_gb(self) -> float:
        return round(self.total_memory / _GIB, 2)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def used_memory_gb(self) -> float:
        return round(self.used_memory / _GIB, 2)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_object_store_memory_gb(self) -> float:
        return round(self.total_object_store_memory / _GIB, 2)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def used_object_store_memory_gb(self) -> float:
        return round(self.used_object_store_memory / _GIB, 2)


class NodeStatus(_Resources):
    node_ip: str | None
    head: bool
    alive: bool = True
    total_gpu_memory: int | str = Field("NA", description="Bytes; 0 without GPUs, 'NA' when not known.")
    used_gpu_memory: int | str = Field("NA", description="Bytes; 0 without GPUs, 'NA' when not known.")
    accelerator_type: str = "NA"
    slurm_job_id: str | None = None
    custom_resources: dict[str, float] = Field(default_factory=dict)

    @field_serializer("custom_resources")
    def _custom(self, value: dict[str, float]) -> dict[str, float]:
        return without_float_noise(value)


class PendingDemand(BaseModel):
    resources: dict[str, float]
    count: int
    source: str = Field(description="task_actor, placement_group or request_resources")

    @field_serializer("resources")
    def _resources(self, value: dict[str, float]) -> dict[str, float]:
        return without_float_noise(value)


class ClusterTotals(_Resources):
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


def gpu_summary(sample: ClusterSample | None) -> str | None:
    """One line on the cluster's GPUs: "no GPUs", or e.g. "2 GPUs (A100) on 1 node"."""
    if sample is None:
        return None
    gpu_nodes = [n for n in sample.nodes.values() if n.alive and n.total_gpu > 0]
    if not gpu_nodes:
        return "no GPUs"
    count = round(sum(n.total_gpu for n in gpu_nodes), 2) + 0.0
    kinds = sorted({n.accelerator_type for n in gpu_nodes if n.accelerator_type not in ("NA", "")})
    plural = "" if count == 1 else "s"
    nodes = f"{len(gpu_nodes)} node{'' if len(gpu_nodes) == 1 else 's'}"
    return f"{count:g} GPU{plural}" + (f" ({', '.join(kinds)})" if kinds else "") + f" on {nodes}"


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
            # The GPUs' own memory is not sampled: unknown on a GPU node, none without GPUs.
            total_gpu_memory="NA" if resources.get("GPU", 0.0) else 0,
            used_gpu_memory="NA" if resources.get("GPU", 0.0) else 0,
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


class UsageHistory:
    """What the cluster used over the last hour, for charts: at most one point per
    ``interval`` seconds, the newest ``keep`` points (default one per 30 s for an hour).

    A bounded ring in memory, filled from the samples the service takes anyway; a restart of
    the service starts it empty.
    """

    FIELDS = ("used_cpu", "total_cpu", "used_gpu", "total_gpu", "used_memory_gb", "total_memory_gb")

    def __init__(self, interval: float = 30.0, keep: int = 120):
        if interval <= 0 or keep < 1:
            raise ValueError(f"interval must be > 0 and keep >= 1, got {interval} and {keep}")
        self.interval = interval
        self.points: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)

    def add(self, sample: ClusterSample) -> bool:
        """Keep ``sample``'s totals if ``interval`` has passed since the last point kept."""
        if self.points and sample.sampled_at - self.points[-1]["at"] < self.interval:
            return False
        totals = sample.cluster.model_dump()
        pending = sum(d.count for d in sample.pending_demand)
        self.points.append(
            {"at": sample.sampled_at, **{k: totals[k] for k in self.FIELDS}, "pending_demand": pending}
        )
        return True

    def dump(self) -> list[dict[str, Any]]:
        return without_float_noise(list(self.points))
