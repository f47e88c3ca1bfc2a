"""Faults for a running one-command worker, and a prober that watches through them.

Used by the chaos tests and ``bench/recovery.py``: both kill the same processes the same way
(SIGKILL, as a crash would) and read the same record of every probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bioengine_common import connect, error_summary, within
from bioengine_common.local_stack import SERVER_MAIN, HeadState, short_temp_dir

from ._process import WorkerProcess

#: What identifies each process of the worker in its command line.
_MARKERS: dict[str, tuple[str, ...]] = {
    "hypha": (),  # the script SERVER_MAIN, matched by name below
    "store": ("server", "-s3"),
    "cluster": ("-m", "bioengine_cluster"),
    "apps": ("-m", "bioengine_apps"),
    "datasets": ("-m", "bioengine_datasets"),
    "gateway": ("-m", "bioengine_gateway"),
}
ROLES = (*_MARKERS, "ray-head")


def _head_pid(worker: WorkerProcess) -> int | None:
    """The Ray head of cluster-svc (its ``ray start --head --block``): after cluster-svc was
    restarted the adopted head is no longer the launcher's descendant, so read its state file."""
    state = short_temp_dir(worker.dir / "ray") / "bioengine-head.json"
    try:
        pid = HeadState.model_validate_json(state.read_text()).pid
    except (OSError, ValueError):  # no head yet, or a file being written
        return None
    return pid if psutil.pid_exists(pid) else None


def processes(worker: WorkerProcess, role: str) -> list[psutil.Process]:
    """The live processes of ``role`` (one of :data:`ROLES`)."""
    if role == "ray-head":
        pid = _head_pid(worker)
        return [psutil.Process(pid)] if pid else []
    if role not in _MARKERS:
        raise ValueError(f"unknown role '{role}'; one of {', '.join(ROLES)}")
    found = []
    for process in worker.descendants():
        with contextlib.suppress(psutil.Error):
            argv = process.cmdline()
            if role == "store" and not (argv and Path(argv[0]).name == "weed"):
                continue
            if role == "hypha" and not any(Path(arg).name == SERVER_MAIN for arg in argv[1:2]):
                continue
            if all(marker in argv for marker in _MARKERS[role]) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def kill(worker: WorkerProcess, role: str) -> list[int]:
    """SIGKILL every process of ``role``; for the Ray head its whole process group (GCS,
    raylet, dashboard and the workers on the head node), as when the head machine dies."""
    victims = processes(worker, role)
    if not victims:
        raise RuntimeError(f"no running process of '{role}' in this worker")
    for process in victims:
        with contextlib.suppress(ProcessLookupError):
            if role == "ray-head":
                os.killpg(process.pid, signal.SIGKILL)
            else:
                os.kill(process.pid, signal.SIGKILL)
    return [p.pid for p in victims]


@dataclass
class Probe:
    """Calls ``call(server)`` every ``interval`` seconds over its own Hypha connection and
    records each outcome; after a failure it connects afresh, so what it measures is the
    worker's recovery, not hypha-rpc's retry delays in this client."""

    name: str
    worker: WorkerProcess
    call: Callable[[Any], Awaitable[Any]]
    interval: float = 0.5
    timeout: float = 10.0
    #: (monotonic time the call started, ok, error text)
    results: list[tuple[float, bool, str | None]] = field(default_factory=list)

    async def _connect(self) -> Any:
        c = self.worker.connection
        return await connect(c["server_url"], workspace=c["workspace"], token=c["token"], timeout=5)

    async def run(self, stop: asyncio.Event) -> None:
        server = None
        while not stop.is_set():
            started = time.monotonic()
            try:
                if server is None:
                    server = await self._connect()
                await within(self.call(server), self.timeout)
                self.results.append((started, True, None))
            except Exception as exc:  # every failure is a result
                self.results.append((started, False, error_summary(exc)[:300]))
                if server is not None:
                    with contextlib.suppress(Exception):
                        await within(server.disconnect(), 3)
                    server = None
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        if server is not None:
            with contextlib.suppress(Exception):
                await within(server.disconnect(), 3)

    def failures(self, since: float, until: float = float("inf")) -> list[tuple[float, bool, str | None]]:
        return [r for r in self.results if since <= r[0] < until and not r[1]]

    def recovered_after(self, fault_at: float) -> float | None:
        """Seconds from ``fault_at`` to the first success after the last failure since then
        (0.0 if nothing failed); None while it has not succeeded again."""
        after = [r for r in self.results if r[0] >= fault_at]
        last_failure = max((r[0] for r in after if not r[1]), default=None)
        if last_failure is None:
            return 0.0 if after else None
        success = next((r[0] for r in after if r[1] and r[0] > last_failure), None)
        return None if success is None else success - fault_at


