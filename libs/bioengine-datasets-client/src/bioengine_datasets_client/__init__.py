"""Read BioEngine datasets with zarr over HTTP.

>>> from bioengine_datasets_client import open_dataset
>>> array = open_dataset("http://host:port", "my-dataset", "image.zarr", token=TOKEN)
"""

from ._open import open_dataset
from ._store import READ_AHEAD_BYTES, RETRY_FOR, DatasetAccessError, DatasetUnavailableError, HttpZarrStore

__all__ = [
    "READ_AHEAD_BYTES",
    "RETRY_FOR",
    "DatasetAccessError",
    "DatasetUnavailableError",
    "HttpZarrStore",
    "open_dataset",
]
