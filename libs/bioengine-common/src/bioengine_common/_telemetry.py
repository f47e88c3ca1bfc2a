"""OpenTelemetry: one tracer provider per process and a span per RPC method.

The gateway puts the W3C trace context into the forwarded caller (see
``forwarded_caller``), and :func:`traced` continues that trace downstream, so one user
request through gateway and service is one trace.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
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

from .errors import ConfigurationError

__all__ = ["setup_telemetry", "traced"]

ExporterName = Literal["none", "console", "otlp", "memory"]
_TRACER_NAME = "bioengine"
_provider: TracerProvider | None = None


def setup_telemetry(service_name: str, exporter: ExporterName = "none") -> SpanExporter | None:
    """Install a tracer provider for this process and return its exporter.

    ``none`` still creates spans (their trace ids appear in log lines) but exports nothing;
    ``memory`` keeps finished spans in an :class:`InMemorySpanExporter` for tests; ``otlp``
    needs the ``otlp`` extra of bioengine-common.
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
        span_exporter = OTLPSpanExporter()
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


def _tracer() -> trace.Tracer:
    return (_provider or trace.get_tracer_provider()).get_tracer(_TRACER_NAME)


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
