"""``bioengine-worker``: the whole BioEngine worker in one command.

Without ``--server-url`` it starts an embedded Hypha server (plus a SeaweedFS S3 store) on
loopback, mints a token per service, starts the four services as separate processes (first:
they start beside the server and wait for it),
restarts any that crash (the server and the store too, on the same ports with the same state),
prints one line per start-up step, then how to reach the worker once its gateway says it is ready
(``--no-wait``: as soon as the gateway is registered), and stops everything on Ctrl-C.
With ``--server-url``, ``--workspace`` and ``--token`` it uses that server instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bioengine_common import (
    SERVICES_USER,
    ServiceUnavailable,
    connect,
    free_port,
    load_settings,
    token_claims,
    within,
)
from bioengine_common.cluster_options import CLUSTER_OPTIONS, ClusterOptions
from bioengine_common.local_stack import EmbeddedHypha, port_free

from ._supervisor import Dependency, ManagedProcess, Supervisor

#: The banner's last line: the worker is ready (tests and scripts wait for it).
READY_LINE = "Press Ctrl-C to stop."

CONNECTION_FILE = "worker.json"
#: The services' logs, under the workspace dir: ``<name>.log`` and ``<name>.console.log``.
LOGS_DIR = "logs"
_PER_PROCESS_VARIABLES = {"BIOENGINE_CLIENT_ID", "BIOENGINE_LOG_FILE", "BIOENGINE_TOKEN"}
LOCAL_ADMIN = "bioengine-admin"

#: Launcher flags handed on to bioengine-cluster when set (``--mode`` always is): every cluster
#: option, declared once in :mod:`bioengine_common.cluster_options`.
CLUSTER_FLAGS = tuple(name for name in CLUSTER_OPTIONS if name != "mode")

#: The services in start order; the gateway last (it needs the others to be useful).
SERVICES: tuple[tuple[str, str], ...] = (
    ("cluster", "bioengine_cluster"),
    ("apps", "bioengine_apps"),
    ("datasets", "bioengine_datasets"),
    ("gateway", "bioengine_gateway"),
)
#: The Hypha service id each of them registers.
SERVICE_IDS = {
    "cluster": "bioengine-cluster",
    "apps": "bioengine-apps",
    "datasets": "bioengine-datasets",
    "gateway": "bioengine-worker",
}
#: Seconds the services wait for the embedded server they start beside: the store and then the
#: server may each take their whole start timeout.
EMBEDDED_START_TIMEOUT_S = 90.0
SERVER_WAIT_S = 2 * EMBEDDED_START_TIMEOUT_S
#: Seconds between two looks at the start-up (registrations, the gateway's status).
STARTUP_POLL_S = 0.25
#: Seconds one of those looks may take (a busy machine), before it counts as "not yet".
STARTUP_CALL_TIMEOUT_S = 10.0


class LauncherOptions(BaseModel):
    """The launcher's own flags (the cluster options follow them in ``--help``)."""

    model_config = ConfigDict(extra="forbid")

    server_url: str | None = Field(
        None, description="Hypha server to use; unset: start an embedded one on loopback."
    )
    workspace: str = Field("bioengine", description="Hypha workspace shared by the services.")
    token: SecretStr | None = Field(
        None,
        description="Token for --server-url with read_write access to the workspace; its owner "
        "is an admin (prefer the BIOENGINE_TOKEN variable).",
    )
    workspace_dir: Path = Field(Path("~/.bioengine"), description="State and logs of this worker.")
    admin_users: list[str] = Field(
        default_factory=list, description="More admin user ids or emails ('*' = everyone)."
    )
    hypha_port: int = Field(
        9527,
        ge=0,
        le=65535,
        description="Port of the embedded Hypha server (0: any free port; a port another program "
        "listens on falls back to a free one, one held only by closing connections does not).",
    )
    s3: bool = Field(True, description="Start the SeaweedFS S3 store so the artifact manager works.")
    admin_token_hours: float = Field(
        168.0, gt=0, description="Validity of the admin token printed for the embedded server."
    )
    wait: bool = Field(
        True,
        description="Print the banner only once the worker is ready (its gateway's get_status() "
        "says is_ready). --no-wait: as soon as the gateway is registered, before the worker is "
        "ready, for scripts that wait themselves (`bioengine status` says what is still starting).",
    )
    ready_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds to wait for the worker to be ready; then stop with which service is "
        "not ready and why.",
    )
    debug: bool = Field(False, description="Log at DEBUG level in every service.")
    startup_applications: str | None = Field(
        None,
        description="Apps to deploy once the worker is ready (handed to bioengine-apps): a JSON "
        'list of deploy_app keyword arguments, e.g. \'[{"artifact_id": "demo-app"}]\'; ${VAR} '
        "in a string is taken from the environment. Failures are logged and shown in "
        "get_status, never fatal.",
    )
    telemetry_exporter: Literal["none", "console", "otlp"] = Field(
        "none", description="OpenTelemetry exporter of every service."
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector base URL for every service's spans (turns the otlp "
        "exporter on; OTEL_EXPORTER_OTLP_ENDPOINT does the same).",
    )
    metrics: bool = Field(
        True,
        description="Give each service a Prometheus endpoint on a free port of --metrics-host, "
        "the same across restarts of the service (the URLs are printed and written to "
        "worker.json).",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the services' Prometheus endpoints listen on (loopback)."
    )


