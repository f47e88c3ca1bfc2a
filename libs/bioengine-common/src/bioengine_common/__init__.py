"""Shared foundation of the BioEngine services.

Settings, logging, permissions, errors, the Hypha connection, the service lifecycle, telemetry
and joining a Ray cluster as a driver. Prometheus metrics are in
:mod:`bioengine_common.metrics`. The local stack's infrastructure (the embedded Hypha
server, a Ray head of our own) is in :mod:`bioengine_common.local_stack`; test fixtures in
:mod:`bioengine_common.testing` (a pytest plugin), exceptions in :mod:`bioengine_common.errors`.
"""

from ._aio import within
from ._files import write_json_atomic
from ._hypha import HyphaConnection, connect, plain, trusted_service_id
from ._lifecycle import EXIT_CONNECTION_LOST, EXIT_FAILURE, EXIT_WORKER_STOP, BioEngineService, CallerField
from ._logging import CONTINUATION, create_logger, escape_control, mask_secrets
from ._permissions import (
    SERVICES_USER,
    check_permissions,
    create_context,
    forwarded_caller,
    is_anonymous,
    is_authorized,
    resolve_context,
)
from ._processes import free_port, spawn, stop_process, wait_for_port
from ._ray import (
    RayCalls,
    check_token_file,
    connect_driver,
    disconnect_driver,
    ray_environment,
    scrub_environment,
)
from ._settings import ENV_PREFIX, ServiceSettings, build_parser, load_settings
from ._telemetry import continue_trace, current_trace_context, flush_spans, setup_telemetry, traced
from ._tokens import mint_token, token_claims
from .errors import (
    AppFailed,
    BioEngineError,
    ConfigurationError,
    ConnectionLost,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ResourceUnavailable,
    ServiceUnavailable,
    error_summary,
    from_remote,
)

__all__ = [
    "CONTINUATION",
    "ENV_PREFIX",
    "EXIT_CONNECTION_LOST",
    "EXIT_FAILURE",
    "EXIT_WORKER_STOP",
    "SERVICES_USER",
    "AppFailed",
    "BioEngineError",
    "BioEngineService",
    "CallerField",
    "ConfigurationError",
    "ConnectionLost",
    "HyphaConnection",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "RayCalls",
    "ResourceUnavailable",
    "ServiceSettings",
    "ServiceUnavailable",
    "build_parser",
    "check_permissions",
    "check_token_file",
    "connect",
    "connect_driver",
    "continue_trace",
    "create_context",
    "create_logger",
    "current_trace_context",
    "disconnect_driver",
    "error_summary",
    "escape_control",
    "flush_spans",
    "forwarded_caller",
    "free_port",
    "from_remote",
    "is_anonymous",
    "is_authorized",
    "load_settings",
    "mask_secrets",
    "mint_token",
    "plain",
    "ray_environment",
    "resolve_context",
    "scrub_environment",
    "setup_telemetry",
    "spawn",
    "stop_process",
    "token_claims",
    "traced",
    "trusted_service_id",
    "wait_for_port",
    "within",
    "write_json_atomic",
]
