"""OpenTelemetry: one tracer provider per process and a span per RPC method.

The gateway puts the W3C trace context into the forwarded caller (see
``forwarded_caller``), and :func:`traced` continues that trace downstream, so one user
request through gateway and service is one trace.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from ._logging import trace_ids_in_process_logs
from .errors import ConfigurationError

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
    "traced",
]

#: The standard variable for the collector's base URL (OTLP over HTTP).
OTLP_ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"

ExporterName = Literal["none", "console", "otlp", "memory"]
_TRACER_NAME = "bioengine"
_provider: TracerProvider | None = None


def otlp_traces_url(endpoint: str) -> str:
    """The traces URL of a collector's base URL, as the OTLP specification builds it."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


def exporter_for(exporter: str, otlp_endpoint: str | None) -> tuple[str, str | None]:
    """The exporter and OTLP base URL from the settings: an endpoint (``--otlp-endpoint`` or
    ``OTEL_EXPORTER_OTLP_ENDPOINT``) turns ``none`` into ``otlp``."""
    endpoint = otlp_endpoint or os.environ.get(OTLP_ENDPOINT_VARIABLE) or None
    if endpoint and exporter == "none":
        exporter = "otlp"
    return exporter, endpoint


def setup_telemetry(
    service_name: str, exporter: ExporterName | str = "none", otlp_endpoint: str | None = None
) -> SpanExporter | None:
    """Install a tracer provider for this process and return its exporter.

    ``none`` still creates spans (their trace ids appear in log lines) but exports nothing;
    ``memory`` keeps finished spans in an :class:`InMemorySpanExporter` for tests; ``otlp``
    sends them to ``otlp_endpoint`` (a collector's base URL), else to where the standard
    ``OTEL_EXPORTER_OTLP_*`` variables say.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    span_exporter: SpanExporter | None = None
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ConfigurationError(
                "telemetry exporter 'otlp' needs opentelemetry-exporter-otlp-proto-http "
                "(install bioengine-common[otlp])"
            ) from exc
        span_exporter = OTLPSpanExporter(endpoint=otlp_traces_url(otlp_endpoint) if otlp_endpoint else None)
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    elif exporter == "memory":
        span_exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif exporter != "none":
        raise ConfigurationError(f"unknown telemetry exporter '{exporter}'")
    global _provider
    if _provider is None:
        # OpenTelemetry accepts a global provider once per process; later set-ups (tests)
        # only replace the one our spans use.
        trace.set_tracer_provider(provider)
    _provider = provider
    return span_exporter


#: The provider in use and this package's tracer of it.
_cached_tracer: tuple[Any, trace.Tracer] | None = None


def _tracer() -> trace.Tracer:
    """This package's tracer of the provider in use (made again only when the provider changes:
    the SDK's ``get_tracer`` builds a new one on every call, a cost on every traced method call)."""
    global _cached_tracer
    provider = _provider or trace.get_tracer_provider()
    if _cached_tracer is None or _cached_tracer[0] is not provider:
        _cached_tracer = (provider, provider.get_tracer(_TRACER_NAME))
    return _cached_tracer[1]


def _parent_context(kwargs: Mapping[str, Any]) -> Any:
    caller = kwargs.get("caller")
    if isinstance(caller, Mapping) and isinstance(caller.get("trace"), Mapping):
        return propagate.extract(dict(caller["trace"]))
    return None


def traced(function: Callable[..., Any], span_name: str) -> Callable[..., Any]:
    """Wrap an async RPC method in a span named ``span_name``; keeps its Hypha schema."""
    if not inspect.iscoroutinefunction(function):
        raise TypeError(f"RPC method {span_name} must be async")

    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _tracer().start_as_current_span(
            span_name, context=_parent_context(kwargs), record_exception=True
        ) as span:
            context = kwargs.get("context")
            if isinstance(context, Mapping) and isinstance(context.get("user"), Mapping):
                span.set_attribute("hypha.user", str(context["user"].get("id")))
            try:
                return await function(*args, **kwargs)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    return wrapper


