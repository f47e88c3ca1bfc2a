"""pytest plugin of BioEngine: real components as subprocesses, shared by every member's tests.

Loaded automatically (entry point ``pytest11``) wherever bioengine-common is installed.

Fixtures:

- ``hypha_server`` (session): a real Hypha server on a free loopback port with the shared
  workspace created at start-up; ``hypha_server.mint(...)`` makes tokens for it.
- ``service_tokens`` (session): a token per service name, all for the services' own user
  (``SERVICES_USER``, the one user they trust to pass callers on), as the launcher mints them.
- ``hypha_server_factory``: private servers for tests that stop or restart them.
- ``start_service``: start a service module as a subprocess against a server; stopped at the
  end of the test.
- ``admin_client``: an async Hypha connection with an admin token of the shared workspace.
- ``ray_head`` (session): a real Ray head (4 logical CPUs, own ports and temp dir); its
  ``address`` is what drivers and ``--head-address`` use.
- ``cluster_process`` (module): bioengine-cluster in external-cluster mode on the session
  ``ray_head``, stopped after the module.
- ``slurm``: skips the test where no SLURM is up, but FAILS it when ``BIOENGINE_REQUIRE_SLURM=1``
  (CI starts SLURM with ``infra/slurm/setup-slurm.sh``).

A test that uses any of these fixtures must be marked ``integration`` (collection stops
otherwise), so ``pytest -m "not integration"`` is a fast suite that starts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .._hypha import connect
from .._permissions import SERVICES_USER
from .._processes import spawn, stop_process
from .._ray import ray_environment
from ..local_stack import EmbeddedHypha, HeadOptions, HeadState, LocalHead, short_temp_dir

TEST_WORKSPACE = "bioengine-test"
ADMIN_USER = "test-admin"
SERVICE_MODULES = {
    "cluster": ("bioengine_cluster", "bioengine-cluster"),
    "apps": ("bioengine_apps", "bioengine-apps"),
    "datasets": ("bioengine_datasets", "bioengine-datasets"),
    "gateway": ("bioengine_gateway", "bioengine-worker"),
}

#: apps-svc generates a token per app for its Hypha service: only workspace admins may.
SERVICE_PERMISSIONS: dict[str, Any] = {"apps": "admin"}

__all__ = [
    "ADMIN_USER",
    "SERVICE_MODULES",
    "TEST_WORKSPACE",
    "ServiceProcess",
    "admin_client",
    "cluster_process",
    "eventually",
    "hypha_server",
    "hypha_server_factory",
    "launch_service",
    "ray_head",
    "ready_worker",
    "service_tokens",
    "slurm",
    "slurm_problem",
    "start_service",
    "stop_all_apps",
    "wait_for_service",
]


@dataclass
class ServiceProcess:
    """A service running as a child process, with its log directory."""

    name: str
    argv: list[str]
    env: dict[str, str]
    workspace_dir: Path
    process: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> ServiceProcess:
        self.process = spawn(
            self.argv, env=self.env, log_path=self.workspace_dir / "logs" / f"{self.name}.console.log"
        )
        return self

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        return stop_process(self.process, timeout=timeout)

    def console_output(self) -> str:
        path = self.workspace_dir / "logs" / f"{self.name}.console.log"
        return path.read_text(errors="replace") if path.exists() else ""


async def wait_for_service(
    server: Any, service_id: str, timeout: float = 30.0, *, not_client: str | None = None
) -> dict[str, Any]:
    """Poll until ``service_id`` is registered (by a client other than ``not_client``)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            info = await server.get_service_info(service_id, {"mode": "last"})
            if not_client is None or f"/{not_client}:" not in info["id"]:
                return dict(info)
        except Exception as exc:  # not there yet
            last_error = exc
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{service_id} not registered within {timeout:.0f} s (last error: {last_error})")


async def eventually(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``await predicate()`` every second until it returns something truthy (returned);
    errors count as "not yet". AssertionError naming ``what`` and the last answer on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await predicate()
            if last:
                return last
        except Exception as exc:  # not there yet
            last = exc
        await asyncio.sleep(1)
    raise AssertionError(f"{what} not within {timeout:.0f} s (last: {last!r})")


async def ready_worker(admin_client: Any, apps: ServiceProcess, timeout: float = 120.0) -> Any:
    """The gateway of a stack whose apps-svc (``apps``) says it is ready: the gateway's proxy."""
    await wait_for_service(admin_client, "bioengine-apps", timeout=60)
    await wait_for_service(admin_client, "bioengine-worker", timeout=60)
    service = await admin_client.get_service("bioengine-apps")
    deadline = time.monotonic() + timeout
    while not (await service.get_status())["ready"]:
        assert time.monotonic() < deadline, apps.console_output()[-5000:]
        await asyncio.sleep(0.5)
    return await admin_client.get_service("bioengine-worker")


def _new_server(base: Path, *, s3: bool = False) -> EmbeddedHypha:
    server = EmbeddedHypha(base, TEST_WORKSPACE, s3=s3, log=lambda message: None)
    server.start()
    return server


@pytest.fixture(scope="session")
def hypha_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedHypha]:
    # With S3 (SeaweedFS): the artifact manager is what apps are uploaded to.
    server = _new_server(tmp_path_factory.mktemp("hypha"), s3=True)
    yield server
    server.stop()


