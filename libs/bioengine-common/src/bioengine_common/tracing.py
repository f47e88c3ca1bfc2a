"""OpenTelemetry across processes: one trace per request from the gateway through a service
into a Ray task, the app deployer or a Serve replica.

- :func:`trace_carrier` (in a service, inside a request's span) and :func:`remote_span` (in the
  Ray task or actor) continue a trace in another process, exporting there over OTLP/HTTP;
- :func:`serve_tracing_config` turns on Ray Serve's own tracing with
  :func:`serve_span_processors`, so an app call through its proxy continues into the replica.

The services' own spans (one per RPC method) are :func:`bioengine_common.traced`'s.
"""

from ._logging import trace_ids_in_process_logs
from ._telemetry import (
    OTLP_ENDPOINT_VARIABLE,
    continue_trace,
    current_trace_context,
    exporter_for,
    flush_spans,
    otlp_traces_url,
    remote_span,
    serve_span_processors,
    serve_tracing_config,
    setup_telemetry,
    trace_carrier,
    traced,
)

__all__ = [
    "OTLP_ENDPOINT_VARIABLE",
    "continue_trace",
    "current_trace_context",
    "exporter_for",
    "flush_spans",
    "otlp_traces_url",
    "remote_span",
    "serve_span_processors",
    "serve_tracing_config",
    "setup_telemetry",
    "trace_carrier",
    "trace_ids_in_process_logs",
    "traced",
]
