"""Where the Ray cluster comes from, one class per mode, and the driver connection to it.

:class:`ClusterBackend` is the interface with capability flags; ``LocalHeadBackend`` serves
single-machine and slurm (head only here; SLURM workers come later), ``ExternalBackend``
connects to a cluster someone else runs. Ray's blocking calls run in threads.
"""

from __future__ import annotations

import abc
import logging
import socket
from pathlib import Path
from typing import Any, ClassVar

from bioengine_common import ConfigurationError, ServiceUnavailable, check_token_file, connect_driver
from bioengine_common.local_stack import HeadOptions, LocalHead, Sandbox, ensure_token_file

__all__ = ["NAMESPACE", "ClusterBackend", "ExternalBackend", "LocalHeadBackend"]

NAMESPACE = "bioengine"


class ClusterBackend(abc.ABC):
    mode: ClassVar[str]
    #: Whether this backend starts (and may restart) the Ray head itself.
    starts_ray: ClassVar[bool]
    #: Whether the cluster can add nodes on demand (slurm, in the autoscaling step).
    can_scale_up: ClassVar[bool] = False
    #: The cluster's Ray token file (token authentication), None without one.
    token_file: Path | None = None
    #: What the cluster's Ray processes (app code) must not see; None: not sandboxed.
    sandbox: Sandbox | None = None

    @property
    def auth_mode(self) -> str:
        return "token" if self.token_file else "disabled"

    def connect(self, timeout: float) -> None:
        """Become a Ray driver of the cluster (blocking), with its token if it has one."""
        connect_driver(self.driver_address, timeout, NAMESPACE, token_file=self.token_file)

    @abc.abstractmethod
    def start(self) -> None:
        """Start or adopt the head; connect nothing. Blocking."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop what :meth:`start` started. Blocking."""

    @property
    @abc.abstractmethod
    def driver_address(self) -> str:
        """What ``ray.init`` connects to."""

    @property
    @abc.abstractmethod
    def head_address(self) -> str | None:
        """The address reported in the status (``ip:port`` or ``ray://host:port``)."""

    @property
    def start_time(self) -> float | None:
        return None

    def alive(self) -> tuple[bool, str | None]:
        """Is the head there? (True, None) or (False, reason)."""
        return True, None

    def gcs_address(self) -> str | None:
        """GCS address for the autoscaler SDK; None when only Ray Client is available."""
        return None

    def describe(self) -> dict[str, Any]:
        return {}

    def app_sandbox(self) -> dict[str, Any]:
        """Whether app code runs hidden from the worker's files and processes, and why not."""
        return {"enabled": False, "reason": "an external cluster: its own setup decides"}


class LocalHeadBackend(ClusterBackend):
    starts_ray = True

    def __init__(
        self,
        mode: str,
        temp_dir: Path,
        options: HeadOptions,
        logger: logging.Logger,
        token_file: Path | None = None,
        sandbox_off: str | None = None,
    ):
        """``sandbox_off``: why ``options.sandbox`` is None (reported in the status)."""
        self.mode = mode  # type: ignore[misc]
        self.sandbox = options.sandbox
        self.sandbox_off = sandbox_off
        # Created once and reused: a head adopted after a restart still has the same token.
        self.token_file = ensure_token_file(token_file) if token_file else None
        self.head = LocalHead(temp_dir, options, logger, token_file=self.token_file)

    def start(self) -> None:
        if not self.head.adopt():
            self.head.start()

    def stop(self) -> None:
        self.head.stop()

    @property
    def driver_address(self) -> str:
        assert self.head.state is not None
        return self.head.state.address

    @property
    def head_address(self) -> str | None:
        return self.head.state.address if self.head.state else None

    @property
    def start_time(self) -> float | None:
        return self.head.state.started_at if self.head.state else None

    def alive(self) -> tuple[bool, str | None]:
        if self.head.alive():
            return True, None
        return False, self.head.exit_reason()

    def gcs_address(self) -> str | None:
        return self.head_address

    def describe(self) -> dict[str, Any]:
        return self.head.describe()

    def app_sandbox(self) -> dict[str, Any]:
        if self.sandbox is None:
            return {"enabled": False, "reason": self.sandbox_off}
        # What the running head hides (recorded when it started); planned anew only before that.
        state = self.head.state
        hidden = state.hidden_paths if state and state.hidden_paths is not None else None
        return {"enabled": True, "hidden_paths": hidden or [str(p) for p in self.sandbox.plan()[0]]}


class ExternalBackend(ClusterBackend):
    mode = "external-cluster"
    starts_ray = False

    def __init__(self, address: str, token_file: Path | None = None):
        self.address = address
        self.token_file = token_file

    def _host_port(self) -> tuple[str, int]:
        if not self.address:
            raise ConfigurationError(
                "external-cluster mode needs --head-address (host:port or ray://host:port)"
            )
        target = self.address.removeprefix("ray://")
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(
                f"--head-address must be host:port or ray://host:port, got '{self.address}'"
            )
        return host, int(port)

    def start(self) -> None:
        host, port = self._host_port()
        if self.token_file is not None:
            if self.address.startswith("ray://"):
                raise ConfigurationError(
                    f"--ray-token-file cannot be used with the Ray Client address {self.address}: "
                    "Ray Client does not work under token authentication (Ray 2.60); give the "
                    "cluster's GCS address host:port as --head-address"
                )
            check_token_file(self.token_file)
        try:
            with socket.create_connection((host, port), timeout=3):
                pass
        except OSError as exc:
            raise ServiceUnavailable(f"no Ray cluster answers at {self.address}: {exc}") from exc

    def stop(self) -> None:
        """Nothing to stop: someone else runs this cluster."""

    @property
    def driver_address(self) -> str:
        return self.address

    @property
    def head_address(self) -> str | None:
        return self.address

    def gcs_address(self) -> str | None:
        return None if self.address.startswith("ray://") else self.address