class WorkerSettings(ClusterOptions, LauncherOptions):
    """Flags of ``bioengine-worker`` (each also a ``BIOENGINE_*`` environment variable): its own,
    then the cluster options, handed on to bioengine-cluster when set (same names, defaults and
    descriptions as there)."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _seconds(elapsed: float) -> str:
    """Elapsed seconds with one decimal, rounded up: a stated time is never before the event."""
    return f"{math.ceil(elapsed * 10) / 10:.1f}"


class Progress:
    """One line per start-up step as it completes, with the time since the launcher started
    (its process's creation, so the interpreter's start counts too)."""

    def __init__(self, say: Callable[[str], None] = _say, started: float | None = None):
        self.say = say
        self.started = psutil.Process().create_time() if started is None else started
        self.done: set[str] = set()

    def elapsed(self) -> float:
        return time.time() - self.started

    def step(self, message: str, key: str | None = None) -> None:
        """Print ``message`` (once per ``key`` when given)."""
        if key is not None:
            if key in self.done:
                return
            self.done.add(key)
        self.say(f"[{_seconds(self.elapsed()):>5} s] {message}")


def _gigabytes(value: Any) -> str:
    return f"{float(value or 0) / 1e9:.1f} GB"


def startup_steps(status: dict[str, Any]) -> list[tuple[str, str]]:
    """The start-up steps a gateway status shows as done: ``[(key, line)]`` in start order."""
    steps = []
    ray_cluster = status.get("ray_cluster") or {}
    if ray_cluster.get("head_address") and ray_cluster.get("mode") != "external-cluster":
        steps.append(("ray-head", f"Ray head started at {ray_cluster['head_address']}"))
    if ray_cluster.get("ready"):
        totals = ray_cluster.get("cluster") or {}
        line = (
            f"Ray cluster ready: {len(ray_cluster.get('nodes') or {})} node(s), "
            f"{totals.get('total_cpu', 0):g} CPUs, {totals.get('total_gpu', 0):g} GPUs, "
            f"{_gigabytes(totals.get('total_memory'))} memory"
        )
        slurm = ray_cluster.get("slurm")
        if isinstance(slurm, dict):
            line += f"; SLURM worker jobs: {slurm.get('live_jobs', 0)}, more start on demand"
        steps.append(("ray-cluster", line))
    services = status.get("services") or {}
    for name, what in (("apps", "apps-svc connected to the Ray cluster"), ("datasets", "datasets-svc ready")):
        entry = services.get(name) or {}
        if entry.get("up") and (entry.get("status") or {}).get("ready"):
            steps.append((f"{name}-ready", what))
    return steps


def _write_private(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)


def _listen(host: str) -> socket.socket:
    """A TCP socket listening on a free port of ``host``, for a service to inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, 0), family=family)
    except OSError as exc:
        raise SystemExit(f"error: --metrics-host {host!r}: cannot listen there ({exc})") from exc


