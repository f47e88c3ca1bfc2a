"""App deployment time and call latency, ours versus raw Ray Serve. Prints; asserts nothing.

    uv run python bench/app_deploy_and_call.py [--rounds 3] [--calls 300]

Starts `bioengine-worker --mode single-machine` as a user would, uploads apps/demo-app through
the gateway, then in one run and interleaved:

- deploy: `deploy_app` (through the gateway) until the app is RUNNING, versus a raw
  `serve.run` of the same deployment class from this process (a Ray driver of the same cluster);
  `serve.run` looks at the status once a second, so the same deploy is also timed submitted
  without waiting and its status read every 0.1 s, as the bench reads `deploy_app`'s; and the
  floor of that path: the same class behind a bare proxy (below), read the same way, which is
  RUNNING once both replicas run and the proxy's Hypha service is registered (the two replicas
  and the registration an app deployed by `deploy_app` needs too);
- call: `ping` through the app's own Hypha service, versus a `DeploymentHandle` call of the
  same method plus a bare Hypha echo (a trivial service registered by this process); and the
  floor of that path: `ping` through a bare proxy (`bench/_bare_proxy.py`: a Serve deployment
  with the proxy's settings and RPC layer that only forwards the call to its handle, in front
  of the same class), which shows how far the app's proxy ends above it.

Last line: `ratio: <deploy ratio> <call ratio>` (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _stats import print_latency_table  # bench/_stats.py

from bioengine_app_runtime._builder import PROXY_ENV
from bioengine_common import connect, connect_driver, ray_environment
from bioengine_worker import read_app_folder
from bioengine_worker.testing import WorkerProcess

# Before Ray is imported: under `uv run`, Ray would otherwise ship the repository to every job.
os.environ.update(ray_environment())

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "apps" / "demo-app"


async def _wait_running(worker, app_id: str) -> None:
    while True:
        status = (await worker.get_app_status(application_ids=[app_id], logs_tail=0))[app_id]
        if status["status"] == "RUNNING":
            return
        if status["status"] in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"{app_id}: {status['message']}")
        await asyncio.sleep(0.1)


def _demo_app() -> Any:
    """The demo app's class as a raw Serve deployment, imported here as any Serve user would."""
    sys.path.insert(0, str(DEMO))
    from demo_app import DemoApp

    return DemoApp.options(
        ray_actor_options={"num_cpus": 0.1, "runtime_env": {"working_dir": f"local://{DEMO}"}}
    ).bind()


#: How often the deploy paths that wait by polling look at the status (ours: get_app_status).
POLL_S = 0.1


def _raw_deploy(name: str, app: Any = None, poll: bool = False) -> float:
    """Seconds to deploy ``app`` (default: the demo app) as Serve app ``name``: by ``serve.run``,
    which looks at the app's status once a second, or with ``poll`` submitted without waiting
    and its status read every POLL_S, as the bench waits for ``deploy_app``."""
    from ray import serve

    app = _demo_app() if app is None else app
    t0 = time.perf_counter()
    if not poll:
        serve.run(app, name=name, route_prefix=None)
        return time.perf_counter() - t0
    serve._run(app, _blocking=False, name=name, route_prefix=None)
    while (status := serve.status().applications[name].status) != "RUNNING":
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"{name}: {serve.status().applications[name].message}")
        time.sleep(POLL_S)
    return time.perf_counter() - t0


def _bare_proxy_app(server_url: str, workspace: str, token: str) -> Any:
    """The demo app behind the bare proxy, as one Serve application."""
    import _bare_proxy  # bench/_bare_proxy.py (imports Ray: after ray_environment() is set)
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(_bare_proxy)  # the replica cannot import bench/
    proxy = _bare_proxy.BareProxy.options(
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": PROXY_ENV}}
    )
    return proxy.bind(_demo_app(), server_url, workspace, token)


def _deploy_bare_proxy(server_url: str, workspace: str, token: str) -> str:
    """Deploy the bare proxy in front of the demo app; the id of its Hypha service."""
    from ray import serve

    app = _bare_proxy_app(server_url, workspace, token)
    handle = serve.run(app, name="bare-proxy", route_prefix=None)
    return str(handle.service_id.remote().result(timeout_s=60))


