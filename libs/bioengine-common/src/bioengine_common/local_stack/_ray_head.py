"""A Ray head of our own: free ports, its own temp dir, started and stopped by PID.

Used by bioengine-cluster (single-machine and slurm modes) and by the test fixtures; it drives
the ``ray`` command of this environment and imports Ray only for its version.

Never ``ray stop``: it kills every Ray cluster on the machine. The head outlives a restart of
bioengine-cluster: its PID and ports are kept in ``<temp dir>/bioengine-head.json`` and a new
service process adopts a head that is still running.

Token authentication (Ray >= 2.60): a head given a token file runs with ``RAY_AUTH_MODE=token``
and ``RAY_AUTH_TOKEN_PATH=<file>``; only the *path* is ever passed on (environment of the head,
drivers, SLURM jobs), never the token itself. The head's environment carries no secrets of the
service that starts it (:func:`scrub_environment`): every Ray worker process inherits it, and
app code runs in those.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel

from .._processes import wait_for_port
from .._ray import check_token_file, ray_environment, scrub_environment
from ..errors import ConfigurationError, ServiceUnavailable
from ._sandbox import Sandbox, sandbox_command

__all__ = [
    "HeadOptions",
    "HeadState",
    "LocalHead",
    "RayPorts",
    "choose_ports",
    "ensure_token_file",
    "short_temp_dir",
    "token_fingerprint",
]

#: What `ray start` prints once Ray's own start-up check passed (its raylet registered with
#: the GCS, within Ray's fixed 30 s); before that a driver may connect to a head that is
#: about to fail.
RUNTIME_STARTED = "Ray runtime started."
#: How much of the end of ``ray-head.log`` is read to say why a head exited.
_LOG_TAIL_BYTES = 64 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: `ray start --block` lists the processes that exited under this line, one per line as
#: "<name> [exit code=<code>]", then dumps their logs' tails (not read: other text).
_EXITED_HEADER = "Some Ray subprocesses exited unexpectedly:"
_PROCESS_EXIT = re.compile(r" -- (\S+) \[exit code=([^\]]+)\]$")
_EXCEPTION = re.compile(r"^[A-Za-z_.]*(Error|Exception): .+")

#: Unix socket paths under the temp dir must stay below 108 bytes; Ray adds up to ~70.
MAX_TEMP_DIR_LENGTH = 36
WORKER_PORT_COUNT = 1000


def ensure_token_file(path: str | Path) -> Path:
    """The token file at ``path``, created with a new random token (mode 0600, parent 0700 when
    created here) if missing; an existing one is kept (an adopted head still matches it)."""
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return check_token_file(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))  # 256 bits, Ray's own format
    return check_token_file(path)


def token_fingerprint(path: str | Path) -> str:
    """A short digest of the token in ``path``: tells two tokens apart without revealing one."""
    digest = hashlib.sha256(Path(path).read_text().strip().encode()).hexdigest()
    return digest[:16]


def short_temp_dir(preferred: Path) -> Path:
    """The temp dir to give Ray for ``preferred``: ``preferred`` itself if short enough for
    Ray's socket paths, else a short alias of it, made here with ``preferred``.

    The alias is the symbolic link ``/tmp/bioengine-ray-<hash of the path>`` -> ``preferred``:
    Ray names its sockets by the short path, and its files (logs, spilled objects, the apps'
    environments, about 1 GB a head) stay in ``preferred`` and go with it. The name can be
    guessed, so an alias that is not ours (another user made it) is refused, never used. A
    directory at the alias owned by us is used as it is: earlier releases put Ray's files there,
    and a head they started is adopted from it.
    """
    preferred = preferred.expanduser().resolve()
    if len(str(preferred)) <= MAX_TEMP_DIR_LENGTH:
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:10]
    alias = Path("/tmp") / f"bioengine-ray-{digest}"
    preferred.mkdir(parents=True, exist_ok=True)
    try:
        alias.symlink_to(preferred)
        return alias
    except FileExistsError:
        pass
    found = alias.lstat()
    advice = f"remove it, or pass a Ray temp dir of at most {MAX_TEMP_DIR_LENGTH} characters"
    if found.st_uid != os.getuid():
        raise ConfigurationError(
            f"{alias}, the short path for Ray's temp dir {preferred}, belongs to another user "
            f"(uid {found.st_uid}); {advice}"
        )
    if stat.S_ISLNK(found.st_mode):
        target = os.readlink(alias)
        if Path(target) != preferred:
            raise ConfigurationError(f"{alias} already links to {target}, not to {preferred}; {advice}")
        return alias
    if stat.S_ISDIR(found.st_mode):
        return alias
    raise ConfigurationError(f"{alias} exists and is neither a directory nor a link; {advice}")


class RayPorts(BaseModel):
    gcs: int
    client_server: int
    dashboard: int
    dashboard_agent_listen: int
    dashboard_agent_grpc: int
    runtime_env_agent: int
    metrics_export: int
    node_manager: int
    object_manager: int
    autoscaler_metrics: int
    dashboard_metrics: int
    serve_http: int
    min_worker: int
    max_worker: int


def _bindable(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("0.0.0.0", port))
    except OSError:
        sock.close()
        return None
    return sock


def choose_ports(rng: random.Random | None = None) -> RayPorts:
    """Distinct free ports for every listener of one head, plus a free worker port range.

    All sockets stay bound until every port is chosen, so no two picks collide; another
    program could still take one before Ray binds it (a short window, retried by the caller).
    """
    rng = rng or random.Random()
    held: list[socket.socket] = []
    try:
        singles: list[int] = []
        for _ in range(12):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("0.0.0.0", 0))
            held.append(sock)
            singles.append(sock.getsockname()[1])
        for _ in range(50):
            base = rng.randrange(20000, 60000 - WORKER_PORT_COUNT)
            block = range(base, base + WORKER_PORT_COUNT)
            if set(block) & set(singles):
                continue
            socks: list[socket.socket] = []
            for port in block:
                bound = _bindable(port)
                if bound is None:  # a port of this block is taken: let the block go, try another
                    break
                socks.append(bound)
            if len(socks) == WORKER_PORT_COUNT:
                held.extend(socks)
                break
            for partial in socks:
                partial.close()
        else:
            raise ServiceUnavailable(f"no free range of {WORKER_PORT_COUNT} worker ports found")
        names = [name for name in RayPorts.model_fields if name not in ("min_worker", "max_worker")]
        return RayPorts(
            **dict(zip(names, singles, strict=True)), min_worker=base, max_worker=base + WORKER_PORT_COUNT - 1
        )
    finally:
        for sock in held:
            sock.close()


class HeadOptions(BaseModel):
    num_cpus: float | None = None
    num_gpus: float | None = None
    memory_bytes: int | None = None
    object_store_bytes: int | None = None
    node_ip: str | None = None
    dashboard: bool = False
    #: Start the head (and so every Ray worker process) in namespaces that hide these paths.
    sandbox: Sandbox | None = None


class HeadState(BaseModel):
    """What is written to ``bioengine-head.json``: enough to adopt or stop the head later."""

    #: The process started: `ray start`, or in a sandbox the `unshare` wrapper whose only child
    #: it is; either leads the head's process group.
    pid: int
    temp_dir: str
    node_ip: str
    ports: RayPorts
    started_at: float
    ray_version: str
    #: "token" or "disabled" (files of older versions have none: they ran disabled).
    auth_mode: str = "disabled"
    #: The token file the head reads (a path), and a digest telling a changed token apart.
    token_file: str | None = None
    token_fingerprint: str | None = None
    #: The paths hidden from the head's processes (None: not sandboxed).
    hidden_paths: list[str] | None = None
    #: Where this head's output begins in ``ray-head.log`` (None: not recorded).
    log_offset: int | None = None

    @property
    def address(self) -> str:
        return f"{self.node_ip}:{self.ports.gcs}"


#: Seconds a running head's GCS may take to answer before adopting gives up on it: a busy
#: machine drops a connection attempt now and then.
ADOPT_WAIT_S = 10.0


def head_failure(log_text: str) -> str | None:
    """Why a ``ray start --head`` exited, from its output: the processes its ``--block`` watch
    saw exit (with their exit codes), else the last exception it raised; None if it says
    neither."""
    lines = [_ANSI.sub("", line).rstrip() for line in log_text.splitlines()]
    exited: list[str] = []
    for index, line in enumerate(lines):
        if line.endswith(_EXITED_HEADER):
            for listed in lines[index + 1 :]:
                if not (match := _PROCESS_EXIT.search(listed)):
                    break
                exited.append(f"{match[1]} (exit code {match[2]})")
    if exited:
        return "Ray processes exited unexpectedly: " + ", ".join(dict.fromkeys(exited))
    errors = [line for line in lines if _EXCEPTION.match(line)]
    return errors[-1][:500] if errors else None


class LocalHead:
    """Start, adopt, watch and stop one ``ray start --head --block`` process."""

    def __init__(
        self,
        temp_dir: Path,
        options: HeadOptions,
        logger: logging.Logger,
        token_file: Path | None = None,
    ):
        """``token_file``: run the head with token authentication, reading the token from this
        file (see :func:`ensure_token_file`); None: authentication disabled (test fixtures)."""
        self.temp_dir = temp_dir
        self.options = options
        self.logger = logger
        self.token_file = check_token_file(token_file) if token_file else None
        self.state: HeadState | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def state_file(self) -> Path:
        return self.temp_dir / "bioengine-head.json"

    def alive(self) -> bool:
        if self.state is None:
            return False
        if self._process is not None:
            return self._process.poll() is None
        return psutil.pid_exists(self.state.pid)

    @property
    def log_file(self) -> Path:
        """The output of every `ray start --head` of this temp dir, appended."""
        return self.temp_dir / "ray-head.log"

    def _log_since(self, offset: int | None) -> str:
        """The head log from ``offset`` (None: unknown), at most its last _LOG_TAIL_BYTES."""
        try:
            with open(self.log_file, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(offset or 0, size - _LOG_TAIL_BYTES, 0))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def exit_reason(self) -> str:
        if self._process is not None and self._process.poll() is not None:
            reason = f"the Ray head process exited with code {self._process.returncode}"
        else:
            reason = "the Ray head process is gone"
        why = head_failure(self._log_since(self.state.log_offset if self.state else None))
        return f"{reason}: {why} (see {self.log_file})" if why else f"{reason} (see {self.log_file})"

    def adopt(self) -> bool:
        """Take over a head a previous service process started, if it still runs."""
        if not self.state_file.exists():
            return False
        try:
            state = HeadState.model_validate_json(self.state_file.read_text())
        except ValueError:
            return False
        try:
            process = psutil.Process(state.pid)
            command = " ".join(process.cmdline())
            # Its command names this head's temp dir: not another process that got the PID.
            running = (
                "ray" in command
                and f"--temp-dir={state.temp_dir}" in command
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            running = False
        if not running:
            return False
        try:
            wait_for_port("127.0.0.1", state.ports.gcs, ADOPT_WAIT_S, pid=state.pid)
        except (TimeoutError, RuntimeError):
            # Ours and running, but not serving: never leave it running beside the head that
            # replaces it (it would hold its CPUs, memory and ports with nobody to stop it).
            self.logger.warning(
                "Stopping the running Ray head (pid %s): its GCS (port %s) did not answer within "
                "%g s; a new head replaces it", state.pid, state.ports.gcs, ADOPT_WAIT_S,
            )  # fmt: skip
            self.state = state
            self.stop()
            return False
        wanted = (
            ("token", str(self.token_file), token_fingerprint(self.token_file))
            if self.token_file
            else ("disabled", None, None)
        )
        wanted_hidden = self._hidden_paths()
        if state.hidden_paths != wanted_hidden:
            self.logger.warning(
                "Stopping the running Ray head (pid %s): it hides %s from app code, this service "
                "asks for %s", state.pid, state.hidden_paths or "nothing", wanted_hidden or "nothing",
            )  # fmt: skip
            self.state = state
            self.stop()
            return False
        if (state.auth_mode, state.token_file, state.token_fingerprint) != wanted:
            # Never keep serving a head whose authentication differs from what is asked for
            # (e.g. one started without a token by an older version, or a replaced token file).
            self.logger.warning(
                "Stopping the running Ray head (pid %s, authentication %s): this service runs "
                "heads with authentication %s%s",
                state.pid, state.auth_mode, wanted[0],
                " and a different token file or token" if state.auth_mode == wanted[0] else "",
            )  # fmt: skip
            self.state = state
            self.stop()
            return False
        self.state = state
        self.logger.info("Adopted the running Ray head (pid %s, GCS %s)", state.pid, state.address)
        return True

    def _hidden_paths(self) -> list[str] | None:
        if self.options.sandbox is None:
            return None
        return [str(path) for path in self.options.sandbox.plan()[0]]

    def start(self, timeout: float = 90.0) -> HeadState:
        from ray import __version__ as ray_version
        from ray.util import get_node_ip_address

        self.temp_dir.mkdir(parents=True, exist_ok=True)
        ports = choose_ports()
        node_ip = self.options.node_ip or get_node_ip_address()
        ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
        if ray is None:
            raise ConfigurationError("the `ray` command is not installed in this environment")
        argv = [
            ray, "start", "--head", "--block", "--disable-usage-stats",
            f"--port={ports.gcs}", f"--ray-client-server-port={ports.client_server}",
            f"--node-manager-port={ports.node_manager}", f"--object-manager-port={ports.object_manager}",
            f"--dashboard-agent-listen-port={ports.dashboard_agent_listen}",
            f"--dashboard-agent-grpc-port={ports.dashboard_agent_grpc}",
            f"--runtime-env-agent-port={ports.runtime_env_agent}",
            f"--metrics-export-port={ports.metrics_export}",
            f"--min-worker-port={ports.min_worker}", f"--max-worker-port={ports.max_worker}",
            f"--temp-dir={self.temp_dir}",
            # Neither is of use here, and each is one more Python process competing for the CPU
            # while the head starts: Ray's autoscaler monitor (no node provider: bioengine-cluster
            # scales SLURM workers itself, from the GCS's demand) and the log monitor (it sends
            # worker output to drivers; every driver of ours runs with log_to_driver off, and
            # logs are read from the files).
            "--no-monitor", "--include-log-monitor=false",
        ]  # fmt: skip
        if self.options.dashboard:
            argv += [
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={ports.dashboard}",
            ]
        else:
            argv.append("--include-dashboard=false")
        if self.options.node_ip:
            argv.append(f"--node-ip-address={self.options.node_ip}")
        if self.options.num_cpus is not None:
            argv.append(f"--num-cpus={self.options.num_cpus:g}")
        if self.options.num_gpus is not None:
            argv.append(f"--num-gpus={self.options.num_gpus:g}")
        if self.options.memory_bytes is not None:
            argv.append(f"--memory={self.options.memory_bytes}")
        if self.options.object_store_bytes is not None:
            argv.append(f"--object-store-memory={self.options.object_store_bytes}")
        env = {
            # Every Ray worker (app replicas, run_code tasks) inherits the raylet's environment.
            **scrub_environment(os.environ),
            **ray_environment(token_file=self.token_file),
            # These two metrics ports move only by environment variable (fixed defaults otherwise).
            "AUTOSCALER_METRIC_PORT": str(ports.autoscaler_metrics),
            "DASHBOARD_METRIC_PORT": str(ports.dashboard_metrics),
        }
        hidden = self._hidden_paths()
        if self.options.sandbox is not None:
            argv = sandbox_command(argv, self.options.sandbox)
        started = time.monotonic()
        log_file = self.log_file
        log_offset = log_file.stat().st_size if log_file.exists() else 0
        # Not tied to our life: the head must survive a restart of this service.
        with open(log_file, "ab") as log:
            self._process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Known and written down at once: a head that does not come up is stopped (stop() needs
        # the state), and a successor of a service killed meanwhile adopts or stops it, never
        # leaves it running unknown.
        self.state = HeadState(
            pid=self._process.pid, temp_dir=str(self.temp_dir), node_ip=node_ip, ports=ports,
            started_at=time.time(), ray_version=ray_version,
            auth_mode="token" if self.token_file else "disabled",
            token_file=str(self.token_file) if self.token_file else None,
            token_fingerprint=token_fingerprint(self.token_file) if self.token_file else None,
            hidden_paths=hidden, log_offset=log_offset,
        )  # fmt: skip
        self.state_file.write_text(self.state.model_dump_json(indent=2))
        try:
            self._wait_up(self._process, log_offset, started, timeout)
        except ServiceUnavailable:
            self.stop()  # removes the state file too
            raise
        self.logger.info(
            "Ray head started in %.1f s at %s (authentication: %s; hidden from app code: %s)",
            time.monotonic() - started, self.state.address,
            f"token from {self.token_file}" if self.token_file else "disabled",
            ", ".join(hidden) if hidden else "nothing (no sandbox)",
        )  # fmt: skip
        return self.state

    def _wait_up(self, process: subprocess.Popen[bytes], offset: int, started: float, timeout: float) -> None:
        """Block until `ray start` says its runtime started (so a driver connects to a head
        whose raylet is registered, not one still starting, which may yet fail); fail at once,
        with the reason it printed, if it exits first."""
        while True:
            if process.poll() is not None:
                why = head_failure(self._log_since(offset))
                raise ServiceUnavailable(
                    f"ray start --head exited with code {process.returncode}"
                    f"{': ' + why if why else ''} (see {self.log_file})"
                )
            if RUNTIME_STARTED in self._log_since(offset):
                return
            if time.monotonic() > started + timeout:
                raise ServiceUnavailable(
                    f"the Ray head did not start within {timeout:.0f} s (see {self.log_file})"
                )
            time.sleep(0.2)

    def _leftovers(self) -> list[psutil.Process]:
        """Processes of this cluster only: their command line names our temp dir or GCS port."""
        if self.state is None:
            return []
        markers = (str(self.temp_dir), f":{self.state.ports.gcs}")
        found = []
        for process in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmdline = " ".join(process.info["cmdline"] or [])
                if any(marker in cmdline for marker in markers) and process.pid != os.getpid():
                    found.append(process)
        return found

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the head (it drains for RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S and stops its
        processes), then SIGKILL whatever of this cluster is left."""
        if self.state is None:
            return
        targets = [self.state.pid]
        if self.state.hidden_paths is not None:
            # In the sandbox, `ray start` is the only child of the `unshare` wrapper (which
            # ignores SIGTERM while it waits): the signal goes to it, PID 1 of the namespace.
            with contextlib.suppress(psutil.Error):
                targets += [child.pid for child in psutil.Process(self.state.pid).children()]
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and psutil.pid_exists(self.state.pid):
            if self._process is not None and self._process.poll() is not None:
                break
            with contextlib.suppress(psutil.Error):
                if psutil.Process(self.state.pid).status() == psutil.STATUS_ZOMBIE:
                    break
            time.sleep(0.2)
        leftovers = self._leftovers()
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(leftovers, timeout=5)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(1)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        self.logger.info("Ray head %s stopped", self.state.address)
        self.state = None
        self._process = None

    def describe(self) -> dict[str, Any]:
        return (
            json.loads(self.state.model_dump_json(exclude={"token_fingerprint", "log_offset"}))
            if self.state
            else {}
        )
