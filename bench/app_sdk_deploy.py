"""Deploying a manifest-0.6.0 app (the ``bioengine`` SDK) with a ``pip`` dependency, ours versus
raw Ray Serve. Prints; asserts nothing.

    uv run python bench/app_sdk_deploy.py [--rounds 3]

Starts ``bioengine-worker --mode single-machine`` as a user would and uploads
``apps/demo-app-0.6`` (its ``pip`` dependency: ``humanize``) through the gateway. Then, in one
run, round after round (round 0 warms both paths up: Ray builds the pip environment once and
both reuse it):

- first deploy: ``deploy_app`` of a new application id until a call through the app's own Hypha
  service answers, versus a raw ``serve.run`` of the same class (the SDK's own deployment
  options: CPUs, memory, the same ``runtime_env`` with the same pip requirements and env vars,
  the same files as ``working_dir``) from this process, a Ray driver of the same cluster, until
  a ``DeploymentHandle`` call answers;
- redeploy of a changed kwarg (``greeting``): until a call answers with the new greeting, on
  both paths (the app's service, a handle).

Both submit without waiting for Serve (``serve.run_many`` as the worker's deployer does) and
are timed to the first call the new version answers. The measured rounds deploy code the
cluster has seen in round 0: its pip environment exists and the worker reuses the spec its
discovery task found (a new application id of the same code needs no new discovery).

Last line: ``ratio: <first deploy> <redeploy>`` (medians, ours over raw; goals <= 1.3 and <= 1.2).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _stats import print_latency_table  # bench/_stats.py

from bioengine_app_format import replica_files
from bioengine_common import connect, connect_driver, ray_environment
from bioengine_worker import read_app_folder
from bioengine_worker.testing import WorkerProcess

# Before Ray is imported: under `uv run`, Ray would otherwise ship the repository to every job.
os.environ.update(ray_environment())

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "demo-app-0.6"
ENTRY_MODULE, ENTRY_CLASS = "demo_app", "DemoApp"
SERIES = ("deploy_app first", "serve.run first", "deploy_app redeploy", "serve.run redeploy")


def _replica_copy(tmp: Path) -> Path:
    """The app's files that reach replicas (as apps-svc places them), for the raw path."""
    names = replica_files(p.relative_to(APP).as_posix() for p in APP.rglob("*") if p.is_file())
    code = tmp / "raw-code"
    for name in names:
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(APP / name, code / name)
    return code


