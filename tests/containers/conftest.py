"""The container fixtures of bioengine_common.testing.containers (not part of the default plugin)."""

from bioengine_common.testing.containers import podman, start_service_container

__all__ = ["podman", "start_service_container"]
