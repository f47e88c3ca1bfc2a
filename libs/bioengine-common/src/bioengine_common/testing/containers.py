"""Service images as test fixtures: BioEngine containers started through podman's Docker API.

The images are the ones ``infra/containers/build.sh`` builds (``localhost/bioengine-<name>``);
the containers are started with testcontainers through podman's Docker-compatible socket
(``DOCKER_HOST``; ``.ci/run`` starts ``podman system service`` and sets it, with
``TESTCONTAINERS_RYUK_DISABLED=true`` and ``TESTCONTAINERS_CONNECTION_MODE=docker_host``).

Not loaded as part of the pytest plugin (testcontainers is a dev dependency only): a test
directory imports the fixtures it uses into its ``conftest.py``.

Fixtures:

- ``podman`` (session): a Docker API client of the podman service. Skips the test when the
  service or an image is missing, but FAILS it when ``BIOENGINE_REQUIRE_PODMAN=1`` (CI).
- ``start_service_container``: ``start_service_container(name, server, *flags, token=,
  admin_users=, env=, volume=)`` runs service ``name`` ("cluster", "apps", "datasets",
  "gateway") from its image against ``server`` on the host's network; every container it
  started is removed after the test.

The subprocess fixtures of :mod:`bioengine_common.testing` stay the default for the rest of
the suite.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from .._permissions import SERVICES_USER
from ..local_stack import EmbeddedHypha
from . import ADMIN_USER, SERVICE_MODULES, SERVICE_PERMISSIONS

#: The image of each service, as infra/containers/build.sh tags it.
SERVICE_IMAGES = {name: f"localhost/bioengine-{name}-svc:latest" for name in SERVICE_MODULES}

__all__ = [
    "SERVICE_IMAGES",
    "ServiceContainer",
    "new_volume_name",
    "podman",
    "podman_problem",
    "start_service_container",
]


def podman_problem(images: Sequence[str] = tuple(SERVICE_IMAGES.values())) -> str | None:
    """Why the service containers cannot run here (None when the API answers and images exist)."""
    if not os.environ.get("DOCKER_HOST"):
        return "DOCKER_HOST is not set (start `podman system service` on a socket and point it there)"
    try:
        import docker
    except ImportError:
        return "the docker package is missing (uv sync: it comes with testcontainers, a dev dependency)"
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        return f"no container API at {os.environ['DOCKER_HOST']}: {exc}"
    missing = [image for image in images if not _image_exists(client, image)]
    client.close()
    if missing:
        return f"images missing: {', '.join(missing)} (build them with infra/containers/build.sh)"
    return None


def _image_exists(client: Any, image: str) -> bool:
    try:
        client.images.get(image)
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def podman() -> Iterator[Any]:
    problem = podman_problem()
    if problem:
        if os.environ.get("BIOENGINE_REQUIRE_PODMAN") == "1":
            pytest.fail(f"BIOENGINE_REQUIRE_PODMAN=1 but {problem}")
        pytest.skip(problem)
    import docker

    client = docker.from_env()
    yield client
    client.close()


@dataclass
class ServiceContainer:
    """One service running from its image (a testcontainers ``DockerContainer``)."""

    name: str
    container: Any
    volume: str | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def id(self) -> str:
        return str(self.container.get_wrapped_container().id)

    def logs(self) -> str:
        out, err = self.container.get_logs()
        return (out + err).decode(errors="replace")

    def status(self) -> str:
        wrapped = self.container.get_wrapped_container()
        wrapped.reload()
        return str(wrapped.status)

    def kill(self) -> None:
        """SIGKILL the service (the container stays, stopped, until the fixture removes it)."""
        self.container.get_wrapped_container().kill()

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            with contextlib.suppress(Exception):
                self.container.stop()


def run_service_container(
    name: str,
    server: EmbeddedHypha,
    *extra_args: str,
    token: str | None = None,
    admin_users: Sequence[str] = (ADMIN_USER,),
    env: dict[str, str] | None = None,
    volume: str | None = None,
) -> ServiceContainer:
    """Start service ``name`` from its image against ``server``; the caller stops it.

    The container shares the host's network (the test server listens on loopback), so its
    flags are those of ``launch_service``; ``volume`` is a podman volume mounted on the image's
    workspace dir ``/data`` (share one between the services of a worker).
    """
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(SERVICE_IMAGES[name])
        .with_env("BIOENGINE_SERVER_URL", server.url)
        .with_env("BIOENGINE_WORKSPACE", server.workspace)
        .with_env(
            "BIOENGINE_TOKEN",
            token or server.mint(SERVICES_USER, SERVICE_PERMISSIONS.get(name, "read_write")),
        )
        .with_kwargs(network_mode="host", shm_size="512m")
    )
    if admin_users:
        container = container.with_env("BIOENGINE_ADMIN_USERS", ",".join(admin_users))
    for key, value in (env or {}).items():
        container = container.with_env(key, value)
    if volume:
        container = container.with_volume_mapping(volume, "/data", "rw")
    if extra_args:
        container = container.with_command(list(extra_args))
    container.start()
    return ServiceContainer(name, container, volume)


@pytest.fixture
def start_service_container(podman: Any) -> Iterator[Callable[..., ServiceContainer]]:
    """``start_service_container(name, server, *flags, ...)`` (see :func:`run_service_container`);
    every container it started is removed after the test, with the volumes it made."""
    started: list[ServiceContainer] = []

    def start(name: str, server: EmbeddedHypha, *extra_args: str, **kwargs: Any) -> ServiceContainer:
        service = run_service_container(name, server, *extra_args, **kwargs)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
    volumes = {service.volume for service in started if service.volume}
    for volume in volumes:
        with contextlib.suppress(Exception):
            podman.volumes.get(volume).remove(force=True)


def new_volume_name(prefix: str = "bioengine-test") -> str:
    """A fresh podman volume name (created on first mount, removed by the fixture)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
