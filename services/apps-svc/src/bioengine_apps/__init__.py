"""bioengine-apps: AI model apps of a BioEngine worker, as a Hypha service."""

from ._service import AppsService, AppsSettings

__all__ = ["AppsService", "AppsSettings"]
