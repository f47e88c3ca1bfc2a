"""bioengine-gateway: the public ``bioengine-worker`` service of a BioEngine worker."""

from ._service import BACKENDS, GatewayService, GatewaySettings

__all__ = ["BACKENDS", "GatewayService", "GatewaySettings"]