# ---- the chaos scenario: one worker, one app, one dataset, faults one after another ----------

#: Each fault: what is done to the worker. "app-update" changes one deployment's kwargs.
FAULTS = ("apps", "datasets", "cluster", "gateway", "hypha", "store", "ray-head", "app-update")


@dataclass
class FaultRecord:
    fault: str
    at: float
    #: Seconds from the fault to the first successful call after the last failure (0: no call
    #: failed); None: never back within the watch.
    app_back_after: float | None = None
    ready_after: float | None = None
    dataset_back_after: float | None = None
    artifacts_back_after: float | None = None
    failed_app_calls: int = 0
    failed_dataset_reads: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class ChaosReport:
    records: list[FaultRecord]
    #: After the last fault: failures seen while watching for late ones.
    late_failures: dict[str, list[tuple[float, bool, str | None]]]
    app_status: dict[str, Any]
    artifacts_before: list[str]
    artifacts_after: list[str]


APP_ID = "chaos-demo"


def make_dataset(workspace_dir: Path) -> tuple[str, str]:
    """A small dataset in the worker's default data directory: (dataset id, array path)."""
    import numpy as np
    import zarr

    folder = workspace_dir / "datasets" / "chaos"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.yaml").write_text("name: Chaos\ndescription: read through faults (admins only)\n")
    volume = np.random.default_rng(0).integers(0, 60000, size=(2, 256, 256), dtype="uint16")
    array = zarr.create_array(
        store=folder / "image.zarr", shape=volume.shape, dtype="uint16", chunks=(1, 64, 64)
    )
    array[:] = volume
    return "chaos", "image.zarr"


async def _app_service_id(worker_api: Any) -> str | None:
    status = (await worker_api.get_app_status(application_ids=[APP_ID], logs_tail=0))[APP_ID]
    ids = status.get("service_ids") or []
    return ids[0].get("websocket_service_id") if ids and status.get("status") == "RUNNING" else None


