"""The app sandbox: code running in the Ray cluster (app replicas, run_code) cannot read the
worker's files or its service processes, and cannot take the covers off.

An attacker's view: ``PROBE`` runs as run_code (a Ray task, exactly where app code runs) and
tries every way to the worker's secrets it knows of.
"""

import asyncio
import json
import logging
import subprocess
import sys
import time

import pytest

from bioengine_common.local_stack import HeadOptions, LocalHead, Sandbox, sandbox_unavailable, short_temp_dir
from bioengine_common.testing import wait_for_service

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sandbox_unavailable() is not None, reason=f"no sandbox here: {sandbox_unavailable()}"),
]

SECRET = "jwt-secret-that-must-not-leak"
PROBE = """
import os, subprocess

def analyze(paths, marker):
    out = {}
    for path in paths:
        try:
            with open(path) as handle:
                out[path] = handle.read()
        except OSError as exc:
            out[path] = type(exc).__name__
    environ_hits = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if marker.encode() in handle.read():
                    environ_hits.append(pid)
        except OSError:
            pass
    out["environ_hits"] = environ_hits
    out["processes"] = len([p for p in os.listdir("/proc") if p.isdigit()])
    hidden = os.path.dirname(paths[0])
    umount = subprocess.run(["umount", "-l", hidden], capture_output=True, text=True)
    out["umount_rc"] = umount.returncode
    try:
        with open(paths[0]) as handle:
            out["after_umount"] = handle.read()
    except OSError as exc:
        out["after_umount"] = type(exc).__name__
    # The working dir of the sandbox's first process (ray start), which every Ray process
    # inherits unless Ray moves it: a dir under a cover would let "../" reach what is hidden.
    out["cwd"] = os.readlink("/proc/1/cwd")
    out["climb"] = sorted(os.listdir("/proc/1/cwd/.."))
    return out
"""


# A driver of its own (as the services are): probes as a Ray task, prints [probe answer, a kept file].
DRIVER = """
import json, sys
from bioengine_common import connect_driver
address, probe, arguments, kept = sys.argv[1:]
connect_driver(address, 120, "sandbox-test")
import ray
namespace = {}
exec(probe, namespace)
seen = ray.get(ray.remote(num_cpus=0)(namespace["analyze"]).remote(*json.loads(arguments)), timeout=120)
read = ray.remote(num_cpus=0)(lambda path: open(path).read())
print(json.dumps([seen, ray.get(read.remote(kept), timeout=60)]))
"""


@pytest.fixture
def workspace(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sbx")
    yield directory
    head = LocalHead(
        short_temp_dir(directory / "ray"),
        HeadOptions(),
        logging.getLogger("test"),
        token_file=directory / "ray" / "auth_token" if (directory / "ray" / "auth_token").exists() else None,
    )
    if head.adopt():
        head.stop()


def _secrets(workspace, outside):
    (workspace / "hypha").mkdir()
    (workspace / "hypha" / "jwt_secret").write_text(SECRET)
    (workspace / "worker.json").write_text(json.dumps({"admin_token": SECRET}))
    outside.mkdir()
    (outside / "private.zarr").write_text(SECRET)
    return [
        str(workspace / "hypha" / "jwt_secret"),
        str(workspace / "worker.json"),
        str(outside / "private.zarr"),
    ]


async def test_run_code_sees_neither_the_workspace_dir_nor_the_services(
    hypha_server, start_service, admin_client, workspace, tmp_path, monkeypatch
):
    paths = _secrets(workspace, tmp_path / "data")
    # A secret in the service's environment, as its Hypha token is.
    monkeypatch.setenv("HYPHA_TOKEN", SECRET)
    service = start_service(
        "cluster", hypha_server,
        "--mode", "single-machine", "--head-num-cpus", "1", "--object-store-memory-in-gb", "0.2",
        "--status-interval", "1", "--client-id", "cluster-sbx", "--app-sandbox", "on",
        "--app-sandbox-hide", str(tmp_path / "data"),
        workspace_dir=workspace,
    )  # fmt: skip
    info = await wait_for_service(admin_client, "cluster-sbx:bioengine-cluster", timeout=60)
    proxy = await admin_client.get_service(info["id"])
    deadline = time.monotonic() + 120
    while not (status := await proxy.get_status())["ready"]:
        assert time.monotonic() < deadline, service.console_output()
        await asyncio.sleep(0.5)
    sandbox = status["ray_cluster"]["app_sandbox"]
    assert sandbox == {
        "enabled": True,
        "hidden_paths": sorted([str(tmp_path / "data"), str(workspace.resolve())]),
    }

    result = await proxy.run_code(code=PROBE, args=[paths, SECRET], timeout=120)
    assert "error" not in result, result
    seen = result["result"]
    assert [seen[path] for path in paths] == ["FileNotFoundError"] * 3
    assert seen["environ_hits"] == []  # the service's environment is out of reach
    assert seen["umount_rc"] != 0 and seen["after_umount"] == "FileNotFoundError"
    assert SECRET not in json.dumps(seen)
    # Outside the sandbox the same files are there: the covers are not a deletion.
    assert (workspace / "hypha" / "jwt_secret").read_text() == SECRET


async def test_a_working_dir_inside_a_hidden_path_cannot_climb_out(workspace, tmp_path, monkeypatch):
    paths = _secrets(workspace, tmp_path / "data")
    inside = workspace / "slurm"  # a SLURM job's --chdir is in the workspace dir
    inside.mkdir()
    monkeypatch.chdir(inside)
    temp_dir = short_temp_dir(workspace / "ray")
    apps = workspace / "apps"
    apps.mkdir()
    (apps / "code.py").write_text("visible = True\n")
    head = LocalHead(
        temp_dir,
        HeadOptions(
            num_cpus=1,
            object_store_bytes=200 * 1024**2,
            sandbox=Sandbox(hide=[workspace], keep=[temp_dir, apps]),
        ),
        logging.getLogger("test"),
    )
    state = head.start()
    try:
        answer = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", DRIVER, state.address, PROBE, json.dumps([paths[:2], SECRET]), str(apps / "code.py")],
            capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    finally:
        head.stop()
    assert answer.returncode == 0, answer.stdout + answer.stderr
    seen, kept = json.loads(answer.stdout.strip().splitlines()[-1])
    assert seen["cwd"] == "/" and SECRET not in json.dumps(seen)
    assert not {"hypha", "worker.json", "slurm"} & set(seen["climb"])
    assert [seen[path] for path in paths[:2]] == ["FileNotFoundError"] * 2
    assert kept == "visible = True\n"  # what apps need inside the hidden dir stays
    assert state.hidden_paths == [str(workspace.resolve())]
