"""bioengine-cluster: the Ray cluster of a BioEngine worker, as a Hypha service."""

from ._fit import FitResult, NodeResources, ResourceRequest, check_fit
from ._service import ClusterService
from ._settings import ClusterSettings

__all__ = ["ClusterService", "ClusterSettings", "FitResult", "NodeResources", "ResourceRequest", "check_fit"]