class _Lock:
    """One launcher per workspace dir: a PID file, stale when its process is gone."""

    def __init__(self, path: Path):
        self.path = path

    def acquire(self) -> None:
        if self.path.exists():
            with contextlib.suppress(ValueError):
                pid = int(self.path.read_text().strip())
                if pid != os.getpid() and psutil.pid_exists(pid):
                    raise SystemExit(
                        f"error: another bioengine-worker (pid {pid}) uses {self.path.parent.parent}; "
                        "stop it or choose another --workspace-dir"
                    )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(str(os.getpid()))

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Launcher:
    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.dir = settings.workspace_dir.expanduser().resolve()
        self.hypha: EmbeddedHypha | None = None
        self.supervisor: Supervisor | None = None
        self.server_url = settings.server_url or ""
        self.admin_token: str | None = None
        self.admin_users = list(settings.admin_users)
        self._stop = False
        self.progress = Progress()
        #: The gateway's last status seen while starting (what the banner and a timeout report).
        self.last_status: dict[str, Any] | None = None
        self.gateway_id = ""
        #: Service name -> the listening socket of its Prometheus endpoint, bound once by
        #: :meth:`run` and inherited by each start of the service: its port stays the worker's
        #: for its whole life, and no other process can take it between a crash and the restart.
        self.metrics_sockets: dict[str, socket.socket] = {}

    @property
    def metrics_ports(self) -> dict[str, int]:
        """Service name -> port of its Prometheus endpoint (empty with --no-metrics)."""
        return {name: int(sock.getsockname()[1]) for name, sock in self.metrics_sockets.items()}

    def metrics_urls(self) -> dict[str, str]:
        """Where Prometheus scrapes each service (empty with --no-metrics)."""
        host = self.settings.metrics_host
        host = f"[{host}]" if ":" in host else host
        return {name: f"http://{host}:{port}/metrics" for name, port in self.metrics_ports.items()}

    # ---- set-up ---------------------------------------------------------------------------------
    def _plan_embedded(self) -> None:
        """The embedded server's port and admin token; nothing started or installed yet (tokens
        are signed here, so the services can start before the server)."""
        port = self.settings.hypha_port
        if port and not port_free(port):
            new_port = free_port()
            _say(f"Port {port} is taken; the embedded Hypha server uses {new_port} instead")
            port = new_port
        self.hypha = hypha = EmbeddedHypha(
            self.dir, self.settings.workspace, port=port, s3=self.settings.s3, log=_say
        )
        if not hypha.python.exists():
            # The first run installs it (minutes): before the services, which would give up
            # waiting for the server meanwhile.
            hypha.prepare()
        self.server_url = hypha.url
        self.admin_token = hypha.mint(LOCAL_ADMIN, "admin", expires_in=self.settings.admin_token_hours * 3600)
        self.admin_users.append(LOCAL_ADMIN)

    def _start_embedded(self) -> None:
        """Check (or install) the server's environment, start the store, then the server once
        the store serves (the server opens its bucket as it starts). The services, started
        before, connect as soon as the server listens."""
        hypha = self.hypha
        assert hypha is not None
        hypha.prepare()
        self.progress.step(f"embedded server environment ready ({hypha.project_dir})")
        if self.settings.s3:
            hypha.start_store(EMBEDDED_START_TIMEOUT_S)
            self.progress.step(f"S3 store (SeaweedFS) ready on port {hypha.s3_port}")
        hypha.start_server(EMBEDDED_START_TIMEOUT_S)
        self.progress.step(f"Hypha server ready at {hypha.url}")

    def _dependencies(self) -> list[Dependency]:
        """The embedded server and its store, restarted like the services when they die."""
        hypha = self.hypha
        if hypha is None:
            return []
        logs = self.dir / LOGS_DIR
        dependencies = []
        if self.settings.s3:
            store = Dependency(
                "seaweedfs", hypha.spawn_store, hypha.store_ready, log_hint=str(logs / "seaweedfs.log")
            )
            store.adopt(hypha.store_process)
            dependencies.append(store)
        server = Dependency(
            "hypha server", hypha.spawn_server, hypha.server_ready, log_hint=str(logs / "hypha-server.log")
        )
        server.adopt(hypha.server_process)
        dependencies.append(server)
        return dependencies

    def _service_token(self, name: str) -> str:
        if self.hypha is not None:
            # All services run as one user of their own, not the admin token's: the services
            # trust only it to pass a caller on, so the admin's notebook cannot forward callers.
            # apps-svc mints a token per app for the app's own Hypha service: that needs admin.
            return self.hypha.mint(SERVICES_USER, "admin" if name == "apps" else "read_write")
        assert self.settings.token is not None
        return self.settings.token.get_secret_value()

    def _cluster_flags(self) -> list[str]:
        """The cluster options set (by flag, variable or argument) as bioengine-cluster flags; the
        others keep bioengine-cluster's defaults, which are the same."""
        flags = []
        for name in CLUSTER_FLAGS:
            if name not in self.settings.model_fields_set:
                continue
            value = getattr(self.settings, name)
            if isinstance(value, list):
                # A value starting with '-' would read as a flag: sbatch options go as '#SBATCH -...'.
                flags += ["--" + name.replace("_", "-")]
                flags += [f"#SBATCH {v}" if str(v).startswith("-") else str(v) for v in value]
            elif value is not None:
                # One word: a value starting with '-' (--slurm-gpu-flag --gpus={gpus}) stays a value.
                flags.append("--" + name.replace("_", "-") + "=" + str(value))
        return flags

    def _processes(self) -> list[ManagedProcess]:
        common = [
            "--server-url",
            self.server_url,
            "--workspace",
            self.settings.workspace,
            "--workspace-dir",
            str(self.dir),
            "--telemetry-exporter",
            self.settings.telemetry_exporter,
        ]
        if self.hypha is not None:
            common += ["--server-wait", f"{SERVER_WAIT_S:g}"]
        if self.settings.otlp_endpoint:
            common += ["--otlp-endpoint", self.settings.otlp_endpoint]
        if self.admin_users:
            common += ["--admin-users", *self.admin_users]
        if self.settings.debug:
            common.append("--debug")
        processes = []
        for name, module in SERVICES:
            argv = [sys.executable, "-m", module, *common]
            if name == "cluster":
                argv += ["--mode", self.settings.mode, *self._cluster_flags()]
            sock = self.metrics_sockets.get(name)
            if sock is not None:
                argv += [
                    "--metrics-fd",
                    str(sock.fileno()),
                    "--metrics-port",
                    str(sock.getsockname()[1]),
                    "--metrics-host",
                    self.settings.metrics_host,
                ]
            if name == "apps" and self.settings.startup_applications:
                argv += ["--startup-applications", self.settings.startup_applications]

            def environment(name: str = name) -> dict[str, str]:
                # Per-process settings must not be shared: four clients with one id evict each other.
                env = {k: v for k, v in os.environ.items() if k not in _PER_PROCESS_VARIABLES}
                env["BIOENGINE_TOKEN"] = self._service_token(name)
                return env

            processes.append(
                ManagedProcess(
                    name=name,
                    argv=argv,
                    environment=environment,
                    console_log=self.dir / LOGS_DIR / f"{name}.console.log",
                    pass_fds=(sock.fileno(),) if sock is not None else (),
                )
            )
        return processes

    def _not_ready_report(self, registered: set[str]) -> str:
        """Which service is not ready and why, each with its log: from the gateway's status, or
        (before the gateway answers) which services have not registered."""
        logs = self.dir / LOGS_DIR
        lines = []
        reasons = (self.last_status or {}).get("not_ready_reasons")
        if reasons is None:
            reasons = [f"{name}: not registered" for name, _ in SERVICES if name not in registered]
        for reason in reasons:
            name = reason.split(":", 1)[0]
            hint = f" (see {logs / name}.log and {logs / name}.console.log)" if name in SERVICE_IDS else ""
            lines.append(f"  - {reason}{hint}")
        return "\n".join(lines) or f"  (no reason reported; see the logs in {logs})"

    async def _follow_startup(self) -> None:
        """Print each start-up step as it completes; the banner when the gateway says the worker
        is ready (``--no-wait``: when it is registered, then one line when ready).

        Raises ServiceUnavailable with the reasons when the worker is not ready in time."""
        token = self.admin_token or (self.settings.token.get_secret_value() if self.settings.token else None)
        workspace = self.settings.workspace
        server = await connect(self.server_url, workspace=workspace, token=token)
        registered: set[str] = set()
        gateway: Any = None
        announced = False
        deadline = time.monotonic() + self.settings.ready_timeout
        try:
            while True:
                for name, _ in SERVICES:
                    if name in registered:
                        continue
                    try:
                        info = await within(
                            server.get_service_info(f"{workspace}/{SERVICE_IDS[name]}", {"mode": "last"}),
                            STARTUP_CALL_TIMEOUT_S,
                        )
                    except Exception:
                        continue
                    registered.add(name)
                    if name == "gateway":
                        self.gateway_id = str(info["id"])
                    self.progress.step(f"{SERVICE_IDS[name]} registered ({info['id']})")
                status = None
                if "gateway" in registered:
                    try:
                        if gateway is None:
                            gateway = await within(
                                server.get_service(f"{workspace}/bioengine-worker", {"mode": "last"}),
                                STARTUP_CALL_TIMEOUT_S,
                            )
                        status = await within(gateway.get_status(), STARTUP_CALL_TIMEOUT_S)
                    except Exception:
                        gateway = None  # restarted under a new client id: look it up again
                if status is not None:
                    self.last_status = status
                    for key, line in startup_steps(status):
                        self.progress.step(line, key=key)
                    if not announced and (status.get("is_ready") or not self.settings.wait):
                        self._announce(status)
                        announced = True
                    if status.get("is_ready"):
                        if not self.settings.wait:
                            self.progress.step("BioEngine worker ready")
                        return
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(
                        f"the BioEngine worker was not ready within {self.settings.ready_timeout:.0f} s:\n"
                        + self._not_ready_report(registered)
                    )
                await asyncio.sleep(STARTUP_POLL_S)
        finally:
            with contextlib.suppress(Exception):
                await server.disconnect()

    def _announce(self, status: dict[str, Any]) -> None:
        service_id = f"{self.settings.workspace}/bioengine-worker"
        full_id = self.gateway_id
        connection = {
            "server_url": self.server_url,
            "workspace": self.settings.workspace,
            "service_id": service_id,
            "mode": self.settings.mode,
            "pid": os.getpid(),
            "token": self.admin_token,
            "metrics": self.metrics_urls(),
        }
        _write_private(self.dir / CONNECTION_FILE, json.dumps(connection, indent=2))
        elapsed = _seconds(self.progress.elapsed())
        if status.get("is_ready"):
            title = f"BioEngine worker ready in {elapsed} s (mode {self.settings.mode})"
        else:
            title = (
                f"BioEngine worker registered in {elapsed} s, NOT READY yet (mode {self.settings.mode}; "
                "--no-wait: `bioengine status` says what is still starting)"
            )
        lines = [
            "",
            title,
            f"  Hypha server : {self.server_url}" + ("  (embedded)" if self.hypha else ""),
            f"  Workspace    : {self.settings.workspace}",
            f"  Service id   : {service_id}   ({full_id})",
        ]
        if self.admin_token:
            lines.append(
                f"  Admin token  : {self.admin_token}\n"
                f"                 (user '{LOCAL_ADMIN}', valid {self.settings.admin_token_hours:g} h; "
                f"also in {self.dir / CONNECTION_FILE})"
            )
        else:
            user = (
                token_claims(self.settings.token.get_secret_value()).get("sub")
                if self.settings.token
                else None
            )
            lines.append(f"  Admin        : the owner of --token ({user})")
        if self.metrics_ports:
            lines.append(
                "  Metrics      : " + ", ".join(f"{name} {url}" for name, url in self.metrics_urls().items())
            )
        lines += [
            f"  Logs         : {self.dir / 'logs'}",
            *(
                ["  Compute      : no SLURM worker job yet; they start on demand (apps, run_code)"]
                if self.settings.mode == "slurm"
                and not ((status.get("ray_cluster") or {}).get("slurm") or {}).get("live_jobs")
                else []
            ),
            "Check it with: uv run bioengine status"
            + (f" --workspace-dir {self.dir}" if self.dir != Path("~/.bioengine").expanduser() else ""),
            READY_LINE,
        ]
        print("\n".join(lines), flush=True)

    # ---- run ------------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def request_stop() -> None:
            self._stop = True
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, request_stop)
        assert self.supervisor is not None
        startup = asyncio.create_task(self._follow_startup(), name="startup")
        try:
            while not stop.is_set():
                # In a thread: a dependency starting up is probed with blocking HTTP calls.
                if await asyncio.to_thread(self.supervisor.check_all):
                    _say("stop_worker was called")
                    break
                if startup.done():
                    startup.result()  # raises what made the start-up fail
                with contextlib.suppress(TimeoutError):
                    await within(stop.wait(), 0.5)
        finally:
            startup.cancel()
            with contextlib.suppress(BaseException):
                await startup

    def run(self) -> int:
        (self.dir / LOGS_DIR).mkdir(parents=True, exist_ok=True)
        lock = _Lock(self.dir / "run" / "worker.pid")
        lock.acquire()
        code = 0
        try:
            if self.settings.server_url:
                if self.settings.token is None:
                    raise SystemExit("error: --server-url needs --token (or BIOENGINE_TOKEN)")
            else:
                self._plan_embedded()
            if self.settings.metrics:
                self.metrics_sockets = {name: _listen(self.settings.metrics_host) for name, _ in SERVICES}
            # The services start first: they import, and bioengine-cluster starts the Ray head,
            # while the embedded server and store start; each service connects to the server as
            # soon as it listens (--server-wait).
            self.supervisor = Supervisor(self._processes(), log=_say)
            self.supervisor.start_all()
            self.progress.step("started the services: " + ", ".join(name for name, _ in SERVICES))
            if self.hypha is not None:
                self._start_embedded()
                self.supervisor.dependencies = self._dependencies()
            asyncio.run(self._supervise())
        except KeyboardInterrupt:
            pass
        except ServiceUnavailable as exc:
            _say(f"error: {exc}")
            code = 1
        finally:
            _say("Stopping the BioEngine worker...")
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            if self.supervisor is not None:
                self.supervisor.stop_all()
            if self.hypha is not None:
                self.hypha.stop()
            with contextlib.suppress(FileNotFoundError):
                (self.dir / CONNECTION_FILE).unlink()
            for sock in self.metrics_sockets.values():
                sock.close()
            lock.release()
            _say("Stopped.")
        return code


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(
        WorkerSettings,
        argv,
        prog="bioengine-worker",
        description="Run a BioEngine worker: an embedded Hypha server and S3 store (unless "
        "--server-url) and the cluster, apps, datasets and gateway services, all supervised "
        "(restarted when they die, one line printed each time) until Ctrl-C. One line per "
        "start-up step; the banner (URL, service id, admin token) once the worker is ready "
        "(its gateway's get_status() says is_ready), or at once with --no-wait.",
    )
    # hypha-rpc reports every normal disconnect as a warning on stdout, amid the banner.
    logging.getLogger("RPC").setLevel(logging.ERROR)
    sys.exit(Launcher(settings).run())