async def run(connection: dict, rounds: int, calls: int, block: int) -> tuple[dict, dict]:
    from ray import serve

    server = await connect(
        connection["server_url"], workspace=connection["workspace"], token=connection["token"]
    )
    echo_host = await connect(
        connection["server_url"], workspace=connection["workspace"], token=connection["token"]
    )
    try:
        worker = await server.get_service("bioengine-worker")
        while not (await worker.get_status())["is_ready"]:  # the Ray head starts after the services
            await asyncio.sleep(0.5)
        cluster = await server.get_service("bioengine-cluster", {"mode": "random"})
        info = await cluster.get_connection_info()
        await asyncio.to_thread(
            connect_driver, info["address"], 60.0, info["namespace"], info.get("token_file")
        )
        artifact_id = await worker.upload_app(files=read_app_folder(DEMO))
        # The bare proxy's own token: short-lived, for this workspace only (a Serve init argument).
        bare_token = await server.generate_token(
            {"workspace": connection["workspace"], "permission": "read_write", "expires_in": 3600}
        )
        bare_args = (connection["server_url"], connection["workspace"], str(bare_token))

        deploy: dict[str, list[float]] = {
            "deploy_app -> RUNNING": [],
            "raw serve.run": [],
            "raw, polled": [],
            "floor: app + bare proxy, polled": [],
        }
        for i in range(rounds + 1):  # round 0 warms up every path (runtime env, worker pool)
            t0 = time.perf_counter()
            app_id = await worker.deploy_app(artifact_id=artifact_id, application_id=f"bench-{i}")
            await _wait_running(worker, app_id)
            ours = time.perf_counter() - t0
            raw = await asyncio.to_thread(_raw_deploy, f"raw-{i}")
            polled = await asyncio.to_thread(_raw_deploy, f"polled-{i}", None, True)
            floor = await asyncio.to_thread(_raw_deploy, f"floor-{i}", _bare_proxy_app(*bare_args), True)
            if i:
                for name, seconds in zip(deploy, (ours, raw, polled, floor), strict=True):
                    deploy[name].append(seconds * 1000)
            print(
                f"round {i}: deploy_app {ours:.2f} s, serve.run {raw:.2f} s, polled {polled:.2f} s, "
                f"app + bare proxy {floor:.2f} s",
                flush=True,
            )
            for name in (f"polled-{i}", f"floor-{i}"):
                await asyncio.to_thread(serve.delete, name)
            if i < rounds:
                await worker.stop_app(application_id=app_id)
                await asyncio.to_thread(serve.delete, f"raw-{i}")

        status = (await worker.get_app_status(application_ids=[f"bench-{rounds}"], logs_tail=0))[
            f"bench-{rounds}"
        ]
        while not status["service_ids"][0]["websocket_service_id"]:
            await asyncio.sleep(0.2)
            status = (await worker.get_app_status(application_ids=[f"bench-{rounds}"], logs_tail=0))[
                f"bench-{rounds}"
            ]
        app = await server.get_service(status["service_ids"][0]["websocket_service_id"])
        handle = serve.get_deployment_handle("DemoApp", app_name=f"raw-{rounds}")
        await echo_host.register_service(
            {"id": "bench-echo", "config": {"visibility": "protected"}, "echo": lambda x: x}
        )
        echo = await server.get_service(f"{connection['workspace']}/{echo_host.config.client_id}:bench-echo")
        bare_id = await asyncio.to_thread(_deploy_bare_proxy, *bare_args)
        bare = await server.get_service(bare_id)

        async def handle_ping() -> None:
            await handle.ping.remote()

        async def echo_once() -> None:
            await echo.echo("ping")

        async def app_ping() -> None:
            await app.ping()

        async def bare_ping() -> None:
            await bare.ping()

        targets = {
            "app service ping": app_ping,
            "bare proxy ping": bare_ping,
            "handle ping": handle_ping,
            "hypha echo": echo_once,
        }
        for target in targets.values():
            for _ in range(30):
                await target()
        latency: dict[str, list[float]] = {name: [] for name in targets}
        while len(latency["hypha echo"]) < calls:
            for name, target in targets.items():
                for _ in range(min(block, calls - len(latency[name]))):
                    t0 = time.perf_counter()
                    await target()
                    latency[name].append((time.perf_counter() - t0) * 1000)
        await worker.stop_all_apps(timeout_seconds=60)
        await asyncio.to_thread(serve.delete, f"raw-{rounds}")
        await asyncio.to_thread(serve.delete, "bare-proxy")
        return deploy, latency
    finally:
        await echo_host.disconnect()
        await server.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured deploys per path (default 3)")
    parser.add_argument("--calls", type=int, default=300, help="calls per target (default 300)")
    parser.add_argument("--block", type=int, default=50, help="calls per target before switching")
    args = parser.parse_args()
    logging.getLogger("RPC").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="bioengine-bench-") as tmp:
        worker = WorkerProcess(Path(tmp), "--hypha-port", "0")
        try:
            worker.wait_ready()
            deploy, latency = asyncio.run(run(worker.connection, args.rounds, args.calls, args.block))
        finally:
            worker.stop()
    print_latency_table(deploy, "deploy")
    print_latency_table(latency, "call")
    ours, raw, polled, floor = (statistics.median(deploy[name]) for name in deploy)
    deploy_ratio = ours / raw
    print(
        f"deploy: serve.run looks at the status once a second; the same deploy polled every {POLL_S:g} s "
        f"takes {polled / raw:.2f} x serve.run. Floor: the app behind a bare proxy, polled, is "
        f"{floor / raw:.2f} x serve.run; deploy_app ends {(ours - floor) / 1000:.2f} s "
        f"({ours / floor:.2f} x) above it"
    )
    baseline = statistics.median(latency["handle ping"]) + statistics.median(latency["hypha echo"])
    app_p50 = statistics.median(latency["app service ping"])
    bare_p50 = statistics.median(latency["bare proxy ping"])
    call_ratio = app_p50 / baseline
    print(
        f"floor: the bare proxy is {bare_p50 / baseline:.2f} x (handle + echo); the app's proxy is "
        f"{app_p50 - bare_p50:.3f} ms ({app_p50 / bare_p50:.2f} x) above the bare proxy"
    )
    print(f"ratio: {deploy_ratio:.2f} {call_ratio:.2f}")


if __name__ == "__main__":
    main()
