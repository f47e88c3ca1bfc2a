"""bioengine-cluster: the Ray cluster of a BioEngine worker, as a Hypha service."""

from ._service import ClusterService, ClusterSettings

__all__ = ["ClusterService", "ClusterSettings"]