def current_trace_context() -> dict[str, str]:
    """The W3C trace context of the current span (``traceparent``...), to carry to another
    process; empty outside a span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def continue_trace(span_name: str, carrier: Mapping[str, str] | None, **attributes: Any) -> Iterator[Any]:
    """A span named ``span_name`` whose parent is the span ``carrier`` came from (see
    :func:`current_trace_context`); a new trace without one. For the parts of a request that run
    in other processes: a Ray task, the app deployer, an app's replica."""
    parent = propagate.extract(dict(carrier)) if carrier else None
    with _span(_tracer(), span_name, parent, attributes) as span:
        yield span


@contextlib.contextmanager
def _span(tracer: trace.Tracer, name: str, parent: Any, attributes: Mapping[str, Any]) -> Iterator[Any]:
    """The current span ``name`` under ``parent``, with the attributes that are set; an error
    marks it failed. Log lines of the process name its trace meanwhile."""
    trace_ids_in_process_logs()
    with tracer.start_as_current_span(name, context=parent, record_exception=True) as span:
        for key, value in attributes.items():
            if value is not None:
                span.set_attribute(key, value)
        try:
            yield span
        except Exception as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


_remote_providers: dict[tuple[str, str], TracerProvider] = {}


def trace_carrier(otlp_endpoint: str | None) -> dict[str, Any] | None:
    """What a Ray task or actor needs to continue the current trace and export its spans: the
    W3C context and the collector's base URL; None when spans go nowhere (no OTLP endpoint)."""
    endpoint = otlp_endpoint or os.environ.get(OTLP_ENDPOINT_VARIABLE)
    if not endpoint:
        return None
    return {"trace": current_trace_context(), "otlp_endpoint": endpoint}


@contextlib.contextmanager
def remote_span(
    name: str, carrier: Mapping[str, Any] | None, service_name: str, **attributes: Any
) -> Iterator[Any]:
    """In a Ray worker (the run_code task, the app deployer): a span named ``name`` continuing
    the trace of ``carrier`` (see :func:`trace_carrier`), exported to the carrier's collector by
    a provider of this process's own (a Ray worker is shared: the global one is left alone).
    Without a carrier, nothing (yields None)."""
    endpoint = (carrier or {}).get("otlp_endpoint")
    if not endpoint:
        yield None
        return
    key = (str(endpoint), service_name)
    provider = _remote_providers.get(key)
    if provider is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        exporter = OTLPSpanExporter(endpoint=otlp_traces_url(str(endpoint)))
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
        _remote_providers[key] = provider
    parent = propagate.extract(dict((carrier or {}).get("trace") or {}))
    with _span(provider.get_tracer(_TRACER_NAME), name, parent, attributes) as span:
        yield span


def serve_span_processors() -> list[Any]:
    """Ray Serve's tracing exporter hook (``TracingConfig.exporter_import_path``): the span
    processors of every replica, to the collector of ``OTEL_EXPORTER_OTLP_ENDPOINT`` (which Ray
    workers inherit from the head's environment)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    trace_ids_in_process_logs()  # this runs in every replica: its log lines name the trace too
    endpoint = os.environ.get(OTLP_ENDPOINT_VARIABLE)
    exporter = OTLPSpanExporter(endpoint=otlp_traces_url(endpoint) if endpoint else None)
    return [BatchSpanProcessor(exporter, schedule_delay_millis=1000)]


def serve_tracing_config() -> dict[str, Any] | None:
    """Serve's ``global_tracing_config`` when OTLP export is on (``OTEL_EXPORTER_OTLP_ENDPOINT``
    set): every replica then continues the trace of the handle call that reached it (an app call
    through its proxy), with :func:`serve_span_processors`. None otherwise."""
    if not os.environ.get(OTLP_ENDPOINT_VARIABLE):
        return None
    return {
        "enabled": True,
        "exporter_import_path": f"{__name__.rsplit('.', 1)[0]}.tracing:serve_span_processors",
        "sampling_ratio": 1.0,
    }


def flush_spans(timeout_s: float = 5.0) -> None:
    """Export the finished spans now (a process that may end before its batch is sent)."""
    provider = _provider or trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush(int(timeout_s * 1000))
