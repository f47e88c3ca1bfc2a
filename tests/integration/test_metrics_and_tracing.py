"""A running worker, seen from outside: every service's Prometheus endpoint (the metrics the
README names, values moving with calls) and one trace per request, received by a real OTLP/HTTP
collector of the test's own (aiohttp, decoding the protobuf with opentelemetry-proto).

One stack for both (a stack costs about half a minute of two shared cores).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from bioengine_common import connect, free_port
from bioengine_worker.cli import read_app_folder
from bioengine_worker.testing import WorkerProcess
from bioengine_worker.testing.faults import make_dataset

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
APP_ID = "traced-demo"


class OtlpReceiver:
    """An OTLP/HTTP trace collector on a loopback port, in a thread of its own (the test's loop
    blocks while the worker starts); keeps every span it receives as a dict."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spans: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _traces(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received = []
        for resource_spans in message.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        {
                            "service": service,
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex() or None,
                        }
                    )
        with self._lock:
            self.spans.extend(received)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.spans)


def _tree_of(spans: list[dict[str, Any]], trace_id: str) -> dict[str, dict[str, Any]]:
    return {s["span_id"]: s for s in spans if s["trace_id"] == trace_id}


def _child(tree: dict[str, dict[str, Any]], parent: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((s for s in tree.values() if s["parent_id"] == parent["span_id"] and s["name"] == name), None)


async def _eventually(check: Any, timeout: float = 60.0, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval)


@pytest.fixture(scope="module")
def receiver():
    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, receiver):
    workspace = tmp_path_factory.mktemp("observed")
    make_dataset(workspace)
    worker = WorkerProcess(
        workspace, "--mode", "single-machine", "--hypha-port", "0", "--otlp-endpoint", receiver.url
    )
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def scrape_text(url: str) -> str:
    """The text a Prometheus server would read (a quick loopback GET)."""
    return httpx.get(url, timeout=10).text


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value; families without samples as
    (name, ()) -> nan, so that their presence shows."""
    text = scrape_text(url)
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        samples.setdefault((family.name, ()), float("nan"))
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def names(samples: dict) -> set[str]:
    return {name for name, _ in samples}


async def test_each_service_exposes_its_metrics_and_they_move_with_calls(stack):
    c = stack.connection
    urls = c["metrics"]
    assert set(urls) == {"cluster", "apps", "datasets", "gateway"}
    assert all(url.startswith("http://127.0.0.1:") for url in urls.values())  # loopback by default
    assert "Metrics      :" in stack.text()

    admin = await connect(c["server_url"], workspace=c["workspace"], token=c["token"])
    anonymous = await connect(c["server_url"])
    try:
        gateway = await admin.get_service("bioengine-worker")
        before = scrape(urls["gateway"])
        for _ in range(3):
            await gateway.get_status()
        public = await anonymous.get_service(f"{c['workspace']}/bioengine-worker")
        with pytest.raises(Exception, match="not authorized"):
            await public.run_code(code="def f():\n    return 1\n", function_name="f")
        after = scrape(urls["gateway"])
        calls = "bioengine_rpc_calls_total"
        service = {"service": "bioengine-worker"}
        assert value(after, calls, **service, method="get_status", caller="admin") >= (
            value(before, calls, **service, method="get_status", caller="admin") + 3
        )
        errors = value(
            after, "bioengine_rpc_errors_total", **service, method="run_code", caller="anonymous",
            error="PermissionDenied",
        )  # fmt: skip
        assert errors >= 1, sorted(k for k in after if k[0] == "bioengine_rpc_errors_total")
        latency = value(
            after, "bioengine_rpc_duration_seconds_count", **service, method="get_status", caller="admin"
        )
        assert latency >= 3
        # The gateway's status refresh reaches each service as "service" callers.
        cluster = scrape(urls["cluster"])
        assert value(cluster, calls, service="bioengine-cluster", method="get_status", caller="service") > 0

        # Ray totals and use, SLURM families (empty in single-machine mode).
        assert value(cluster, "bioengine_ray_resources_total", resource="CPU") > 0
        assert {
            "bioengine_ray_resources_used",
            "bioengine_ray_nodes",
            "bioengine_slurm_jobs",
            "bioengine_slurm_scaling_actions_total",
        } <= names(cluster)
        assert value(cluster, "bioengine_slurm_scaling_actions_total", action="submit") == 0

        # Dataset bytes and requests by status code move with reads over HTTP.
        http_url = (await gateway.get_status())["services"]["datasets"]["status"]["http_url"]
        datasets_before = scrape(urls["datasets"])
        headers = {"Authorization": f"Bearer {c['token']}"}
        async with httpx.AsyncClient(timeout=30) as client:
            ok = await client.get(f"{http_url}/data/chaos/image.zarr/zarr.json", headers=headers)
            assert ok.status_code == 200
            ranged = await client.get(
                f"{http_url}/data/chaos/image.zarr/zarr.json", headers={**headers, "Range": "bytes=0-9"}
            )
            assert ranged.status_code == 206
            missing = await client.get(f"{http_url}/data/chaos/nothing-here", headers=headers)
            assert missing.status_code == 404
        datasets_after = scrape(urls["datasets"])
        requests = "bioengine_dataset_http_requests_total"
        for status in ("200", "206", "404"):
            assert (
                value(datasets_after, requests, status=status)
                >= value(datasets_before, requests, status=status) + 1
            )
        sent = value(datasets_after, "bioengine_dataset_bytes_sent_total") - value(
            datasets_before, "bioengine_dataset_bytes_sent_total"
        )
        assert sent == len(ok.content) + 10
        assert value(datasets_after, "bioengine_datasets") == 1
        # No label value names a person or a dataset.
        for url in urls.values():
            text = scrape_text(url)
            assert "chaos" not in text and "bioengine-admin" not in text and c["token"] not in text
    finally:
        await anonymous.disconnect()
        await admin.disconnect()


async def test_run_code_deploy_app_and_an_app_call_each_form_one_trace(stack, receiver):
    c = stack.connection
    admin = await connect(c["server_url"], workspace=c["workspace"], token=c["token"])
    try:
        gateway = await admin.get_service("bioengine-worker")

        # run_code: gateway -> bioengine-cluster -> the Ray task.
        code = "import logging\n\ndef f(x):\n    logging.getLogger('probe').warning('probe line')\n    return x + 1\n"
        result = await gateway.run_code(code=code, function_name="f", args=[1])
        assert result.get("result") == 2, result

        async def run_code_tree() -> Any:
            spans = receiver.snapshot()
            for root in (s for s in spans if s["name"] == "bioengine-worker.run_code"):
                tree = _tree_of(spans, root["trace_id"])
                service = _child(tree, root, "bioengine-cluster.run_code")
                task = service and _child(tree, service, "run_code.task")
                if task:
                    return root, service, task
            return None

        found = await _eventually(run_code_tree, timeout=60)
        assert found, sorted({(s["service"], s["name"]) for s in receiver.snapshot()})
        root, service, task = found
        assert root["parent_id"] is None and root["service"] == "bioengine-worker"
        assert service["service"] == "bioengine-cluster" and task["service"] == "bioengine-run-code"
        # The trace id is in the service's log line of that call.
        cluster_log = (stack.dir / "logs" / "cluster.log").read_text()
        assert any(
            f"[trace={root['trace_id']}]" in line and "run_code" in line for line in cluster_log.splitlines()
        )
        # ... and in the log line the task wrote inside Ray (the worker's log file).
        cluster = await admin.get_service("bioengine-cluster", {"mode": "random"})
        logs = Path((await cluster.get_connection_info())["temp_dir"]) / "session_latest" / "logs"

        async def probe_lines() -> list[str]:
            return [
                line
                for path in logs.glob("worker-*")
                for line in path.read_text(errors="replace").splitlines()
                if "probe line" in line
            ]

        lines = await _eventually(probe_lines, timeout=30)
        assert lines and all(f"probe line [trace={root['trace_id']}]" in line for line in lines), lines

        # deploy_app: gateway -> bioengine-apps -> the app deployer actor.
        artifact_id = await gateway.upload_app(files=read_app_folder(REPO / "apps" / "demo-app"))
        await gateway.deploy_app(artifact_id=artifact_id, application_id=APP_ID)

        async def deploy_tree() -> Any:
            spans = receiver.snapshot()
            for root in (s for s in spans if s["name"] == "bioengine-worker.deploy_app"):
                tree = _tree_of(spans, root["trace_id"])
                service = _child(tree, root, "bioengine-apps.deploy_app")
                deployer = service and _child(tree, service, "app_deployer.deploy")
                if deployer:
                    return root, service, deployer
            return None

        found = await _eventually(deploy_tree, timeout=60)
        assert found, sorted({(s["service"], s["name"]) for s in receiver.snapshot()})
        root, service, deployer = found
        assert root["parent_id"] is None and deployer["service"] == "bioengine-app-deployer"
        apps_log = (stack.dir / "logs" / "apps.log").read_text()
        assert any(f"[trace={root['trace_id']}]" in line and APP_ID in line for line in apps_log.splitlines())

        # An app call: the proxy's span, and Serve's spans into the entry replica under it.
        async def app_service() -> Any:
            status = (await gateway.get_app_status(application_ids=[APP_ID], logs_tail=0))[APP_ID]
            ids = status.get("service_ids") or []
            if status.get("status") == "RUNNING" and ids and ids[0].get("websocket_service_id"):
                return ids[0]["websocket_service_id"]
            return None

        service_id = await _eventually(app_service, timeout=180, interval=1.0)
        assert service_id, await gateway.get_app_status(application_ids=[APP_ID])
        app = await admin.get_service(service_id)
        assert (await app.ping())["status"] == "ok"

        async def app_tree() -> Any:
            spans = receiver.snapshot()
            for root in (s for s in spans if s["name"] == "app.ping"):
                tree = _tree_of(spans, root["trace_id"])
                for span in tree.values():
                    if not span["name"].startswith("replica_handle_request"):
                        continue
                    chain, current = [span], span
                    while current["parent_id"] in tree:
                        current = tree[current["parent_id"]]
                        chain.append(current)
                    if current is root:
                        return root, chain
            return None

        found = await _eventually(app_tree, timeout=60)
        assert found, sorted({(s["service"], s["name"]) for s in receiver.snapshot()})
        root, chain = found
        assert root["parent_id"] is None
        assert "ping" in chain[0]["name"]  # the entry replica's handling of ping

        # Apps and replicas by state move with the deployment.
        apps_url = c["metrics"]["apps"]

        async def running() -> bool:
            samples = scrape(apps_url)
            return (
                value(samples, "bioengine_apps", state="RUNNING") >= 1
                and value(samples, "bioengine_app_replicas", state="RUNNING") >= 2  # proxy and entry
            )

        assert await _eventually(running, timeout=60), scrape_text(apps_url)
        await gateway.stop_app(application_id=APP_ID)
    finally:
        await admin.disconnect()
