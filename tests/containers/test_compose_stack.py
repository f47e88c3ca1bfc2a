"""infra/containers/compose.yaml brought up with podman-compose, as the README shows: the worker
gets ready for a client with the admin token the stack made, deploys the demo app, serves a
dataset from its two datasets replicas, and keeps answering (and serving the dataset) when the
replica the gateway used is killed.

One stack for the module (a project of its own, a free port, a datasets folder made here); it is
taken down with its volumes at the end. Time to ready is measured by bench/, not asserted."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypha_rpc import connect_to_server

from bioengine_common.testing import eventually
from bioengine_worker.cli import read_app_folder
from bioengine_worker.testing.faults import make_dataset

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "infra" / "containers" / "compose.yaml"
DEMO_APP = ROOT / "apps" / "demo-app"
IMAGES = [
    f"localhost/bioengine-{name}:latest"
    for name in ("hypha-server", "gateway-svc", "cluster-svc", "apps-svc", "datasets-svc")
]


@dataclass
class Stack:
    project: str
    url: str
    token: str
    dataset: tuple[str, str]
    expected: np.ndarray

    async def connect(self) -> Any:
        return await connect_to_server(
            {"server_url": self.url, "workspace": "bioengine", "token": self.token, "method_timeout": 30}
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _compose(project: str, env: dict[str, str], *args: str, timeout: float = 300) -> str:
    command = shutil.which("podman-compose", path=os.path.dirname(sys.executable)) or "podman-compose"
    done = subprocess.run(
        [command, "-p", project, "-f", str(COMPOSE_FILE), *args],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(
            f"podman-compose {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


def _container_logs(project: str) -> str:
    names = subprocess.run(
        ["podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    out = []
    for name in names:
        logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True, check=False)
        out.append(f"--- {name}\n{(logs.stdout + logs.stderr)[-3000:]}")
    return "\n".join(out)


@pytest.fixture(scope="module")
def stack(podman: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    missing = [image for image in IMAGES if not podman.images.list(name=image)]
    if missing:
        problem = f"images missing: {', '.join(missing)} (build them with infra/containers/build.sh)"
        if os.environ.get("BIOENGINE_REQUIRE_PODMAN") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    # A datasets folder the containers' user (uid 10001) can read.
    made = tmp_path_factory.mktemp("compose")
    dataset = make_dataset(made)
    data_dir = made / "datasets"
    for path in [made, data_dir, *data_dir.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o055 if path.is_dir() else path.stat().st_mode | 0o044)
    import zarr

    expected = zarr.open_array(data_dir / dataset[0] / dataset[1], mode="r")[:]

    project = f"bioengine-test-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    env = {**os.environ, "BIOENGINE_PORT": str(port), "BIOENGINE_DATASETS_DIR": str(data_dir)}
    env.setdefault("CONTAINERS_CONF", str(ROOT / "infra" / "containers" / "containers.conf"))
    try:
        _compose(project, env, "up", "-d")
        secrets = subprocess.run(
            ["podman", "volume", "inspect", f"{project}_secrets", "--format", "{{.Mountpoint}}"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        token = (Path(secrets) / "admin.token").read_text().strip()
        yield Stack(project, f"http://127.0.0.1:{port}", token, dataset, expected)
    except BaseException:
        print(_container_logs(project))
        raise
    finally:
        _compose(project, env, "down", "-v", "-t", "10")


async def _read(url: str, stack: Stack) -> np.ndarray:
    from bioengine_datasets_client import open_dataset

    def read() -> np.ndarray:
        array = open_dataset(url, *stack.dataset, token=stack.token)
        try:
            return np.asarray(array[:])
        finally:
            array.store.close()

    return await asyncio.to_thread(read)


async def test_compose_stack_gets_ready_deploys_the_demo_app_and_serves_a_dataset(stack: Stack):
    # The server needs a few seconds after `up -d` returns.
    server = await eventually(stack.connect, 120, "the Hypha server of the stack")
    try:
        worker = await eventually(lambda: server.get_service("bioengine-worker"), 120, "the gateway")
        status = await eventually(lambda: _ready_status(worker), 240, "the worker ready")
        assert status["worker_mode"] == "single-machine"
        replicas = [
            s for s in await server.list_services("bioengine") if s["id"].endswith(":bioengine-datasets")
        ]
        assert len(replicas) == 2, replicas

        assert stack.dataset[0] in await worker.list_datasets()
        url = status["services"]["datasets"]["status"]["http_url"]
        assert np.array_equal(await _read(url, stack), stack.expected)

        artifact_id = await worker.upload_app(files=read_app_folder(DEMO_APP))
        app_id = await worker.deploy_app(artifact_id=artifact_id, application_id="compose-demo")

        async def app_service() -> str | None:
            app = (await worker.get_app_status(application_ids=[app_id], logs_tail=0))[app_id]
            ids = app.get("service_ids") or []
            return ids[0].get("websocket_service_id") if app.get("status") == "RUNNING" and ids else None

        service_id = await eventually(app_service, 240, "the demo app RUNNING")
        answer = await (await server.get_service(service_id)).ping()
        assert answer["status"] == "ok", answer
    except BaseException:
        print(_container_logs(stack.project))
        raise
    finally:
        await server.disconnect()


async def test_a_killed_datasets_replica_leaves_the_gateway_answering_and_the_dataset_readable(
    stack: Stack, podman: Any
):
    server = await eventually(stack.connect, 120, "the Hypha server of the stack")
    try:
        worker = await eventually(lambda: server.get_service("bioengine-worker"), 120, "the gateway")
        status = await eventually(lambda: _ready_status(worker), 240, "the worker ready")
        url = status["services"]["datasets"]["status"]["http_url"]
        # The replica behind the URL the gateway reports: its log names the URL.
        replicas = podman.containers.list(
            filters={
                "label": [
                    f"com.docker.compose.project={stack.project}",
                    "com.docker.compose.service=datasets",
                ]
            }
        )
        assert len(replicas) == 2, replicas
        serving = [c for c in replicas if f"at {url} " in c.logs().decode(errors="replace")]
        assert len(serving) == 1, (url, [c.name for c in replicas])
        serving[0].kill()

        # The gateway keeps answering, and the dataset reads through the URL it reports.
        failures: list[str] = []

        async def readable() -> bool:
            try:
                current = dict(await worker.get_status())
            except Exception as exc:
                failures.append(repr(exc))
                raise
            http_url = (current["services"]["datasets"].get("status") or {}).get("http_url")
            return bool(http_url) and np.array_equal(await _read(http_url, stack), stack.expected)

        await eventually(readable, 60, "the dataset readable after killing a replica")
        assert not failures, failures
        assert (await worker.list_datasets())[stack.dataset[0]]
    except BaseException:
        print(_container_logs(stack.project))
        raise
    finally:
        await server.disconnect()


async def _ready_status(worker: Any) -> dict[str, Any] | None:
    status = dict(await worker.get_status())
    return status if status["is_ready"] else None
