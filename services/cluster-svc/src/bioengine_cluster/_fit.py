"""Does a resource request fit the cluster? A pure function of a node snapshot.

No Ray here: the service passes the latest sample, tests pass hand-made nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from bioengine_common import InvalidRequest

from ._resources import describe_amount, fits, shortfall

__all__ = ["FitResult", "NodeResources", "ResourceRequest", "check_fit", "never_fits"]


class ResourceRequest(BaseModel):
    """What one task, actor or replica needs on a single node."""

    num_cpus: float = Field(0.0, description="Logical CPUs.")
    num_gpus: float = Field(0.0, description="GPUs.")
    memory: float = Field(0.0, description="Memory in bytes.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources.")

    def as_ray(self) -> dict[str, float]:
        wanted = {"CPU": self.num_cpus, "GPU": self.num_gpus, "memory": self.memory, **self.resources}
        return {name: amount for name, amount in wanted.items() if amount}


class NodeResources(BaseModel):
    node_id: str
    node_ip: str | None = None
    alive: bool = True
    total: dict[str, float] = Field(default_factory=dict)
    available: dict[str, float] = Field(default_factory=dict)


class FitResult(BaseModel):
    verdict: Literal["fits", "fits_after_scale_up", "cannot_fit"]
    reason: str
    node_id: str | None = Field(None, description="A node where it fits now.")
    fits_when_idle: bool = Field(
        False, description="A node is large enough but busy: it fits once running work ends."
    )


def _validate(request: ResourceRequest) -> dict[str, float]:
    needed = request.as_ray()
    for name, amount in needed.items():
        if amount < 0 or amount != amount:  # negative or NaN
            raise InvalidRequest(f"resource request '{name}' must be a non-negative number, got {amount}")
    return needed


def check_fit(
    request: ResourceRequest,
    nodes: Sequence[NodeResources],
    scale_up_node: Mapping[str, float] | None = None,
) -> FitResult:
    """Where ``request`` can run.

    ``scale_up_node`` is the resources of one more worker the cluster could add (slurm mode with
    room below its maximum), or ``None`` when the cluster cannot grow.
    """
    needed = _validate(request)
    alive = [node for node in nodes if node.alive]
    for node in sorted(alive, key=lambda n: -n.available.get("CPU", 0.0)):
        if fits(needed, node.available):
            where = node.node_ip or node.node_id
            return FitResult(verdict="fits", node_id=node.node_id, reason=f"fits now on node {where}")
    fits_when_idle = any(fits(needed, node.total) for node in alive)
    if scale_up_node is not None and fits(needed, scale_up_node):
        return FitResult(
            verdict="fits_after_scale_up",
            fits_when_idle=fits_when_idle,
            reason="no node has it free now; a new worker ("
            + ", ".join(describe_amount(n, a) for n, a in scale_up_node.items() if n in needed or n == "CPU")
            + ") would fit it",
        )
    if not alive:
        return FitResult(verdict="cannot_fit", reason="the cluster has no alive nodes")
    if fits_when_idle:
        reason = shortfall(needed, [n.available for n in alive], "largest free node")
        reason += "; it fits once running work on a node ends"
    else:
        reason = shortfall(needed, [n.total for n in alive], "largest node")
        reason += "; no node of this cluster is large enough"
    if scale_up_node is not None:
        reason += f"; nor would a new worker ({shortfall(needed, [scale_up_node], 'a new worker')})"
    return FitResult(verdict="cannot_fit", fits_when_idle=fits_when_idle, reason=reason)


def never_fits(
    request: ResourceRequest,
    nodes: Sequence[NodeResources],
    worker_shape: Mapping[str, float] | None = None,
) -> str | None:
    """Why ``request`` can never run on this cluster, or ``None`` when it can (now, once running
    work ends, or on a new worker).

    ``worker_shape`` is the resources of one worker the cluster can add at all (slurm mode: a job
    of the configured size), whether or not it could be added right now: a request that waits for
    a scale-up or for busy nodes is not refused. With no alive node the cluster's state is unknown,
    and nothing is refused on it.
    """
    if not any(node.alive for node in nodes):
        return None
    result = check_fit(request, nodes, scale_up_node=worker_shape)
    if result.verdict != "cannot_fit" or result.fits_when_idle:
        return None
    return result.reason
