"""Joining a Ray cluster as a driver: the environment every Ray process of ours gets, what a Ray
worker must never inherit, the token file check, ``connect_driver``/``disconnect_driver``.

Token authentication (Ray >= 2.60): only the *path* of the token file is ever passed on
(environment of the head, drivers, SLURM jobs), never the token itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigurationError, ServiceUnavailable

__all__ = [
    "RayCalls",
    "check_token_file",
    "connect_driver",
    "disconnect_driver",
    "ray_environment",
    "scrub_environment",
]


def ray_environment(drain_timeout_s: float = 1.0, token_file: str | Path | None = None) -> dict[str, str]:
    """Variables every Ray process of ours gets (the head, drivers, run_code tasks).

    With ``token_file``: token authentication, the token read from that file by Ray itself (only
    the path is in the environment). Without: authentication explicitly disabled.
    """
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        # Explicit, or one stray `ray.init()` on the machine flips later heads to token auth.
        "RAY_AUTH_MODE": "token" if token_file else "disabled",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": f"{drain_timeout_s:g}",
        # Under `uv run` (any ancestor), Ray would otherwise ship the current directory to every
        # job and start its workers with `uv run`: slow, and not what the cluster should run.
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        # A Ray call of a driver that lost its cluster fails instead of starting a local Ray
        # cluster inside the service (read when Ray is imported).
        "RAY_ENABLE_AUTO_CONNECT": "0",
    }
    if token_file:
        env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    return env


#: Never inherited by a Ray head or a SLURM worker job (and so by app code and run_code tasks).
_SECRET_PREFIXES = ("BIOENGINE_", "HYPHA_")
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "API_KEY", "APIKEY", "CREDENTIAL")
#: Names with a secret word that only point at something (Ray reads the token from this path).
_KEPT = {"RAY_AUTH_TOKEN_PATH"}


def scrub_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without anything a Ray worker must not inherit: every ``BIOENGINE_*`` and
    ``HYPHA_*`` variable (the services' Hypha tokens), ``RAY_AUTH_TOKEN`` (a token value) and any
    variable whose name says token, secret, password, API key or credential."""
    kept = {}
    for name, value in env.items():
        upper = name.upper()
        if upper not in _KEPT and (
            upper.startswith(_SECRET_PREFIXES) or any(word in upper for word in _SECRET_WORDS)
        ):
            continue
        kept[name] = value
    return kept


def check_token_file(path: str | Path) -> Path:
    """``path`` if it is a usable Ray token file: a non-empty regular file of this user that no
    other user may read or write. Errors name the file and the fix, never its content."""
    path = Path(path).expanduser()
    if not path.is_absolute():
        raise ConfigurationError(f"the Ray token file must be an absolute path, got '{path}'")
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigurationError(f"the Ray token file {path} does not exist") from None
    except OSError as exc:
        raise ConfigurationError(f"the Ray token file {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigurationError(f"the Ray token file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigurationError(
            f"the Ray token file {path} is accessible to other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); allow only its owner: chmod 600 {path}"
        )
    if info.st_uid != os.getuid():
        raise ConfigurationError(
            f"the Ray token file {path} belongs to uid {info.st_uid}, not to this user ({os.getuid()})"
        )
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"the Ray token file {path} cannot be read: {exc}") from None
    if not token:
        raise ConfigurationError(f"the Ray token file {path} is empty")
    if not token.isascii() or not token.isprintable() or any(ch.isspace() for ch in token):
        raise ConfigurationError(
            f"the Ray token file {path} must hold one token of printable ASCII characters"
        )
    return path


def _apply_ray_environment(env: Mapping[str, str]) -> None:
    """Put ``env`` in this process and make an already imported Ray see it: Ray caches its
    config (the authentication mode) and the token it loaded."""
    changed = any(os.environ.get(name) != value for name, value in env.items())
    if "RAY_AUTH_TOKEN_PATH" not in env:
        changed |= os.environ.pop("RAY_AUTH_TOKEN_PATH", None) is not None
    # A token value in the environment would win over the file.
    changed |= os.environ.pop("RAY_AUTH_TOKEN", None) is not None
    os.environ.update(env)
    if changed and "ray" in sys.modules:
        with contextlib.suppress(Exception):  # private API; a fresh process needs none of this
            from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()


