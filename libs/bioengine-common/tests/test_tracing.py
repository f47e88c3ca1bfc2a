"""Carrying a trace into another process: the carrier, the settings and Serve's hook (no stack;
the whole path is tests/integration/test_metrics_and_tracing.py)."""

from opentelemetry import trace

from bioengine_common import setup_telemetry
from bioengine_common.tracing import (
    OTLP_ENDPOINT_VARIABLE,
    exporter_for,
    otlp_traces_url,
    remote_span,
    serve_span_processors,
    serve_tracing_config,
    trace_carrier,
)


def test_an_endpoint_turns_otlp_on(monkeypatch):
    monkeypatch.delenv(OTLP_ENDPOINT_VARIABLE, raising=False)
    assert exporter_for("none", None) == ("none", None)
    assert exporter_for("none", "http://c:4318") == ("otlp", "http://c:4318")
    assert exporter_for("console", "http://c:4318") == ("console", "http://c:4318")
    monkeypatch.setenv(OTLP_ENDPOINT_VARIABLE, "http://env:4318")
    assert exporter_for("none", None) == ("otlp", "http://env:4318")
    assert otlp_traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert otlp_traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_the_carrier_holds_the_current_span_and_the_collector(monkeypatch):
    monkeypatch.delenv(OTLP_ENDPOINT_VARIABLE, raising=False)
    setup_telemetry("svc", "memory")
    assert trace_carrier(None) is None  # spans go nowhere: nothing to carry
    with trace.get_tracer("t").start_as_current_span("request") as span:
        carrier = trace_carrier("http://c:4318")
    assert carrier is not None and carrier["otlp_endpoint"] == "http://c:4318"
    assert f"{span.get_span_context().trace_id:032x}" in carrier["trace"]["traceparent"]
    with remote_span("task", None, "worker") as nothing:
        assert nothing is None


def test_serve_tracing_follows_the_variable(monkeypatch):
    monkeypatch.delenv(OTLP_ENDPOINT_VARIABLE, raising=False)
    assert serve_tracing_config() is None
    monkeypatch.setenv(OTLP_ENDPOINT_VARIABLE, "http://c:4318")
    config = serve_tracing_config()
    assert config is not None and config["enabled"] and config["sampling_ratio"] == 1.0
    module, name = config["exporter_import_path"].split(":")
    assert module == "bioengine_common.tracing" and name == "serve_span_processors"
    (processor,) = serve_span_processors()
    processor.shutdown()


def test_log_lines_of_a_ray_worker_carry_the_trace_id_once_and_only_inside_a_span():
    import io
    import logging

    from opentelemetry.sdk.trace import TracerProvider

    from bioengine_common._logging import trace_ids_in_process_logs

    root = logging.getLogger()
    streams = [io.StringIO(), io.StringIO()]
    handlers = [logging.StreamHandler(stream) for stream in streams]  # as Ray's worker sets up
    for handler in handlers:
        root.addHandler(handler)
    try:
        trace_ids_in_process_logs()
        trace_ids_in_process_logs()  # idempotent: one filter per handler
        assert all(len(h.filters) == 1 for h in handlers)
        user_logger = logging.getLogger("user.code")
        user_logger.warning("outside %s", "a span")
        tracer = TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("run_code.task") as span:
            user_logger.warning("inside %s", "the span")
            trace_id = f"{span.get_span_context().trace_id:032x}"
    finally:
        for handler in handlers:
            root.removeHandler(handler)
    for stream in streams:
        lines = stream.getvalue().splitlines()
        assert lines == ["outside a span", f"inside the span [trace={trace_id}]"]
