"""The local stack's infrastructure: a Hypha server and a SeaweedFS S3 store on loopback.

Both run from the uv project ``infra/hypha-server`` (its own environment and lock, because
hypha pins an old FastAPI that Ray cannot live with). The JWT secret is kept in the state
directory so that tokens stay valid across server restarts.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from ._processes import free_port, spawn, stop_process, wait_for_port
from ._tokens import mint_token
from .errors import ConfigurationError, ServiceUnavailable

__all__ = ["EmbeddedHypha", "find_hypha_project"]

HYPHA_PROJECT_ENV = "BIOENGINE_HYPHA_PROJECT"
_PROJECT_REL = Path("infra") / "hypha-server"


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
        self.port = port or free_port()
        self.s3 = s3
        self.project_dir = project_dir or find_hypha_project()
        self.log = log
        self.root_token = secrets.token_hex(32)
        self.jwt_secret = self._load_secret()
        self.s3_port: int | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._store: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
        """Install the server's environment from its lock (a no-op when already in place)."""
        if not self.python.exists():
            self.log("Installing the embedded Hypha server environment (first run only)...")
        result = subprocess.run(
            [_uv(), "sync", "--frozen", "--quiet", "--project", str(self.project_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceUnavailable(f"Preparing {self.project_dir} failed:\n{result.stderr.strip()}")

    def start(self, timeout: float = 90.0) -> None:
        self.prepare()
        if self.s3:
            self._start_store(timeout)
        self.start_server(timeout)

    def _start_store(self, timeout: float) -> None:
        data = self.state_dir / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(8)]
        self.s3_port = ports[6]
        argv = [
            str(self.python.parent / "weed"),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}",
            f"-master.port.grpc={ports[1]}",
            f"-volume.port={ports[2]}",
            f"-volume.port.grpc={ports[3]}",
            f"-filer.port={ports[4]}",
            f"-filer.port.grpc={ports[5]}",
            "-s3",
            f"-s3.port={ports[6]}",
            f"-s3.port.grpc={ports[7]}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
        ]
        self._store = spawn(argv, log_path=self.state_dir / "logs" / "seaweedfs.log", cwd=data)
        try:
            wait_for_port("127.0.0.1", self.s3_port, timeout, self._store)
        except (RuntimeError, TimeoutError) as exc:
            raise ServiceUnavailable(
                f"SeaweedFS did not start: {exc} (see {self.state_dir}/logs/seaweedfs.log)"
            ) from exc

    def start_server(self, timeout: float = 90.0) -> None:
        """Start (or start again, on the same port) the Hypha server and wait until ready."""
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
        argv = [
            str(self.python),
            "-m",
            "hypha.server",
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
        self._server = spawn(argv, env=env, log_path=self.state_dir / "logs" / "hypha-server.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                raise ServiceUnavailable(
                    f"Hypha server exited with code {self._server.returncode} during start-up "
                    f"(see {self.state_dir}/logs/hypha-server.log)"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health/readiness", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
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

    def __enter__(self) -> EmbeddedHypha:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