@pytest.fixture
def hypha_server_factory(tmp_path: Path) -> Iterator[Callable[..., EmbeddedHypha]]:
    servers: list[EmbeddedHypha] = []

    def factory(*, s3: bool = False) -> EmbeddedHypha:
        server = _new_server(tmp_path / f"hypha-{len(servers)}", s3=s3)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def service_tokens(hypha_server: EmbeddedHypha) -> dict[str, str]:
    return {
        name: hypha_server.mint(SERVICES_USER, SERVICE_PERMISSIONS.get(name, "read_write"))
        for name in SERVICE_MODULES
    }


def launch_service(
    name: str,
    server: EmbeddedHypha,
    workspace_dir: Path,
    *extra_args: str,
    token: str | None = None,
    admin_users: Sequence[str] = (ADMIN_USER,),
) -> ServiceProcess:
    """Start service ``name`` ("cluster", "apps", ...) against ``server``; the caller stops it."""
    module, _ = SERVICE_MODULES[name]
    argv = [
        sys.executable, "-m", module, "--server-url", server.url, "--workspace", server.workspace,
        "--workspace-dir", str(workspace_dir),
    ]  # fmt: skip
    if admin_users:
        argv += ["--admin-users", *admin_users]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BIOENGINE_")},
        "BIOENGINE_TOKEN": token or server.mint(SERVICES_USER, SERVICE_PERMISSIONS.get(name, "read_write")),
    }
    return ServiceProcess(name, [*argv, *extra_args], env, workspace_dir).start()


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """``start_service(name, server, *extra_args, token=, admin_users=, workspace_dir=)``; every
    service it started is stopped after the test."""
    started: list[ServiceProcess] = []

    def start(
        name: str,
        server: EmbeddedHypha,
        *extra_args: str,
        token: str | None = None,
        admin_users: Sequence[str] = (ADMIN_USER,),
        workspace_dir: Path | None = None,
    ) -> ServiceProcess:
        service = launch_service(
            name,
            server,
            workspace_dir or tmp_path / "worker",
            *extra_args,
            token=token,
            admin_users=admin_users,
        )
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadState]:
    """A real Ray head for the whole run: 4 logical CPUs, its own free ports and temp dir."""
    os.environ.update(ray_environment())
    base = tmp_path_factory.mktemp("ray")
    head = LocalHead(
        short_temp_dir(base / "ray"),
        HeadOptions(num_cpus=4, num_gpus=0, object_store_bytes=300 * 1024**2),
        logging.getLogger("bioengine.testing"),
    )
    state = head.start()
    yield state
    head.stop()


