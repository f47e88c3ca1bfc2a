"""The life of a service process: initialize -> start -> monitor -> cleanup.

A subclass sets the class attributes, adds ``@schema_method`` RPC methods, and overrides the
hooks it needs. :meth:`BioEngineService.main` parses settings and runs it until SIGTERM or
SIGINT (exit 0), a fatal error (exit 1) or the loss of the Hypha connection for good (exit 3).
After exit 3 :attr:`BioEngineService.leaving_for_successor` is true during :meth:`cleanup`: what
users deployed (the Ray head, apps, SLURM jobs) is left running for the restarted process to adopt.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import functools
import importlib.metadata
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from hypha_rpc.utils.schema import schema_method
from pydantic import Field

from ._hypha import HyphaConnection
from ._logging import create_logger
from ._permissions import check_permissions, is_authorized, resolve_context
from ._settings import ServiceSettings, load_settings
from ._telemetry import OTLP_ENDPOINT_VARIABLE, exporter_for, flush_spans, setup_telemetry, traced
from ._watchdog import watch_event_loop
from .errors import ConfigurationError, ConnectionLost, InvalidRequest, PermissionDenied, ServiceUnavailable
from .metrics import REGISTRY, ScrapeCollector, caller_kind, metered, serve_metrics

__all__ = ["EXIT_CONNECTION_LOST", "EXIT_FAILURE", "EXIT_WORKER_STOP", "BioEngineService", "CallerField"]

EXIT_FAILURE = 1
EXIT_CONNECTION_LOST = 3
#: The gateway exits with this after ``stop_worker``: the supervisor then stops the whole worker.
EXIT_WORKER_STOP = 10

CallerField = Field(
    None,
    description="Internal: the original caller, passed on by the gateway. Accepted only from "
    "the worker's own services (the user this service runs as, or --trusted-callers); "
    "refused from anyone else.",
)


def _read_tail(path: os.PathLike[str] | str, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file, reading backwards in blocks."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = position = handle.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= lines:
            position = max(0, position - 65536)
            handle.seek(position)
            data = handle.read(end - position)
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


class BioEngineService:
    """Base class of the four services."""

    #: Short name: logger name, log file name and client id prefix ("cluster").
    name: ClassVar[str]
    #: Hypha service id ("bioengine-cluster").
    service_id: ClassVar[str]
    #: Distribution name, for the version ("bioengine-cluster").
    distribution: ClassVar[str]
    description: ClassVar[str] = ""
    visibility: ClassVar[str] = "protected"
    settings_model: ClassVar[type[ServiceSettings]] = ServiceSettings

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.logger = create_logger(
            self.name,
            logging.DEBUG if settings.debug else logging.INFO,
            settings.resolved_log_file(self.name),
        )
        self.hypha = HyphaConnection(settings, self.name, self.logger)
        self.version = importlib.metadata.version(self.distribution)
        self.started_at: float | None = None
        self.ready = False
        self.admin_users: list[str] = list(settings.admin_users)
        #: Hypha users whose clients may pass ``caller=``: --trusted-callers, plus the user of
        #: this service's own token once connected.
        self.trusted_callers: set[str] = set(settings.trusted_callers)
        self._stop: asyncio.Event | None = None
        self._exit_code = 0
        #: True while cleaning up after the Hypha connection was lost for good: the process is
        #: restarted by its supervisor, so :meth:`cleanup` leaves running what users deployed.
        self.leaving_for_successor = False
        #: The OTLP collector of this process's spans (--otlp-endpoint or the standard variable),
        #: for the parts of a request that run in Ray (see ``bioengine_common.tracing``).
        self.otlp_endpoint = exporter_for(settings.telemetry_exporter, settings.otlp_endpoint)[1]
        #: Where Prometheus scrapes this service (None without --metrics-port).
        self.metrics_url: str | None = None
        self._metrics_server: Any = None
        self._collector: ScrapeCollector | None = None

    # ---- hooks for subclasses -------------------------------------------------------------
    async def initialize(self) -> None:
        """Prepare what the RPC methods need before the service is registered."""

    async def monitor(self) -> None:
        """Background work while the service runs; returning ends nothing, raising is fatal."""
        await asyncio.Event().wait()

    async def cleanup(self) -> None:
        """Release what :meth:`initialize` acquired; runs on every exit path. Losing Hypha is
        never a reason to stop what users deployed: see :attr:`leaving_for_successor`."""

    def status_details(self) -> dict[str, Any]:
        """Service-specific fields merged into :meth:`get_status`."""
        return {}

    def is_ready(self) -> bool:
        """Registered and able to do its job; subclasses add their own conditions."""
        return self.ready

    def collect_metrics(self) -> Iterable[Any]:
        """Gauges read at each Prometheus scrape (``bioengine_common.metrics.gauge`` families);
        runs in the metrics server's thread, so it reads state and never awaits."""
        return ()

    # ---- helpers for RPC methods --------------------------------------------------------------
    def caller_context(self, context: Any, caller: Any) -> dict[str, Any]:
        """The context to authorize against (the forwarded caller when it may be trusted).

        A ``caller`` from anyone but the worker's own services is refused and the attempt
        logged (sender and user only: the log formatter escapes them).
        """
        try:
            return resolve_context(context, caller, self.settings.workspace, self.trusted_callers)
        except PermissionDenied:
            if caller is not None:
                sender: Mapping[str, Any] = context if isinstance(context, Mapping) else {}
                user = sender.get("user")
                user = user if isinstance(user, Mapping) else {}
                self.logger.warning(
                    "Refused a forwarded caller from '%s' (user '%s')", sender.get("from"), user.get("id")
                )
            raise

    async def get_internal_service(self, service_id: str) -> Any:
        """A proxy to another service of this worker, registered by a user it trusts."""
        return await self.hypha.get_service(service_id, self.trusted_callers)

    def require_admin(self, context: Any, caller: Any, action: str) -> dict[str, Any]:
        """Raise PermissionDenied unless the (forwarded) caller is an admin; return the context."""
        resolved = self.caller_context(context, caller)
        check_permissions(resolved, self.admin_users, f"'{action}' (admin only)")
        return resolved

    def is_admin(self, user: dict[str, Any]) -> bool:
        return is_authorized(user, self.admin_users)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a graceful stop. Call again after a library (Ray's driver)
        has put its own handlers in place."""
        loop = asyncio.get_running_loop()
        assert self._stop is not None
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)

    def request_stop(self, exit_code: int = 0) -> None:
        """Stop the process as on SIGTERM, exiting with ``exit_code``."""
        self._exit_code = exit_code
        if self._stop is not None:
            self._stop.set()

    # ---- RPC methods every service has ----------------------------------------------------------
    @schema_method
    async def get_status(self, caller: dict | None = CallerField, context: dict | None = None) -> dict:
        """Status of this service: version, uptime, readiness, client id and its own state."""
        self.caller_context(context, caller)
        now = time.time()
        return {
            "service": self.service_id,
            "version": self.version,
            "client_id": self.hypha.client_id,
            "workspace": self.settings.workspace,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "start_time": self.started_at,
            "uptime": now - self.started_at if self.started_at else 0.0,
            "ready": self.is_ready(),
            "hypha": self.hypha.status(),
            **self.status_details(),
        }

    @schema_method
    async def get_logs(
        self,
        tail: int = Field(100, description="Number of lines from the end of the log file.", ge=1, le=10000),
        caller: dict | None = CallerField,
        context: dict | None = None,
    ) -> list[str]:
        """The last lines of this service's log file (admin only)."""
        self.require_admin(context, caller, "get_logs")
        path = self.settings.resolved_log_file(self.name)
        if path is None:
            raise InvalidRequest(f"{self.service_id} logs to the console only (--log-file off)")
        if not path.exists():
            return []
        return await asyncio.to_thread(_read_tail, path, int(tail))

    def _guarded(self, method: Callable[..., Any]) -> Callable[..., Any]:
        """``method`` refusing an untrusted ``caller=`` before anything else runs (the method's
        own :meth:`caller_context` call then resolves it), so no method can forget the check."""

        @functools.wraps(method)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("caller") is not None:
                self.caller_context(kwargs.get("context"), kwargs["caller"])
            return await method(*args, **kwargs)

        return guarded

    def _caller_kind(self, context: Any, caller: Any) -> str:
        return caller_kind(context, caller, self.admin_users, self.trusted_callers)

    def rpc_methods(self) -> dict[str, Callable[..., Any]]:
        """Every ``@schema_method`` of this object, each wrapped in a tracing span, in the check
        that only the worker's own services pass a caller on, and (with --metrics-port) in the
        Prometheus metrics."""
        methods = {}
        for attr in dir(type(self)):
            if attr.startswith("_"):
                continue
            function = getattr(type(self), attr, None)
            if callable(function) and hasattr(function, "__schema__"):
                method = self._guarded(traced(getattr(self, attr), f"{self.service_id}.{attr}"))
                if self.settings.metrics_enabled:  # counted only where someone can scrape
                    method = metered(method, self.service_id, attr, self._caller_kind)
                methods[attr] = method
        return methods

    def _start_metrics(self) -> None:
        """The Prometheus endpoint, when --metrics-port is set; the gauges of
        :meth:`collect_metrics` join the process's registry."""
        self._collector = ScrapeCollector(self.collect_metrics)
        REGISTRY.register(self._collector)
        if not self.settings.metrics_enabled:
            return
        sock = None
        if self.settings.metrics_fd is not None:
            try:
                sock = socket.socket(fileno=self.settings.metrics_fd)
                listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            except OSError as exc:
                raise ConfigurationError(
                    f"--metrics-fd {self.settings.metrics_fd} is not an open socket: {exc}"
                ) from exc
            if not listening:
                sock.detach()
                raise ConfigurationError(f"--metrics-fd {self.settings.metrics_fd} is not a listening socket")
        self._metrics_server, port = serve_metrics(
            self.settings.metrics_host, self.settings.metrics_port or 0, sock
        )
        self.metrics_url = f"http://{self.settings.metrics_host}:{port}/metrics"
        self.logger.info("Prometheus metrics at %s", self.metrics_url)

    def _stop_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._collector is not None:
            REGISTRY.unregister(self._collector)
            self._collector = None

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Register the Hypha service."""
        await self.hypha.register(
            {
                "id": self.service_id,
                "name": self.service_id,
                "description": self.description,
                "config": {"visibility": self.visibility, "require_context": True},
                **self.rpc_methods(),
            }
        )

    async def run(self) -> int:
        """Run until asked to stop; return the process exit code."""
        self._stop = asyncio.Event()
        self.install_signal_handlers()
        tasks: list[asyncio.Task[Any]] = []
        code = 0
        try:
            self._start_metrics()
            await self.initialize()
            await self.hypha.connect()
            for identity in (self.hypha.user.get("id"), self.hypha.user.get("email")):
                if identity and identity not in self.admin_users:
                    self.admin_users.append(identity)
            if self.hypha.user.get("id") and not self.hypha.user.get("is_anonymous"):
                self.trusted_callers.add(str(self.hypha.user["id"]))
            self.started_at = time.time()
            await self.start()
            self.ready = True
            tasks = [
                asyncio.create_task(self.monitor(), name="monitor"),
                asyncio.create_task(self.hypha.watch(), name="watch"),
                asyncio.create_task(self._stop.wait(), name="stop"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.get_name() != "stop" and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            self.logger.info("Stopping %s", self.service_id)
            code = self._exit_code
        except ConnectionLost as exc:
            self.logger.error(
                "%s: %s; exiting for the supervisor to restart this service", type(exc).__name__, exc
            )
            self.leaving_for_successor = True
            code = EXIT_CONNECTION_LOST
        except ServiceUnavailable as exc:
            self.logger.error("%s: %s", type(exc).__name__, exc)
            code = EXIT_CONNECTION_LOST
        except Exception:
            self.logger.exception("%s failed", self.service_id)
            code = EXIT_FAILURE
        finally:
            self.ready = False
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            try:
                await self.cleanup()
            except Exception:
                self.logger.exception("Cleanup of %s failed", self.service_id)
            await self.hypha.disconnect()
            self._stop_metrics()
            await asyncio.to_thread(flush_spans)
        return code

    async def _run_watched(self) -> int:
        """:meth:`run`, ended by the event loop's watchdog if the loop stays blocked (see
        ``--stall-exit``; only in the service's own process, never in a test process)."""
        watchdog = asyncio.create_task(
            watch_event_loop(self.settings.stall_exit, self.logger), name="loop-watchdog"
        )
        try:
            return await self.run()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    @classmethod
    def main(cls, argv: Sequence[str] | None = None) -> None:
        """Console entry point: settings from flags and environment, then :meth:`run`."""
        settings = load_settings(cls.settings_model, argv, prog=cls.service_id, description=cls.description)
        # A fatal signal (a crash in a native library) writes every thread's Python stack to the
        # console before the process ends.
        faulthandler.enable(file=sys.stderr, all_threads=True)
        exporter, endpoint = exporter_for(settings.telemetry_exporter, settings.otlp_endpoint)
        if endpoint:
            # The standard variable, for what this process starts: a Ray head (every Ray worker,
            # app replicas included, inherits it) and Ray Serve's tracing hook.
            os.environ[OTLP_ENDPOINT_VARIABLE] = endpoint
        setup_telemetry(cls.service_id, exporter, endpoint)
        code = asyncio.run(cls(settings)._run_watched())
        logging.shutdown()
        # Skip interpreter teardown: hypha-rpc leaves background tasks that delay exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
