"""The local stack's infrastructure: a Hypha server and a SeaweedFS S3 store on loopback.

Both run from the uv project ``infra/hypha-server`` (its own environment and lock, because
hypha pins an old FastAPI that Ray cannot live with). The JWT secret is kept in the state
directory so that tokens stay valid across server restarts; SeaweedFS's ports are kept there
too, so a restarted store is found again at the URL the server was given.

Each part can be started without waiting (``spawn_server``/``spawn_store`` plus
``server_ready``/``store_ready``) so that a supervisor can restart one while it keeps watching the
rest; ``start``/``start_server`` are the blocking forms.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from .._processes import free_port, spawn, stop_process
from .._tokens import mint_token
from ..errors import ConfigurationError, ServiceUnavailable

__all__ = ["SERVER_MAIN", "EmbeddedHypha", "find_hypha_project", "port_free"]

HYPHA_PROJECT_ENV = "BIOENGINE_HYPHA_PROJECT"
_PROJECT_REL = Path("infra") / "hypha-server"
#: The script of ``infra/hypha-server`` the server runs as: hypha.server on the socket it is given.
SERVER_MAIN = "bioengine_hypha_main.py"


def find_hypha_project() -> Path:
    """Locate ``infra/hypha-server``: ``$BIOENGINE_HYPHA_PROJECT``, else above this file or cwd."""
    if os.environ.get(HYPHA_PROJECT_ENV):
        path = Path(os.environ[HYPHA_PROJECT_ENV]).expanduser().resolve()
        if not (path / "pyproject.toml").exists():
            raise ConfigurationError(f"{HYPHA_PROJECT_ENV}={path} holds no pyproject.toml")
        return path
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if (parent / _PROJECT_REL / "pyproject.toml").exists():
                return parent / _PROJECT_REL
    raise ConfigurationError(
        "No embedded Hypha server environment found (infra/hypha-server of the BioEngine "
        f"repository). Set {HYPHA_PROJECT_ENV}, or pass --server-url to use an existing server."
    )


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on ``host:port`` now.

    The bind test uses SO_REUSEADDR, as the servers themselves do (uvicorn, SeaweedFS): a port
    held only by connections in TIME_WAIT, left by a server that just stopped, counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


#: SeaweedFS's listening ports, in the order of ``_STORE_PORT_NAMES``; the S3 one is the 7th.
_STORE_PORT_NAMES = (
    "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc",
)  # fmt: skip


#: Starts of SeaweedFS, each on new ports, when a port it was given was taken before it bound it.
STORE_START_ATTEMPTS = 3
#: A fatal line of glog, SeaweedFS's logger: ``F1202 22:38:26.052200 volume.go:629 <message>``.
_GLOG_FATAL = re.compile(r"^F\d{4} [\d:.]+ (?:\d+ )?(?P<message>.*)$")


def _port_taken(fatal: str | None) -> bool:
    return fatal is not None and "address already in use" in fatal


#: What the first install of the server's environment costs (uv, empty cache, a fast network).
FIRST_INSTALL_ESTIMATE = "30-60 s"
FIRST_INSTALL_MB = 400


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if not uv:
        raise ConfigurationError("uv is needed to prepare the embedded Hypha server: pip install uv")
    return uv


class EmbeddedHypha:
    """Start, restart and stop a Hypha server (plus SeaweedFS when ``s3``) for one workspace."""

    def __init__(
        self,
        state_dir: Path,
        workspace: str,
        *,
        port: int = 0,
        s3: bool = True,
        project_dir: Path | None = None,
        log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
    ):
        self.state_dir = state_dir.expanduser().resolve()
        self.workspace = workspace
        self.port = port
        self._socket: socket.socket | None = None
        self._reserve()
        self.s3 = s3
        self.project_dir = project_dir or find_hypha_project()
        self.log = log
        self.root_token = secrets.token_hex(32)
        self.jwt_secret = self._load_secret()
        self._store_ports: dict[str, int] | None = None
        self._store_volumes = 0
        self._store_log_start = 0
        self._server: subprocess.Popen[bytes] | None = None
        self._store: subprocess.Popen[bytes] | None = None

    def _reserve(self) -> socket.socket:
        """The server's socket, bound to its port (a free one for 0) and held here from now on.

        Each start of the server gets it (uvicorn listens on it), so no other program can take
        the port between its choice and the server's start, or while the server restarts. It
        is not listening until the server starts: a client that comes early is refused (and
        tries again), not left waiting. Bound with SO_REUSEADDR, as uvicorn binds, so a port left
        in TIME_WAIT by a server that just stopped is bound again. Until the server first
        listens, Linux would let another SO_REUSEADDR socket bind this very port (none other,
        and never a bind to port 0, the way every "free port" is found), so the port is safe
        from other programs choosing free ports."""
        if self._socket is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", self.port))
            except OSError as exc:
                sock.close()
                raise ServiceUnavailable(f"port {self.port} for the Hypha server is taken: {exc}") from exc
            self._socket = sock
            self.port = int(sock.getsockname()[1])
        return self._socket

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def s3_port(self) -> int | None:
        return self._store_ports["s3"] if self._store_ports else None

    @property
    def server_process(self) -> subprocess.Popen[bytes] | None:
        return self._server

    @property
    def store_process(self) -> subprocess.Popen[bytes] | None:
        return self._store

    @property
    def python(self) -> Path:
        return self.project_dir / ".venv" / "bin" / "python"

    def _load_secret(self) -> str:
        path = self.state_dir / "hypha" / "jwt_secret"
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret)
        return secret

    def mint(
        self,
        subject: str,
        permission: Literal["read", "read_write", "admin"] = "read_write",
        *,
        email: str | None = None,
        expires_in: float = 7 * 24 * 3600,
    ) -> str:
        return mint_token(
            self.jwt_secret, subject, self.workspace, permission, email=email, expires_in=expires_in
        )

    def prepare(self) -> None:
        """Install the server's environment from its lock (a no-op when already in place).

        The first install is announced, streams uv's summary lines (the per-package lines are
        left out) and says how long it took; later runs only check the environment, quietly.
        """
        argv = [_uv(), "sync", "--frozen", "--project", str(self.project_dir)]
        if self.python.exists():
            result = subprocess.run([*argv, "--quiet"], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise ServiceUnavailable(f"Preparing {self.project_dir} failed:\n{result.stderr.strip()}")
            return
        self.log(
            "Installing the embedded Hypha server's environment (first run: about "
            f"{FIRST_INSTALL_ESTIMATE} to download ~{FIRST_INSTALL_MB} MB, a second or two when "
            "uv's cache has it)..."
        )
        started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as process:
            assert process.stdout is not None
            output = []
            for line in process.stdout:
                output.append(line.rstrip())
                if line.strip() and not line.startswith((" + ", " - ", " ~ ")):
                    self.log(f"  uv: {line.rstrip()}")
            code = process.wait()
        if code != 0:
            raise ServiceUnavailable(
                f"Installing the embedded Hypha server's environment ({self.project_dir}) failed "
                f"with code {code}:\n" + "\n".join(output[-20:])
            )
        self.log(f"Installed the embedded Hypha server's environment in {time.monotonic() - started:.1f} s")

    def start(self, timeout: float = 90.0) -> None:
        """Start the store (with ``s3``) and the server and wait for both; on failure, stop
        whatever of them was started before raising."""
        self.prepare()
        try:
            if self.s3:
                self.start_store(timeout)
            self.start_server(timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def _store_ports_file(self) -> Path:
        return self.state_dir / "seaweedfs" / "ports.json"

    def _choose_store_ports(self, *, reuse: bool = True) -> dict[str, int]:
        """The ports of the last run when all are free again (and ``reuse``), else new ones
        (remembered)."""
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            saved = json.loads(self._store_ports_file.read_text())
            ports = {name: int(saved[name]) for name in _STORE_PORT_NAMES}
            if reuse and all(port_free(port) for port in ports.values()):
                return ports
        ports = {}
        while len(set(ports.values())) < len(_STORE_PORT_NAMES):
            ports = {name: free_port() for name in _STORE_PORT_NAMES}
        self._store_ports_file.parent.mkdir(parents=True, exist_ok=True)
        self._store_ports_file.write_text(json.dumps(ports, indent=2))
        return ports

    def spawn_store(self) -> subprocess.Popen[bytes]:
        """Start SeaweedFS without waiting; a restart uses the same ports and data directory."""
        data = self.state_dir / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        if self._store_ports is None:
            self._store_ports = self._choose_store_ports()
        ports = self._store_ports
        argv = [
            str(self.python.parent / "weed"),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # One master, so no election to wait for; the default 10 s delayed every restart.
            "-master.electionTimeout=1s",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
        ]
        self._store_volumes = len(list(data.glob("*.dat")))
        log = self._store_log
        self._store_log_start = log.stat().st_size if log.exists() else 0
        self._store = spawn(argv, log_path=log, cwd=data)
        return self._store

    @property
    def _store_log(self) -> Path:
        return self.state_dir / "logs" / "seaweedfs.log"

    def _store_fatal(self) -> str | None:
        """The fatal line SeaweedFS logged in its last start (glog's ``F<date> ...``), if any."""
        with contextlib.suppress(OSError), self._store_log.open("rb") as log:
            log.seek(self._store_log_start)
            lines = log.read().decode("utf-8", "replace").splitlines()
            fatal = [found["message"].strip() for line in lines if (found := _GLOG_FATAL.match(line))]
            return fatal[-1] if fatal else None
        return None

    def store_ready(self) -> bool:
        """True when S3 answers and the volumes on disk are served again.

        SeaweedFS opens its S3 port before the volume server has reported its volumes to the
        master; reading an object in that window fails with 500. So wait until the master's
        topology holds as many volumes as there are volume files in the data directory.
        """
        if self.s3_port is None or self._store_ports is None:
            return False
        try:
            socket.create_connection(("127.0.0.1", self.s3_port), 0.5).close()
            url = f"http://127.0.0.1:{self._store_ports['master']}/dir/status"
            with urllib.request.urlopen(url, timeout=1) as response:
                topology = json.loads(response.read())["Topology"]
        except (OSError, ValueError, KeyError):
            return False
        nodes = [
            node
            for center in topology.get("DataCenters") or []
            for rack in center.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]
        served = sum(int(node.get("Volumes") or 0) for node in nodes)
        return bool(nodes) and served >= self._store_volumes

    def start_store(self, timeout: float = 90.0) -> None:
        """Start SeaweedFS and wait until it serves its volumes.

        Its ports are chosen free, but another program may bind one before SeaweedFS does (a
        Ray head starting beside it binds dozens): then it exits at once, and it is started
        again on new ports, up to :data:`STORE_START_ATTEMPTS` times in all. Only before the
        Hypha server starts: the server is given the S3 port.
        """
        for attempt in range(1, STORE_START_ATTEMPTS + 1):
            self.spawn_store()
            try:
                self.wait_store(timeout)
                return
            except ServiceUnavailable:
                fatal = self._store_fatal()
                exited = self._store is not None and self._store.poll() is not None
                # A store still running (it timed out) is the caller's to stop: none beside it.
                if (
                    attempt == STORE_START_ATTEMPTS
                    or self._server is not None
                    or not exited
                    or not _port_taken(fatal)
                ):
                    raise
                self.log(f"SeaweedFS could not listen ({fatal}); starting it again on new ports")
                self._store_ports = self._choose_store_ports(reuse=False)

    def wait_store(self, timeout: float = 90.0) -> None:
        """Wait until SeaweedFS, started by :meth:`spawn_store`, serves its volumes."""
        store = self._store
        assert store is not None, "spawn_store first"
        deadline = time.monotonic() + timeout
        while not self.store_ready():
            if store.poll() is not None:
                fatal = self._store_fatal()
                raise ServiceUnavailable(
                    f"SeaweedFS exited with code {store.returncode} during start-up"
                    + (f": {fatal}" if fatal else "")
                    + f" (see {self._store_log})"
                )
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"SeaweedFS not ready within {timeout:.0f} s (see {self.state_dir}/logs/seaweedfs.log)"
                )
            time.sleep(0.25)

    def spawn_server(self) -> subprocess.Popen[bytes]:
        """Start the Hypha server without waiting: same port, secret, database and store."""
        env = {
            **os.environ,
            "HYPHA_JWT_SECRET": self.jwt_secret,
            "HYPHA_ROOT_TOKEN": self.root_token,
            "HYPHA_HOST": "127.0.0.1",
            "HYPHA_PORT": str(self.port),
            # The defaults (200 messages/s) disconnect a busy service.
            "HYPHA_WS_MSG_RATE_LIMIT": "100000",
            "HYPHA_WS_MSG_BURST_LIMIT": "100000",
            "HYPHA_LOGLEVEL": os.environ.get("HYPHA_LOGLEVEL", "WARNING"),
            "BIOENGINE_WORKSPACE": self.workspace,
        }
        for name in ("VIRTUAL_ENV", "PYTHONPATH"):
            env.pop(name, None)
        sock = self._reserve()
        env["BIOENGINE_HYPHA_FD"] = str(sock.fileno())
        argv = [
            str(self.python),
            str(self.project_dir / SERVER_MAIN),  # hypha.server on that socket
            "--from-env",
            f"--startup-functions={self.project_dir / 'bioengine_hypha_startup.py'}:hypha_startup",
        ]
        if self.s3:
            argv += [
                "--enable-s3",
                f"--endpoint-url=http://127.0.0.1:{self.s3_port}",
                "--access-key-id=bioengine",
                "--secret-access-key=bioengine",
                "--region-name=us-east-1",
                "--s3-admin-type=generic",
                "--workspace-bucket=hypha-workspaces",
                f"--database-uri=sqlite+aiosqlite:///{self.state_dir / 'hypha' / 'hypha.db'}",
            ]
        self._server = spawn(
            argv, env=env, log_path=self.state_dir / "logs" / "hypha-server.log", pass_fds=(sock.fileno(),)
        )
        return self._server

    def server_ready(self) -> bool:
        """True when the server answers its readiness probe."""
        try:
            with urllib.request.urlopen(f"{self.url}/health/readiness", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def start_server(self, timeout: float = 90.0) -> None:
        """Start (or start again, on the same port) the Hypha server and wait until ready."""
        server = self.spawn_server()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise ServiceUnavailable(
                    f"Hypha server exited with code {server.returncode} during start-up "
                    f"(see {self.state_dir}/logs/hypha-server.log)"
                )
            if self.server_ready():
                return
            time.sleep(0.25)
        raise ServiceUnavailable(f"Hypha server not ready within {timeout:.0f} s")

    def stop_server(self) -> None:
        stop_process(self._server, timeout=10)
        self._server = None

    def stop(self) -> None:
        self.stop_server()
        # SeaweedFS ignores SIGTERM for a long while; its data is flushed per write.
        stop_process(self._store, timeout=3)
        self._store = None
        if self._socket is not None:  # a later start binds the same port again
            self._socket.close()
            self._socket = None

    def __enter__(self) -> EmbeddedHypha:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