async def chaos(
    worker: WorkerProcess,
    app_folder: Path,
    dataset: tuple[str, str],
    faults: tuple[str, ...] = FAULTS,
    *,
    settle_timeout: float = 240.0,
    watch_after: float = 90.0,
    log: Callable[[str], None] = print,
) -> ChaosReport:
    """Deploy the app in ``app_folder`` and open ``dataset`` (id, array path), then inject each
    fault in turn while probing the app's Hypha service, the worker's readiness and a read of
    the open array; wait (up to ``settle_timeout``) until all three answer again before the next
    fault; finally watch ``watch_after`` seconds for late failures."""
    from bioengine_datasets_client import open_dataset  # only the chaos scenario needs it

    from ..cli import read_app_folder

    c = worker.connection
    admin = await connect(c["server_url"], workspace=c["workspace"], token=c["token"])
    api = await admin.get_service("bioengine-worker")
    deadline = time.monotonic() + settle_timeout
    while not (await api.get_status())["is_ready"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not become ready")
        await asyncio.sleep(0.5)
    artifact_id = await api.upload_app(files=read_app_folder(app_folder))
    await api.deploy_app(artifact_id=artifact_id, application_id=APP_ID, auto_redeploy=True)
    while await _app_service_id(api) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{APP_ID} did not start: {await api.get_app_status(application_ids=[APP_ID])}"
            )
        await asyncio.sleep(0.5)
    artifacts_before = sorted(await api.list_apps())
    http_url = (await api.get_status())["services"]["datasets"]["status"]["http_url"]
    await admin.disconnect()  # the probes use connections of their own
    array = await asyncio.to_thread(open_dataset, http_url, dataset[0], dataset[1], token=c["token"])
    expected = await asyncio.to_thread(lambda: array[0].sum())

    service_id: dict[str, str | None] = {"id": None}
    answered: dict[str, Any] = {"message": None}

    async def call_app(server: Any) -> None:
        if service_id["id"] is None:
            service_id["id"] = await _app_service_id(await server.get_service("bioengine-worker"))
            if service_id["id"] is None:
                raise RuntimeError(f"{APP_ID} is not RUNNING")
        try:
            result = await (await server.get_service(service_id["id"])).ping()
        except Exception:
            service_id["id"] = None  # look it up again: a redeployed proxy may have a new id
            raise
        if result.get("status") != "ok":
            raise RuntimeError(f"unexpected answer {result}")
        answered["message"] = result.get("message")

    async def ready(server: Any) -> None:
        status = await (await server.get_service("bioengine-worker")).get_status()
        if not status["is_ready"]:
            waiting = sorted(
                name
                for name, entry in status["services"].items()
                if not (entry.get("up") and (entry.get("status") or {}).get("ready"))
            )
            raise RuntimeError(f"not ready: {', '.join(waiting) or 'gateway'}")

    async def artifacts(server: Any) -> None:
        listed = sorted(await (await server.get_service("bioengine-worker")).list_apps())
        if listed != artifacts_before:
            raise RuntimeError(f"artifacts {listed}, expected {artifacts_before}")

    async def read(_: Any) -> None:
        total = await asyncio.to_thread(lambda: array[0].sum())
        if total != expected:
            raise RuntimeError(f"read {total}, expected {expected}")

    probes = {
        "app": Probe("app", worker, call_app, interval=0.25),
        "ready": Probe("ready", worker, ready, interval=0.5),
        # A read blocks while the client retries (up to 15 s) across a restart of datasets-svc:
        # the probe waits longer than that, so a read that rides the restart out is not a failure.
        "dataset": Probe("dataset", worker, read, interval=0.5, timeout=30.0),
        "artifacts": Probe("artifacts", worker, artifacts, interval=1.0),
    }
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stop)) for p in probes.values()]
    records: list[FaultRecord] = []
    try:
        await asyncio.sleep(2)
        for fault in faults:
            at = time.monotonic()
            record = FaultRecord(fault, at)
            greeting = None
            if fault == "app-update":
                greeting = f"updated at {time.time():.0f}"
                updater = await connect(c["server_url"], workspace=c["workspace"], token=c["token"])
                try:
                    await (await updater.get_service("bioengine-worker")).deploy_app(
                        artifact_id=artifact_id, application_id=APP_ID,
                        application_kwargs={"DemoApp": {"greeting": greeting}},
                    )  # fmt: skip
                finally:
                    await updater.disconnect()
                log(f"updated {APP_ID} (DemoApp greeting)")
            else:
                pids = kill(worker, fault)
                log(f"killed {fault} (pid {', '.join(map(str, pids))})")
            await asyncio.sleep(3)  # let the fault show before waiting for the recovery
            while time.monotonic() - at < settle_timeout:
                record.app_back_after = probes["app"].recovered_after(at)
                record.ready_after = probes["ready"].recovered_after(at)
                record.dataset_back_after = probes["dataset"].recovered_after(at)
                record.artifacts_back_after = probes["artifacts"].recovered_after(at)
                backs = (
                    record.app_back_after,
                    record.ready_after,
                    record.dataset_back_after,
                    record.artifacts_back_after,
                )
                updated = greeting is None or answered["message"] == greeting
                if (
                    None not in backs
                    and updated
                    and all(p.results[-1][1] for p in probes.values() if p.results)
                ):
                    break
                await asyncio.sleep(0.5)
            if greeting is not None and answered["message"] != greeting:
                record.errors.append(f"app: the update never took effect (answers '{answered['message']}')")
                record.app_back_after = None
            record.failed_app_calls = len(probes["app"].failures(at))
            record.failed_dataset_reads = len(probes["dataset"].failures(at))
            record.errors = sorted(
                {f"{n}: {e}" for n, p in probes.items() for _, _, e in p.failures(at) if e}
            )[:8]
            log(
                f"{fault}: app back after {record.app_back_after} s ({record.failed_app_calls} failed calls), "
                f"ready after {record.ready_after} s, dataset back after {record.dataset_back_after} s "
                f"({record.failed_dataset_reads} failed reads), artifacts back after {record.artifacts_back_after} s"
            )
            for error in record.errors:
                log(f"    {error}")
            records.append(record)
        watch_from = time.monotonic()
        await asyncio.sleep(watch_after)
        late = {name: p.failures(watch_from) for name, p in probes.items()}
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    admin = await connect(c["server_url"], workspace=c["workspace"], token=c["token"])
    try:
        api = await admin.get_service("bioengine-worker")
        app_status = (await api.get_app_status(application_ids=[APP_ID], logs_tail=0))[APP_ID]
        artifacts_after = sorted(await api.list_apps())
    finally:
        with contextlib.suppress(Exception):
            await admin.disconnect()
        array.store.close()
    return ChaosReport(records, late, app_status, artifacts_before, artifacts_after)
