"""The RPC metrics of the one wrapper, the caller kinds and the /metrics endpoint (no stack)."""

import os
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bioengine_common import BioEngineService, ConfigurationError, PermissionDenied, ServiceSettings
from bioengine_common.metrics import REGISTRY, ScrapeCollector, caller_kind, gauge, metered, serve_metrics

ADMINS = ["boss@example.org"]
TRUSTED = {"bioengine-services"}


def ctx(user_id, **extra):
    return {"user": {"id": user_id, **extra}, "from": f"ws/{user_id}-client"}


@pytest.mark.parametrize(
    ("context", "caller", "kind"),
    [
        (ctx("bioengine-services"), None, "service"),
        (ctx("bioengine-services"), {"id": "u1", "email": "boss@example.org"}, "admin"),
        (ctx("bioengine-services"), {"id": "u2"}, "user"),
        (ctx("bioengine-services"), {"id": "anonymouz-x", "is_anonymous": True}, "anonymous"),
        (ctx("u3"), None, "user"),
        (ctx("u3", email="boss@example.org"), None, "admin"),
        (ctx("anonymouz-y", is_anonymous=True), None, "anonymous"),
        # A forged caller from someone untrusted: classified as who really called.
        (ctx("u4"), {"id": "x", "email": "boss@example.org"}, "user"),
        (None, None, "anonymous"),
    ],
)
def test_caller_kinds(context, caller, kind):
    assert caller_kind(context, caller, ADMINS, TRUSTED) == kind


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metered_counts_calls_errors_and_latency():
    async def method(x, caller=None, context=None):
        if x < 0:
            raise PermissionDenied("no")
        return x

    wrapped = metered(
        method, "svc-test", "method", lambda context, caller: caller_kind(context, caller, ADMINS, TRUSTED)
    )
    labels = {"service": "svc-test", "method": "method", "caller": "user"}
    calls, count = (
        sample("bioengine_rpc_calls_total", **labels),
        sample("bioengine_rpc_duration_seconds_count", **labels),
    )
    assert await wrapped(2, context=ctx("u1")) == 2
    with pytest.raises(PermissionDenied):
        await wrapped(-1, context=ctx("u1"))
    assert sample("bioengine_rpc_calls_total", **labels) == calls + 2
    assert sample("bioengine_rpc_duration_seconds_count", **labels) == count + 2
    assert sample("bioengine_rpc_errors_total", **labels, error="PermissionDenied") >= 1


def test_the_endpoint_serves_the_registry_with_scrape_time_gauges():
    state = {"n": 1}

    def collect():
        family = gauge("bioengine_test_things", "Things.", ["kind"])
        family.add_metric(["a"], state["n"])
        return [family]

    collector = ScrapeCollector(collect)
    REGISTRY.register(collector)
    server, port = serve_metrics("127.0.0.1", 0)
    try:

        def read():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
            return families["bioengine_test_things"].samples[0].value, families

        first, families = read()
        assert first == 1 and "bioengine_rpc_calls" in families
        state["n"] = 5
        assert read()[0] == 5
    finally:
        server.shutdown()
        server.server_close()
        REGISTRY.unregister(collector)


class _Probe(BioEngineService):
    name = "probe"
    service_id = "bioengine-probe"
    distribution = "bioengine-common"


def _probe(tmp_path, **settings) -> _Probe:
    return _Probe(ServiceSettings(workspace_dir=tmp_path, log_file="off", **settings))


def test_an_inherited_listening_socket_is_served_and_outlives_the_server(tmp_path):
    # bioengine-worker binds the socket once and hands it to each start of a service.
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    for _start in range(2):  # a restart serves the same port again
        inherited = os.dup(listening.fileno())  # what the child process gets
        service = _probe(tmp_path, metrics_fd=inherited, metrics_port=port)
        service._start_metrics()
        try:
            assert service.metrics_url == f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(service.metrics_url, timeout=5) as response:
                assert "bioengine_rpc_calls" in response.read().decode()
        finally:
            service._stop_metrics()
        # Between runs the port stays held: nobody else can bind it.
        with socket.socket() as intruder, pytest.raises(OSError, match="Address already in use"):
            intruder.bind(("127.0.0.1", port))
    listening.close()


def test_a_metrics_fd_that_is_no_listening_socket_is_a_clear_error(tmp_path):
    with open(tmp_path / "file", "w") as handle:
        fd = handle.fileno()
        with pytest.raises(ConfigurationError, match=rf"--metrics-fd {fd} is not an open socket"):
            _probe(tmp_path, metrics_fd=fd)._start_metrics()
    with socket.socket() as unbound:
        with pytest.raises(ConfigurationError, match="is not a listening socket"):
            _probe(tmp_path, metrics_fd=unbound.fileno())._start_metrics()
        assert unbound.fileno() >= 0  # still ours to close
