import pytest
from hypha_rpc.utils.schema import schema_function
from opentelemetry import trace

from bioengine_common import ConfigurationError, forwarded_caller, setup_telemetry, traced


async def test_traced_makes_a_span_per_call_and_keeps_the_schema():
    exporter = setup_telemetry("svc", "memory")

    @schema_function
    async def add(a: int, b: int, context: dict | None = None) -> int:
        """Add."""
        return a + b

    wrapped = traced(add, "svc.add")
    assert wrapped.__schema__["name"] == "add"
    assert await wrapped(1, 2, context={"user": {"id": "u1"}}) == 3
    (span,) = exporter.get_finished_spans()
    assert span.name == "svc.add" and span.attributes["hypha.user"] == "u1"


async def test_traced_records_errors_and_continues_forwarded_traces():
    exporter = setup_telemetry("svc", "memory")

    async def fail(caller=None, context=None):
        raise ValueError("boom")

    with trace.get_tracer("gw").start_as_current_span("gateway.call") as parent:
        caller = forwarded_caller({"user": {"id": "alice"}})
    with pytest.raises(ValueError):
        await traced(fail, "svc.fail")(caller=caller)
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.parent.span_id == parent.get_span_context().span_id
    assert not span.status.is_ok


def test_sync_methods_and_unknown_exporters_are_rejected():
    with pytest.raises(TypeError):
        traced(lambda: 1, "x")
    with pytest.raises(ConfigurationError):
        setup_telemetry("svc", "zipkin")  # type: ignore[arg-type]
