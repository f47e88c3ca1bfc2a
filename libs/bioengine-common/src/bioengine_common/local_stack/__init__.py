"""The local stack's infrastructure, for the launcher, bioengine-cluster and the test fixtures.

An embedded Hypha server with its SeaweedFS S3 store (:class:`EmbeddedHypha`, from
``infra/hypha-server``) and a Ray head of our own (:class:`LocalHead`: free ports, its own short
temp dir, started and stopped by PID), optionally in a :class:`Sandbox` that hides the worker's
files and processes from app code. Services that only *use* a Ray cluster need none of this:
``bioengine_common.connect_driver`` and ``ray_environment`` are the driver side.
"""

from ._hypha_server import SERVER_MAIN, EmbeddedHypha, find_hypha_project, port_free
from ._ray_head import (
    HeadOptions,
    HeadState,
    LocalHead,
    RayPorts,
    choose_ports,
    ensure_token_file,
    short_temp_dir,
    token_fingerprint,
)
from ._sandbox import Sandbox, sandbox_command, sandbox_probe, sandbox_unavailable

__all__ = [
    "SERVER_MAIN",
    "EmbeddedHypha",
    "HeadOptions",
    "HeadState",
    "LocalHead",
    "RayPorts",
    "Sandbox",
    "choose_ports",
    "ensure_token_file",
    "find_hypha_project",
    "port_free",
    "sandbox_command",
    "sandbox_probe",
    "sandbox_unavailable",
    "short_temp_dir",
    "token_fingerprint",
]
