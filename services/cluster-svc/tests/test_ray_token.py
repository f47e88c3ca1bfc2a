"""The Ray cluster behind a token, with a real head started by bioengine-cluster: drivers without
the token are refused, the dashboard answers 401, and nothing the Ray workers inherit (so nothing
app code or run_code sees) holds a Hypha token or the Ray token's value."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from bioengine_common.local_stack import HeadOptions, LocalHead, ensure_token_file, short_temp_dir
from bioengine_common.testing import wait_for_service

pytestmark = pytest.mark.integration

HYPHA_SECRET = "hypha-token-value-for-this-test"

ENVIRONMENT = """
import os

def analyze():
    return dict(os.environ)
"""

DRIVER = """
import sys
from bioengine_common import connect_driver
address, token_file = sys.argv[1], sys.argv[2] or None
try:
    connect_driver(address, 60, token_file=token_file)
except Exception as exc:
    print("REFUSED", type(exc).__name__, exc)
    sys.exit(3)
import ray
print("CONNECTED", ray.get(ray.remote(lambda: 42).remote()))
"""


def _driver(address: str, token_file: Path | None) -> subprocess.CompletedProcess[str]:
    # A bare environment: no Ray token of any kind from the test process.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "BIOENGINE_"))}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, address, str(token_file or "")],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def _files_holding(token: str, roots: list[Path], token_file: Path) -> list[str]:
    files = {p for root in roots for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
    return sorted(str(p) for p in files if p.resolve() != token_file and token.encode() in p.read_bytes())


def _get(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_a_head_started_by_the_service_runs_behind_its_token(
    hypha_server, start_service, admin_client, workspace, monkeypatch
):
    # The service holds secrets in its environment (as launched: BIOENGINE_TOKEN; plus HYPHA_TOKEN).
    monkeypatch.setenv("HYPHA_TOKEN", HYPHA_SECRET)
    service = start_service(
        "cluster", hypha_server,
        "--mode", "single-machine", "--head-num-cpus", "1", "--object-store-memory-in-gb", "0.2",
        "--status-interval", "1", "--dashboard", "--client-id", "cluster-tok",
        workspace_dir=workspace,
    )  # fmt: skip
    info = await wait_for_service(admin_client, "cluster-tok:bioengine-cluster", timeout=60)
    proxy = await admin_client.get_service(info["id"])
    deadline = time.monotonic() + 120
    while not (status := await proxy.get_status())["ready"]:
        assert time.monotonic() < deadline, service.console_output()
        await asyncio.sleep(0.5)

    # The token file: made by the service, private, in the workspace dir.
    token_file = (workspace / "ray" / "auth_token").resolve()
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) == 64
    assert status["ray_cluster"]["auth_mode"] == "token"
    connection = await proxy.get_connection_info()
    assert connection["token_file"] == str(token_file)
    assert connection["environment"]["RAY_AUTH_MODE"] == "token"
    assert connection["environment"]["RAY_AUTH_TOKEN_PATH"] == str(token_file)
    assert token not in json.dumps(status) and token not in json.dumps(connection)

    # run_code's task (a Ray worker, like an app replica) inherits no secret, only the path.
    result = await proxy.run_code(code=ENVIRONMENT, timeout=60)
    assert "error" not in result, result
    task_env = result["result"]
    assert task_env["RAY_AUTH_TOKEN_PATH"] == str(token_file) and task_env["RAY_AUTH_MODE"] == "token"
    assert not [name for name in task_env if name.startswith(("BIOENGINE_", "HYPHA_"))]
    assert "RAY_AUTH_TOKEN" not in task_env
    leaked = [name for name, value in task_env.items() if token in value or HYPHA_SECRET in value]
    assert not leaked

    # A driver without the token is refused (with a hint); with the token file it connects.
    address = connection["address"]
    refused = await asyncio.to_thread(_driver, address, None)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "REFUSED ServiceUnavailable" in refused.stdout and "without a Ray token" in refused.stdout
    accepted = await asyncio.to_thread(_driver, address, token_file)
    assert accepted.returncode == 0 and "CONNECTED 42" in accepted.stdout, accepted.stdout + accepted.stderr

    # The dashboard's REST API too: 401 without a token, 403 with a wrong one.
    url = f"{connection['dashboard_url']}/api/cluster_status"
    assert _get(url, None) == 401 and _get(url, "0" * 64) == 403 and _get(url, token) == 200

    # No process of this cluster has the token value on its command line or in its environment,
    # and the head's environment (inherited by every raylet worker) has no Hypha token.
    temp_dir = short_temp_dir(workspace / "ray")
    head_pid = json.loads((temp_dir / "bioengine-head.json").read_text())["pid"]
    ours = [psutil.Process(head_pid), *psutil.Process(head_pid).children(recursive=True)]
    ours += [psutil.Process(service.pid), *psutil.Process(service.pid).children(recursive=True)]
    assert len(ours) > 4
    for process in ours:
        try:
            cmdline, environ = " ".join(process.cmdline()), process.environ()
        except psutil.NoSuchProcess:
            continue
        assert token not in cmdline, process
        assert not [k for k, v in environ.items() if token in v], (process, process.name())
    head_env = psutil.Process(head_pid).environ()
    assert not [k for k in head_env if k.startswith(("BIOENGINE_", "HYPHA_"))], sorted(head_env)
    assert head_env["RAY_AUTH_TOKEN_PATH"] == str(token_file)

    # Nor any log or state file: the service's, Ray's own (logs, session files) — only the
    # token file itself holds it.
    holders = await asyncio.to_thread(_files_holding, token, [workspace, temp_dir], token_file)
    assert not holders


@pytest.fixture
def token_head(tmp_path_factory):
    """A Ray head in token mode that bioengine-cluster did not start (an "external" cluster)."""
    base = tmp_path_factory.mktemp("ext-tok")
    token_file = ensure_token_file(base / "token" / "auth_token")
    head = LocalHead(
        short_temp_dir(base / "ray"),
        HeadOptions(num_cpus=1, object_store_bytes=200 * 1024**2),
        logging.getLogger("test"),
        token_file=token_file,
    )
    state = head.start()
    yield state, token_file
    head.stop()


async def test_external_cluster_mode_connects_with_the_token_file_only(
    hypha_server, start_service, admin_client, token_head, tmp_path
):
    state, token_file = token_head
    common = ["--mode", "external-cluster", "--head-address", state.address, "--status-interval", "1"]
    with_token = start_service(
        "cluster", hypha_server, *common, "--ray-token-file", str(token_file), "--client-id", "ext-tok",
        workspace_dir=tmp_path / "a",
    )  # fmt: skip
    start_service("cluster", hypha_server, *common, "--client-id", "ext-none", workspace_dir=tmp_path / "b")
    proxies = {}
    for client in ("ext-tok", "ext-none"):
        info = await wait_for_service(admin_client, f"{client}:bioengine-cluster", timeout=60)
        proxies[client] = await admin_client.get_service(info["id"])

    deadline = time.monotonic() + 120
    while not (status := await proxies["ext-tok"].get_status())["ready"]:
        assert time.monotonic() < deadline, with_token.console_output()
        await asyncio.sleep(0.5)
    assert status["ray_cluster"]["auth_mode"] == "token"
    connection = await proxies["ext-tok"].get_connection_info()
    assert connection["token_file"] == str(token_file)
    result = await proxies["ext-tok"].run_code(code=ENVIRONMENT, timeout=60)
    assert result["result"]["RAY_AUTH_TOKEN_PATH"] == str(token_file)

    # Without the token file the service stays not ready and says why.
    while "without a Ray token" not in str((none := await proxies["ext-none"].get_status())["ray_cluster"]):
        assert time.monotonic() < deadline + 60, none
        await asyncio.sleep(1)
    assert not none["ready"] and none["ray_cluster"]["auth_mode"] == "disabled"
