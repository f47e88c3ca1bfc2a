"""Stable endpoints: an array opened through bioengine-datasets keeps reading across a restart
of the service process (SIGTERM or kill -9), on the same URL, without being opened again.
Real Hypha server, real datasets-svc processes, real zarr client."""

import asyncio
import logging
import os
import signal
import time

import numpy as np
import pytest
import zarr

from bioengine_common.testing import launch_service
from bioengine_datasets_client import open_dataset

pytestmark = pytest.mark.integration

ALICE = "alice@example.org"


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    (root / "cells").mkdir(parents=True)
    (root / "cells" / "manifest.yaml").write_text(f"name: Cells\nauthorized_users: [{ALICE}]\n")
    volume = np.random.default_rng(1).integers(0, 60000, size=(4, 64, 64), dtype="uint16")
    array = zarr.create_array(
        store=root / "cells" / "image.zarr", shape=volume.shape, dtype="uint16", chunks=(1, 32, 32)
    )
    array[:] = volume
    return root


async def _status_of(client, service, timeout=180.0):
    """get_status of the bioengine-datasets that ``service`` (a ServiceProcess) registered:
    the one whose pid is that process's (a killed predecessor may still be listed a moment)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        assert service.alive(), f"datasets-svc exited:\n{service.console_output()[-3000:]}"
        try:
            proxy = await client.get_service("bioengine-datasets", {"mode": "last"})
            status = await proxy.get_status()
            if status["pid"] == service.pid:
                return status
            last = f"pid {status['pid']}"
        except Exception as exc:  # not registered yet, or a stale registration
            last = exc
        await asyncio.sleep(0.5)
    raise TimeoutError(f"datasets-svc (pid {service.pid}) not registered: {last}")


@pytest.mark.parametrize(
    ("how", "client_id"),
    [
        (signal.SIGTERM, "datasets-restart"),  # a fixed --client-id: the same replica again
        (signal.SIGKILL, None),  # the launcher's way: a random client id at every start
    ],
    ids=["SIGTERM-fixed-client-id", "kill-9-random-client-id"],
)
async def test_an_open_array_reads_on_across_a_restart(
    hypha_server, admin_client, data_dir, tmp_path, caplog, how, client_id
):
    caplog.set_level(logging.INFO, logger="bioengine_datasets_client")
    workspace = tmp_path / "worker"
    args = ["--data-dir", str(data_dir), *(["--client-id", client_id] if client_id else [])]
    service = launch_service("datasets", hypha_server, workspace, *args)
    restarted = None
    array = None
    try:
        before = await _status_of(admin_client, service)
        assert before["http_port"]["outcome"] == "new"
        token = hypha_server.mint("alice", "read", email=ALICE)
        # A long retry window: on this shared 2-core machine a restart can be slow, and the
        # point here is that the same store reads on, not how quickly.
        array = await asyncio.to_thread(
            open_dataset, before["http_url"], "cells", "image.zarr", token=token, retry_for=180
        )
        expected = np.asarray(zarr.open_array(data_dir / "cells" / "image.zarr", mode="r")[:])
        assert np.array_equal(await asyncio.to_thread(lambda: array[:]), expected)

        os.kill(service.pid, how)
        code = await asyncio.to_thread(service.process.wait, 60)
        assert code == (0 if how == signal.SIGTERM else -signal.SIGKILL)
        restarted = launch_service("datasets", hypha_server, workspace, *args)
        caplog.clear()
        # Read at once, while the new process is still starting: refused, retried, then read
        # from the new process through the same store and array.
        after_read = await asyncio.to_thread(lambda: array[1:3, 10:60, :])
        assert np.array_equal(after_read, expected[1:3, 10:60, :])
        messages = [r.getMessage() for r in caplog.records]
        assert any("retrying for up to 180 s" in m for m in messages), messages  # it was down
        assert any("answered after" in m for m in messages), messages
        assert np.array_equal(await asyncio.to_thread(lambda: array[:]), expected)

        after = await _status_of(admin_client, restarted)
        assert after["http_url"] == before["http_url"]  # the same URL for every client
        assert after["http_port"]["outcome"] == "kept"
        assert after["http_port"]["file"] == before["http_port"]["file"]
        if client_id is None:  # a new Hypha client, the same slot and port
            assert after["client_id"] != before["client_id"]
            assert after["http_port"]["slot"] == "replica-0"
    finally:
        if array is not None:
            array.store.close()
        for process in (service, restarted):
            if process is not None:
                process.stop()


async def test_replicas_sharing_a_workspace_dir_keep_their_own_urls(
    hypha_server, admin_client, data_dir, tmp_path
):
    workspace = tmp_path / "worker"

    def start(name):
        return launch_service("datasets", hypha_server, workspace, "--data-dir", str(data_dir),
                              "--client-id", name)  # fmt: skip

    async def url_of(name, process):
        deadline = time.monotonic() + 180
        while True:
            assert process.alive(), process.console_output()[-3000:]
            try:
                status = await (await admin_client.get_service(f"{name}:bioengine-datasets")).get_status()
                if status["pid"] == process.pid:
                    return status["http_url"], status["http_port"]["outcome"]
            except Exception:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.5)

    names = ["datasets-r0", "datasets-r1"]
    processes = {name: start(name) for name in names}
    try:
        first = {name: await url_of(name, processes[name]) for name in names}
        assert len({url for url, _ in first.values()}) == 2
        for name in names:
            os.kill(processes[name].pid, signal.SIGKILL)
            await asyncio.to_thread(processes[name].process.wait, 60)
        for name in reversed(names):  # the other way round: each must still get its own port
            processes[name] = start(name)
        for name in names:
            url, outcome = await url_of(name, processes[name])
            assert (url, outcome) == (first[name][0], "kept")
    finally:
        for process in processes.values():
            process.stop()
