"""single-machine mode: our own Ray heads, side by side, restarted when they die, adopted after a
service restart, stopped by PID without touching anyone else's cluster."""

import asyncio
import json
import logging
import os
import signal
import time

import psutil
import pytest

from bioengine_common.local_stack import HeadOptions, LocalHead, short_temp_dir
from bioengine_common.testing import wait_for_service

pytestmark = pytest.mark.integration


#: How long a service may take to become ready: starting a Ray head on a busy 2-core machine can
#: include one failed connection (cluster-svc gives up after 60 s) and a second head (a CI run of
#: 1e66def saw cluster-a, starting beside cluster-b, not ready after 90 s for this reason).
READY_TIMEOUT = 240.0


async def _wait(proxy, predicate, timeout=READY_TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = await proxy.get_status()
            if predicate(status):
                return status
        except Exception:  # the service may be restarting
            status = None
        assert time.monotonic() < deadline, f"{what} not reached; last status: {status}"
        await asyncio.sleep(0.3)


def _head_state(workspace_dir):
    state_file = short_temp_dir(workspace_dir / "ray") / "bioengine-head.json"
    return json.loads(state_file.read_text())


@pytest.fixture
def worker_dirs(tmp_path_factory):
    dirs = [tmp_path_factory.mktemp("w") for _ in range(2)]
    yield dirs
    # Whatever the test left behind (a failure half-way), no Ray head outlives it.
    for directory in dirs:
        head = LocalHead(short_temp_dir(directory / "ray"), HeadOptions(), logging.getLogger("test"))
        if head.adopt():
            head.stop()


@pytest.mark.timeout(900)  # five waits for a ready head: room for two slow ones (READY_TIMEOUT)
async def test_two_workers_side_by_side_restart_and_adoption(
    hypha_server, worker_dirs, start_service, admin_client
):
    dirs = worker_dirs
    common = ["--object-store-memory-in-gb", "0.2", "--status-interval", "1"]
    a = start_service(
        "cluster",
        hypha_server,
        *common,
        "--mode",
        "single-machine",
        "--head-num-cpus",
        "1",
        "--client-id",
        "cluster-a",
        workspace_dir=dirs[0],
    )
    b = start_service(
        "cluster",
        hypha_server,
        *common,
        "--mode",
        "slurm",
        "--client-id",
        "cluster-b",
        workspace_dir=dirs[1],
    )
    proxies = []
    for client in ("cluster-a", "cluster-b"):
        info = await wait_for_service(admin_client, f"{client}:bioengine-cluster", timeout=60)
        proxies.append(await admin_client.get_service(info["id"]))
    statuses = [await _wait(p, lambda s: s["ready"], what="ready") for p in proxies]
    clusters = [s["ray_cluster"] for s in statuses]
    # single-machine with 1 CPU; slurm mode's head offers no CPU or GPU to tasks by default.
    assert [c["cluster"]["total_cpu"] for c in clusters] == [1, 0]
    assert [c["mode"] for c in clusters] == ["single-machine", "slurm"] and clusters[1]["cluster"][
        "total_gpu"
    ] == 0
    assert set(clusters[0]["nodes"]).isdisjoint(clusters[1]["nodes"])  # neither sees the other's nodes
    assert clusters[0]["head_address"] != clusters[1]["head_address"]
    assert all(isinstance(c["start_time"], float) for c in clusters)
    heads = [_head_state(d) for d in dirs]
    assert heads[0]["ports"]["gcs"] != heads[1]["ports"]["gcs"]
    assert heads[0]["temp_dir"] != heads[1]["temp_dir"]
    # Each head's files (state, sessions, logs) are in its worker's own directory, whatever
    # short path Ray was given: they go when the directory goes.
    for directory in dirs:
        assert json.loads((directory / "ray" / "bioengine-head.json").read_text())["pid"]
        assert (directory / "ray" / "session_latest" / "logs").is_dir()

    # A's head dies: A shows why, starts a new head, and B never notices. A run_code under way
    # on A is answered at once with the loss, not at its timeout (its stream would never end).
    code = "import time\ndef analyze():\n    print('started', flush=True)\n    time.sleep(120)\n"
    printed: list[str] = []
    running = asyncio.ensure_future(proxies[0].run_code(code=code, timeout=300, write_stdout=printed.append))
    deadline = time.monotonic() + 60
    while not printed:
        assert time.monotonic() < deadline and not running.done(), running
        await asyncio.sleep(0.1)
    os.killpg(heads[0]["pid"], signal.SIGKILL)
    lost = await asyncio.wait_for(running, 30)
    assert "The Ray cluster was lost while the code ran (Ray head down" in lost["error"], lost
    assert lost["stdout"] == "started\n" and "result" not in lost
    down = await _wait(proxies[0], lambda s: not s["ready"], timeout=20, what="head loss noticed")
    assert "Ray head down" in down["ray_cluster"]["error"]
    (run,) = [r for r in down["run_code"]["recent"] if "lost" in (r.get("reason") or "")]
    assert run["state"] == "error", run
    back = await _wait(proxies[0], lambda s: s["ready"], what="head restarted")
    assert _head_state(dirs[0])["pid"] != heads[0]["pid"]
    assert set(back["ray_cluster"]["nodes"]).isdisjoint(clusters[0]["nodes"])
    b_now = await proxies[1].get_status()
    assert b_now["ready"] and set(b_now["ray_cluster"]["nodes"]) == set(clusters[1]["nodes"])

    # The service process of B dies; a new one adopts B's head instead of starting another.
    os.kill(b.pid, signal.SIGKILL)
    b.process.wait(10)
    start_service(
        "cluster",
        hypha_server,
        *common,
        "--mode",
        "slurm",
        "--client-id",
        "cluster-b2",
        workspace_dir=dirs[1],
    )
    info = await wait_for_service(admin_client, "cluster-b2:bioengine-cluster", timeout=60)
    adopted = await _wait(await admin_client.get_service(info["id"]), lambda s: s["ready"], what="adopted")
    assert _head_state(dirs[1])["pid"] == heads[1]["pid"]
    assert set(adopted["ray_cluster"]["nodes"]) == set(clusters[1]["nodes"])

    # Stopping A stops A's cluster only.
    a_head = _head_state(dirs[0])
    os.kill(a.pid, signal.SIGTERM)
    assert a.process.wait(60) == 0
    assert (
        not psutil.pid_exists(a_head["pid"]) or psutil.Process(a_head["pid"]).status() == psutil.STATUS_ZOMBIE
    )
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if a_head["temp_dir"] in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftovers, [p.info["cmdline"][:3] for p in leftovers]
    assert psutil.pid_exists(heads[1]["pid"])
    assert (await _wait(await admin_client.get_service(info["id"]), lambda s: s["ready"]))["ready"]