class RawServe:
    """The same class deployed with Serve directly, as a Serve user would."""

    def __init__(self, code: Path):
        sys.path.insert(0, str(code))
        from bioengine.composition import introspect_app

        module = __import__(ENTRY_MODULE)
        self.cls = getattr(module, ENTRY_CLASS)
        deployment = introspect_app(self.cls)["deployments"][f"{ENTRY_MODULE}:{ENTRY_CLASS}"]
        options = dict(deployment["ray_actor_options"])
        runtime_env = dict(options.get("runtime_env") or {})
        # As the platform gives it to Ray (app06._actor_options): the same pip environment.
        runtime_env["pip"] = {"packages": list(runtime_env.get("pip") or []), "pip_check": False}
        runtime_env["working_dir"] = f"local://{code}"
        options["runtime_env"] = runtime_env
        self.options = {
            "name": ENTRY_CLASS,
            "ray_actor_options": options,
            "max_ongoing_requests": deployment["max_ongoing_requests"],
            **deployment.get("serve_options", {}),
        }

    def deploy(self, name: str, greeting: str) -> float:
        """Seconds from submitting the app to Serve until a handle call answers with ``greeting``
        (submitted without waiting, as the worker submits: both paths are timed to the same
        point, the first call that the new version answers)."""
        from ray import serve

        t0 = time.perf_counter()
        app = serve.deployment(self.cls, **self.options).bind(greeting=greeting)
        serve.run_many(
            [serve.RunTarget(app, name=name, route_prefix=None)],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                handle = serve.get_deployment_handle(ENTRY_CLASS, app_name=name)
                if handle.greet.remote("bench").result(timeout_s=60) == f"{greeting}, bench!":
                    return time.perf_counter() - t0
            except Exception:  # not deployed yet
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{name} did not greet with {greeting!r}")


async def _until_greeting(server: Any, worker: Any, app_id: str, greeting: str, app: Any = None) -> Any:
    """Poll the app through its own Hypha service (``app``, or found through get_app_status once
    the app runs) until it greets with ``greeting``; return the service."""
    deadline = time.monotonic() + 300
    while True:
        try:
            if app is None:
                status = (await worker.get_app_status(application_ids=[app_id], logs_tail=0))[app_id]
                if status["status"] in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise RuntimeError(f"{app_id}: {status.get('reason') or status['message']}")
                service_id = (status.get("service_ids") or [{}])[0].get("websocket_service_id")
                if status["status"] == "RUNNING" and service_id:
                    app = await server.get_service(service_id)
            if app is not None and await app.greet(name="bench") == f"{greeting}, bench!":
                return app
        except RuntimeError:
            raise
        except Exception:  # the service is being (re)registered
            app = None
        if time.monotonic() > deadline:
            raise TimeoutError(f"{app_id} did not greet with {greeting!r} within 300 s")
        await asyncio.sleep(0.05)


async def run(connection: dict, rounds: int, tmp: Path) -> dict[str, list[float]]:
    from ray import serve

    server = await connect(
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
        artifact_id = await worker.upload_app(files=read_app_folder(APP))
        raw = RawServe(_replica_copy(tmp))

        samples: dict[str, list[float]] = {name: [] for name in SERIES}
        for i in range(rounds + 1):
            app_id = f"bench-{i}"
            t0 = time.perf_counter()
            await worker.deploy_app(
                artifact_id=artifact_id,
                application_id=app_id,
                application_kwargs={ENTRY_CLASS: {"greeting": "Hello"}},
            )
            app = await _until_greeting(server, worker, app_id, "Hello")
            ours_first = time.perf_counter() - t0
            raw_first = await asyncio.to_thread(raw.deploy, f"raw-{i}", "Hello")

            t0 = time.perf_counter()
            await worker.deploy_app(
                artifact_id=artifact_id,
                application_id=app_id,
                application_kwargs={ENTRY_CLASS: {"greeting": "Hi"}},
            )
            await _until_greeting(server, worker, app_id, "Hi", app)
            ours_again = time.perf_counter() - t0
            raw_again = await asyncio.to_thread(raw.deploy, f"raw-{i}", "Hi")

            figures = (ours_first, raw_first, ours_again, raw_again)
            print(
                f"round {i}{' (warm-up)' if i == 0 else ''}: "
                + ", ".join(f"{name} {value:.2f} s" for name, value in zip(SERIES, figures, strict=True)),
                flush=True,
            )
            if i:
                for name, value in zip(SERIES, figures, strict=True):
                    samples[name].append(value * 1000)
            await worker.stop_app(application_id=app_id)
            await asyncio.to_thread(serve.delete, f"raw-{i}")
        return samples
    finally:
        await server.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds after the warm-up (default 3)")
    args = parser.parse_args()
    logging.getLogger("RPC").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="bioengine-bench-") as tmp:
        worker = WorkerProcess(Path(tmp) / "worker", "--hypha-port", "0")
        try:
            worker.wait_ready()
            samples = asyncio.run(run(worker.connection, args.rounds, Path(tmp)))
        finally:
            worker.stop()
    print_latency_table(samples, "deploy (ms)")
    for name, values in samples.items():
        print(f"spread {name}: {min(values) / 1000:.2f}-{max(values) / 1000:.2f} s")

    def ratio(ours: str, raw: str) -> float:
        return statistics.median(samples[ours]) / statistics.median(samples[raw])

    first = ratio("deploy_app first", "serve.run first")
    again = ratio("deploy_app redeploy", "serve.run redeploy")
    print(f"ratio: {first:.2f} {again:.2f}")


if __name__ == "__main__":
    main()
