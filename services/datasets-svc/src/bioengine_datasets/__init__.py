"""bioengine-datasets: Zarr datasets of a BioEngine worker, served over HTTP."""

from ._service import DatasetsService, DatasetsSettings

__all__ = ["DatasetsService", "DatasetsSettings"]