def connect_driver(
    address: str,
    timeout: float,
    namespace: str = "bioengine",
    token_file: str | Path | None = None,
) -> dict[str, Any]:
    """``ray.init`` to ``address`` (blocking); errors name both versions.

    ``token_file``: the cluster runs with token authentication; Ray reads the token from this
    file. Ray Client (``ray://``) addresses cannot be combined with it: Ray 2.60's Ray Client
    does not work under token authentication.
    """
    if token_file and address.startswith("ray://"):
        raise ConfigurationError(
            f"a Ray token file cannot be used with the Ray Client address {address}: Ray Client "
            "does not work under token authentication; give the cluster's GCS address "
            "(host:port) instead"
        )
    path = check_token_file(token_file) if token_file else None
    import ray

    _apply_ray_environment(ray_environment(token_file=path))
    started = time.monotonic()
    try:
        context = ray.init(
            address=address, namespace=namespace, logging_level=logging.WARNING,
            log_to_driver=False, ignore_reinit_error=True,
        )  # fmt: skip
    except Exception as exc:  # Ray raises RuntimeError, ConnectionError, ...
        message = str(exc)
        if exc.__cause__ is not None and str(exc.__cause__) not in message:
            # Ray's "Failed to connect to Ray cluster at ..." says why only in its cause.
            message = f"{message}: {exc.__cause__}"
        ours = f"Ray {ray.__version__} / Python {sys.version.split()[0]}"
        if "ersion mismatch" in message:
            raise ConfigurationError(
                f"the cluster at {address} runs other versions than this worker ({ours}): {message}"
            ) from exc
        auth = (
            f" (authenticating with the token in {path}: is it the cluster's token?)"
            if path
            else " (without a Ray token: a cluster with token authentication refuses this driver; "
            "give its token file)"
        )
        if time.monotonic() - started > timeout:
            raise ServiceUnavailable(
                f"connecting to {address} took over {timeout:.0f} s and failed ({message}){auth}; "
                f"with Ray Client a Ray version mismatch looks like this — this worker runs {ours}"
            ) from exc
        raise ServiceUnavailable(f"cannot connect to the Ray cluster at {address}: {message}{auth}") from exc
    return dict(context.address_info) if hasattr(context, "address_info") else {}


def disconnect_driver() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


class RayCalls:
    """A driver's Ray calls made in threads, and ``ray.shutdown()`` never beside one of them.

    apps-svc crashed (SIGSEGV, in CI and here) at the end of its ``ray.shutdown()`` after its
    head was killed, and a stack dump of it taken at that point (in a run here) showed another
    of its threads waiting in ``ray.get`` on the dead head (a Serve status query): a call still
    waiting in Ray's core worker when the shutdown frees it is the likely cause. So every
    blocking Ray call goes through :meth:`call` (bound each one by a timeout of Ray's own, so
    that its thread ends), and the driver is shut down with :meth:`shutdown_when_idle`.
    """

    def __init__(self) -> None:
        self._under_way = 0
        self._idle = threading.Condition()

    @property
    def under_way(self) -> int:
        """Calls inside Ray now."""
        return self._under_way

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)``, counted; waits while a shutdown runs (and then fails: Ray is
        no longer connected, and auto-connect is off), never runs beside it."""
        with self._idle:
            self._under_way += 1
        try:
            return function(*args)
        finally:
            with self._idle:
                self._under_way -= 1
                self._idle.notify_all()

    def shutdown_when_idle(self, wait_s: float, force: bool = False) -> bool:
        """``ray.shutdown()`` once no call is under way (blocking); whether none was. After
        ``wait_s`` with some still under way: nothing done, or with ``force`` the shutdown all
        the same."""
        with self._idle:
            idle = self._idle.wait_for(lambda: self._under_way == 0, timeout=wait_s)
            if idle or force:
                disconnect_driver()
            return idle