@pytest.fixture(scope="module")
def cluster_process(
    hypha_server: EmbeddedHypha, ray_head: HeadState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """bioengine-cluster in external-cluster mode on the session Ray head, for one test module."""
    service = launch_service(
        "cluster", hypha_server, tmp_path_factory.mktemp("cluster-ext"),
        "--mode", "external-cluster", "--head-address", ray_head.address, "--status-interval", "1",
    )  # fmt: skip
    yield service
    service.stop()


def stop_all_apps(server: EmbeddedHypha, timeout: float = 60.0) -> None:
    """Test teardown, before a module stops its apps-svc: stop every app it deployed. apps-svc
    leaves its apps running when it stops (a successor adopts them), and on the shared session
    Ray head the next module would find their replicas holding its CPUs. A failure is logged."""

    async def stop() -> None:
        client = await connect(server.url, workspace=server.workspace, token=server.mint(ADMIN_USER, "admin"))
        try:
            apps = await client.get_service("bioengine-apps", {"mode": "last"})
            await asyncio.wait_for(apps.stop_all_apps(timeout_seconds=timeout), timeout + 30)
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()

    # In a thread of its own: a module's teardown may run while pytest's event loop is set.
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pool.submit(asyncio.run, stop()).result(timeout + 60)
        except Exception as exc:
            logging.getLogger("bioengine.testing").warning("Stopping the module's apps failed: %r", exc)


@pytest.fixture
async def admin_client(hypha_server: EmbeddedHypha) -> AsyncIterator[Any]:
    server = await connect(
        hypha_server.url,
        workspace=hypha_server.workspace,
        token=hypha_server.mint(ADMIN_USER, "admin"),
    )
    yield server
    with contextlib.suppress(Exception):
        await server.disconnect()


def slurm_problem() -> str | None:
    """Why no SLURM is usable here (None when `sinfo` shows a node up)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "the SLURM client commands (sinfo, sbatch) are not installed"
    try:
        result = subprocess.run(
            ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if result.returncode != 0:
        return f"sinfo failed: {result.stderr.strip()}"
    states = result.stdout.split()
    # A state may carry flags ("idle+planned" while the scheduler plans a pending job there).
    usable = ("idle", "mixed", "allocated", "completing", "planned")
    if not any(s.rstrip("*~#!%$@^-").split("+")[0] in usable for s in states):
        return f"no SLURM node is up (states: {states})"
    return None


@pytest.fixture(scope="session")
def slurm() -> None:
    """A SLURM to submit to: skip without one, or fail when BIOENGINE_REQUIRE_SLURM=1."""
    problem = slurm_problem()
    if problem is None:
        return
    hint = "; start it with infra/slurm/setup-slurm.sh"
    if os.environ.get("BIOENGINE_REQUIRE_SLURM") == "1":
        pytest.fail(f"BIOENGINE_REQUIRE_SLURM=1 but {problem}{hint}")
    pytest.skip(problem + hint)


#: The fixtures above that start (or need) a real component: a test using one is an integration
#: test, so ``pytest -m "not integration"`` stays a fast suite without servers or daemons.
REAL_COMPONENT_FIXTURES = frozenset(
    {"hypha_server", "hypha_server_factory", "service_tokens", "start_service", "ray_head",
     "cluster_process", "admin_client", "slurm"}
)  # fmt: skip


def unmarked_integration_tests(items: Sequence[pytest.Item]) -> list[str]:
    """Ids of tests that use a real-component fixture but lack the ``integration`` marker."""
    return [
        item.nodeid
        for item in items
        if REAL_COMPONENT_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]


#: Under pytest-xdist (``-n 2``), each test file is one unit of work, run by one worker in its
#: own order, so module fixtures (one stack for a file) start once. The files that submit SLURM
#: jobs (named ``test_slurm_*.py``; collection checks it) form one unit: the single-node SLURM
#: here has 2 CPUs, and two such files at once would wait for each other's jobs. The long units
#: are handed out first (measured with ``--durations``: the SLURM files about 8 minutes, the
#: chaos test 8, the README blocks 3.5), so that both workers end at about the same time.
LONG_UNITS = ("slurm", "tests/integration/test_chaos.py", "tests/docs/test_readmes.py")
SLURM_FILE_PREFIX = "test_slurm"


def xdist_unit(nodeid: str) -> str:
    """The unit of work of a test under xdist: ``slurm`` for the SLURM files, else its file."""
    path = nodeid.split("::")[0]
    return "slurm" if Path(path).name.startswith(SLURM_FILE_PREFIX) else path


def slurm_tests_outside_slurm_files(items: Sequence[pytest.Item]) -> list[str]:
    """Ids of tests that use the ``slurm`` fixture in a file not named ``test_slurm_*.py``."""
    return [
        item.nodeid
        for item in items
        if "slurm" in getattr(item, "fixturenames", ()) and xdist_unit(item.nodeid) != "slurm"
    ]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Hand out whole units (see :func:`xdist_unit`) in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(nodeid)

    return UnitScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run a test that starts a real component without saying so by its marker, or
    one that submits SLURM jobs from a file not named for it; on an xdist worker, put the long
    units first (the controller hands units out in this order)."""
    problems = []
    unmarked = unmarked_integration_tests(items)
    if unmarked:
        problems.append(
            "these tests use a real component (a fixture among "
            f"{', '.join(sorted(REAL_COMPONENT_FIXTURES))}) but are not marked "
            '`pytest.mark.integration`, so `-m "not integration"` would run them:\n  ' + "\n  ".join(unmarked)
        )
    misplaced = slurm_tests_outside_slurm_files(items)
    if misplaced:
        problems.append(
            f"these tests use the slurm fixture in a file not named {SLURM_FILE_PREFIX}_*.py, so "
            "pytest-xdist could run them beside the other SLURM tests:\n  " + "\n  ".join(misplaced)
        )
    if problems:
        raise pytest.UsageError("\n".join(problems))
    if hasattr(config, "workerinput"):  # an xdist worker: only workers collect when distributed

        def rank(item: pytest.Item) -> int:
            unit = xdist_unit(item.nodeid)
            return LONG_UNITS.index(unit) if unit in LONG_UNITS else len(LONG_UNITS)

        items.sort(key=rank)  # stable: each file keeps its own order


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist sends the report to its controller
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Captured output that holds a lone surrogate (the log-escaping tests log one on purpose;
    pytest's own log capture keeps the raw message) as ``\\udXXX``: a pytest-xdist worker could
    not send the report otherwise, and would stop."""
    report.sections = [
        (title, text.encode("utf-8", "backslashreplace").decode("utf-8")) for title, text in report.sections
    ]
