"""The public ``bioengine-worker`` service: one API composed from the internal services.

Status of the internal services is refreshed in the background and served from a cache, so a
``get_status`` call never fans out; a service that is down is reported with its error.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

from hypha_rpc.utils.schema import schema_method
from pydantic import Field

from bioengine_common import (
    EXIT_WORKER_STOP,
    BioEngineService,
    ServiceSettings,
    ServiceUnavailable,
    check_permissions,
    error_summary,
    forwarded_caller,
    from_remote,
    is_authorized,
)

#: Internal services the gateway composes: short name -> Hypha service id.
BACKENDS = {
    "cluster": "bioengine-cluster",
    "apps": "bioengine-apps",
    "datasets": "bioengine-datasets",
}


def _is_stale_proxy(exc: BaseException) -> bool:
    """The service behind a cached proxy is gone (restarted under a new client id)."""
    text = str(exc)
    return isinstance(exc, ConnectionError) or any(
        marker in text for marker in ("not connected", "Service not found", "Client not found")
    )


def _without_ray_cluster(entry: dict[str, Any]) -> dict[str, Any]:
    """A service entry for get_status; the cluster's ray_cluster is shown once, at the top."""
    entry = dict(entry)
    if isinstance(entry.get("status"), dict):
        entry["status"] = {k: v for k, v in entry["status"].items() if k != "ray_cluster"}
    return entry


def _relay(callback: Any) -> Any:
    """A local function that calls the caller's callback.

    A callback proxy received from one client cannot be handed on as it is: Hypha only lets the
    peer it was sent to call it, so the internal service calls this relay instead.
    """
    if callback is None:
        return None

    async def relay(line: str) -> None:
        result = callback(line)
        if inspect.isawaitable(result):
            await result

    return relay


#: The field of ``get_status`` that says why the worker is not ready: one line per cause,
#: ``"<service>: <reason>"``; empty when ready.
NOT_READY_REASONS = "not_ready_reasons"

#: Seconds between refreshes of the services' status while the worker is not ready: readiness
#: is seen within this time, not one ``--status-interval`` later.
STARTING_STATUS_INTERVAL = 0.5


def _why_not_ready(name: str, status: dict[str, Any]) -> str:
    """What a registered service that says it is not ready gives as the cause."""
    if name == "cluster":
        ray_cluster = status.get("ray_cluster") or {}
        return str(ray_cluster.get("error") or "connected to the Ray head, no sample of the cluster yet")
    if name == "apps" and status.get("ray_error"):
        return str(status["ray_error"])
    return "registered but not ready yet"


def not_ready_reasons(registered: bool, services: dict[str, dict[str, Any]]) -> list[str]:
    """Why the worker is not ready: ``"<service>: <reason>"`` per service that is down or not
    ready (its log is ``logs/<service>.log``); empty when it is ready."""
    reasons = [] if registered else ["gateway: not registered yet"]
    for name, entry in services.items():
        if not entry.get("up"):
            error = entry.get("error") or "not checked yet"
            reasons.append(f"{name}: {entry.get('service_id', name)} is not reachable: {error}")
        elif not (entry.get("status") or {}).get("ready"):
            reasons.append(f"{name}: {_why_not_ready(name, entry.get('status') or {})}")
    return reasons


class GatewaySettings(ServiceSettings):
    status_interval: float = Field(
        2.0, gt=0, description="Seconds between background refreshes of the services' status."
    )
    call_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for an internal service before calling it down."
    )


class GatewayService(BioEngineService):
    name = "gateway"
    service_id = "bioengine-worker"
    distribution = "gateway-svc"
    description = "BioEngine worker: run bioimage AI apps, datasets and code on this worker's compute."
    visibility = "public"
    settings_model = GatewaySettings
    settings: GatewaySettings

    def __init__(self, settings: GatewaySettings):
        super().__init__(settings)
        self._proxies: dict[str, Any] = {}
        self._services: dict[str, dict[str, Any]] = {
            name: {"service_id": sid, "up": False, "error": "not checked yet", "checked_at": None}
            for name, sid in BACKENDS.items()
        }
        #: Wall-clock time since when the worker is ready without a break; None when not ready.
        self.ready_since: float | None = None

    # ---- calling the internal services -------------------------------------------------------------
    async def _proxy(self, name: str) -> Any:
        if name not in self._proxies:
            self._proxies[name] = await self.get_internal_service(BACKENDS[name])
        return self._proxies[name]

    async def call(
        self, name: str, method: str, context: Any = None, *, call_timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Call ``method`` of internal service ``name``, forwarding the caller of ``context``.

        A cached proxy whose service restarted is dropped and the call is made once more with a
        fresh one (the call never reached the service, so this is safe for any method). A call
        that times out is not repeated: it may be running.
        """
        if context is not None:
            kwargs["caller"] = forwarded_caller(context)
        timeout = call_timeout or self.settings.call_timeout
        for attempt in (1, 2):
            try:
                proxy = await self._proxy(name)
            except Exception as exc:
                raise ServiceUnavailable(f"{BACKENDS[name]} is not available: {error_summary(exc)}") from exc
            try:
                return await asyncio.wait_for(getattr(proxy, method)(**kwargs), timeout)
            except TimeoutError as exc:
                raise ServiceUnavailable(
                    f"{BACKENDS[name]}.{method} did not answer within {timeout:g} s"
                ) from exc
            except Exception as exc:
                if not _is_stale_proxy(exc):
                    # The service's own error (PermissionDenied, NotFound, ...) goes on as the same
                    # type with its one line, not as its traceback inside the gateway's.
                    known = from_remote(exc)
                    if known is not None:
                        raise known from None
                    raise
                self._proxies.pop(name, None)
                if attempt == 2:
                    raise ServiceUnavailable(
                        f"{BACKENDS[name]} is not available: {error_summary(exc)}"
                    ) from exc
        raise AssertionError("unreachable")

    async def _refresh(self, name: str) -> None:
        entry = self._services[name]
        try:
            status = await self.call(name, "get_status")
            entry.update(up=True, error=None, status=status)
        except Exception as exc:
            entry.update(up=False, error=error_summary(exc), status=None)
        entry["checked_at"] = time.time()

    async def monitor(self) -> None:
        while True:
            await asyncio.gather(*(self._refresh(name) for name in BACKENDS))
            ready = self.is_ready()
            await asyncio.sleep(
                self.settings.status_interval
                if ready
                else min(self.settings.status_interval, STARTING_STATUS_INTERVAL)
            )

    def readiness(self) -> list[str]:
        """Why the worker is not ready (empty when it is: registered, and every internal service
        up and ready). Also keeps ``ready_since`` (when it last became ready)."""
        reasons = not_ready_reasons(self.ready, self._services)
        if reasons:
            self.ready_since = None
        elif self.ready_since is None:
            self.ready_since = time.time()
        return reasons

    def is_ready(self) -> bool:
        return not self.readiness()

    # ---- public API ------------------------------------------------------------------------------
    def _is_admin_context(self, context: Any) -> bool:
        user = (context or {}).get("user") or {}
        return bool(user) and is_authorized(user, self.admin_users)

    @schema_method
    async def get_status(self, context: dict | None = None) -> dict:
        """Status of the worker: versions, uptime, readiness and each internal service (up or down, with the error)."""
        now = time.time()
        cluster = self._services["cluster"].get("status") or {}
        reasons = self.readiness()
        status: dict[str, Any] = {
            "service_start_time": self.started_at,
            "service_uptime": now - self.started_at if self.started_at else 0.0,
            "bioengine_version": self.version,
            "worker_mode": cluster.get("mode"),
            "workspace": self.settings.workspace,
            "client_id": self.hypha.client_id,
            "hypha": self.hypha.status(),
            "ray_version": (cluster.get("ray_cluster") or {}).get("ray_version"),
            "ray_cluster": cluster.get("ray_cluster"),
            "services": {name: _without_ray_cluster(entry) for name, entry in self._services.items()},
            "is_ready": not reasons,
            "ready_since": self.ready_since,
            NOT_READY_REASONS: reasons,
        }
        # Admin ids and emails are not for everyone's eyes (the public worker leaks them).
        if self._is_admin_context(context):
            status["admin_users"] = list(self.admin_users)
        return status

    @schema_method
    async def check_access(self, context: dict | None = None) -> bool:
        """Whether the caller is an admin of this worker. Never raises."""
        return self._is_admin_context(context)

    @schema_method
    async def get_logs(
        self,
        tail: int = Field(100, description="Number of lines from the end of each log.", ge=1, le=10000),
        context: dict | None = None,
    ) -> dict:
        """The last lines of each service's log, keyed by service (admin only)."""
        check_permissions(context, self.admin_users, "'get_logs' (admin only)")
        logs: dict[str, Any] = {"gateway": await super().get_logs(tail=tail, context=context)}

        async def one(name: str) -> None:
            try:
                logs[name] = await self.call(name, "get_logs", context, tail=tail)
            except Exception as exc:
                logs[name] = [f"unavailable: {error_summary(exc)}"]

        await asyncio.gather(*(one(name) for name in BACKENDS))
        return logs

    @schema_method
    async def run_code(
        self,
        code: str | None = Field(None, description="Python source defining the function (mode 'source')."),
        function_name: str = Field("analyze", description="Name of the function to call in `code`."),
        func_bytes: bytes | None = Field(None, description="A cloudpickled callable (mode 'pickle')."),
        mode: str = Field("source", description="'source' or 'pickle'."),
        args: list | None = Field(None, description="Positional arguments."),
        kwargs: dict | None = Field(None, description="Keyword arguments."),
        remote_options: dict | None = Field(
            None, description="Ray task options: num_cpus, num_gpus, memory, runtime_env, resources, ..."
        ),
        write_stdout: Any = Field(None, description="Called with each stdout line while the code runs."),
        write_stderr: Any = Field(None, description="Called with each stderr line while the code runs."),
        timeout: float = Field(180.0, gt=0, description="Seconds before the task is cancelled."),
        context: dict | None = None,
    ) -> dict:
        """Run a Python function in a Ray task on the worker's cluster (admin only).

        Returns {result, stdout, stderr} or {error, traceback, stdout, stderr}; stdout and stderr
        lines reach the callbacks while the code runs. On timeout the task is cancelled and the
        error result keeps the lines printed before it. Bad remote_options raise InvalidRequest
        naming the field; a request no node (nor a new SLURM worker) could ever hold raises
        ResourceUnavailable at once, with the reason.
        """
        check_permissions(context, self.admin_users, "'run_code' (admin only)")
        return await self.call(
            "cluster", "run_code", context, call_timeout=float(timeout) + 30.0,
            code=code, function_name=function_name, func_bytes=func_bytes, mode=mode, args=args,
            kwargs=kwargs, remote_options=remote_options, write_stdout=_relay(write_stdout),
            write_stderr=_relay(write_stderr), timeout=float(timeout),
        )  # fmt: skip

    @schema_method
    async def stop_worker(
        self,
        blocking: bool = Field(
            False, description="Accepted for compatibility; the call always returns at once."
        ),
        context: dict | None = None,
    ) -> None:
        """Stop the whole worker gracefully (admin only): this service disappears from Hypha, then
        the supervisor stops the other services and the cluster."""
        user = check_permissions(context, self.admin_users, "'stop_worker' (admin only)")
        self.logger.info("stop_worker requested by %s", user.get("email") or user.get("id"))
        # Answer first, then stop: the reply must leave before the connection closes.
        asyncio.get_running_loop().call_later(0.2, self.request_stop, EXIT_WORKER_STOP)

    @schema_method
    async def list_datasets(self, context: dict | None = None) -> dict:
        """The datasets the caller may read: {dataset_id: {name, description, public, zarr_stores, manifest}}."""
        return await self.call("datasets", "list_datasets", context)

    # ---- apps (bioengine-apps) -------------------------------------------------------------------------
    def _admin(self, context: Any, action: str) -> None:
        check_permissions(context, self.admin_users, f"'{action}' (admin only)")

    @schema_method
    async def upload_app(
        self,
        files: list = Field(
            ...,
            description="The app's files: [{name, content, type: 'text' | 'base64'}], incl. manifest.yaml.",
        ),
        workspace: str | None = Field(
            None, description="Upload into this workspace instead (needs hypha_token)."
        ),
        hypha_token: str | None = Field(None, description="Token for `workspace`."),
        context: dict | None = None,
    ) -> str:
        """Validate and store an app as an artifact; returns 'workspace/alias'.

        Admins only, unless both `workspace` and `hypha_token` are given (the upload then goes into
        that workspace with that token).
        """
        if workspace is None and hypha_token is None:
            self._admin(context, "upload_app")
        return await self.call(
            "apps", "upload_app", context, call_timeout=120.0,
            files=files, workspace=workspace, hypha_token=hypha_token,
        )  # fmt: skip

    @schema_method
    async def list_apps(self, context: dict | None = None) -> dict:
        """Uploaded app artifacts: {artifact_id: {manifest, versions, files}} (admin only)."""
        self._admin(context, "list_apps")
        return await self.call("apps", "list_apps", context, call_timeout=30.0)

    @schema_method
    async def get_app_manifest(
        self,
        artifact_id: str = Field(..., description="'alias' or 'workspace/alias'."),
        version: str | None = Field(None, description="A stored version; default the latest."),
        context: dict | None = None,
    ) -> dict:
        """The manifest of an uploaded app (admin only)."""
        self._admin(context, "get_app_manifest")
        return await self.call("apps", "get_app_manifest", context, artifact_id=artifact_id, version=version)

    @schema_method
    async def delete_app(
        self,
        artifact_id: str = Field(..., description="'alias' or 'workspace/alias' in this worker's workspace."),
        context: dict | None = None,
    ) -> None:
        """Delete an uploaded app with all its versions (admin only)."""
        self._admin(context, "delete_app")
        await self.call("apps", "delete_app", context, call_timeout=30.0, artifact_id=artifact_id)

    @schema_method
    async def deploy_app(
        self,
        artifact_id: str = Field(..., description="App artifact ('alias' or 'workspace/alias')."),
        version: str | None = Field(None, description="Artifact version; default the latest."),
        application_id: str | None = Field(
            None, description="Id of the running app; an existing id updates it."
        ),
        application_kwargs: dict | None = Field(None, description="Init kwargs per deployment class."),
        application_env_vars: dict | None = Field(
            None, description="Env vars per class ({ClassName or '*': {KEY: value}}); '_KEY' is a secret."
        ),
        hypha_token: str | None = Field(
            None, description="Given to the app's code as the secret HYPHA_TOKEN."
        ),
        disable_gpu: bool | None = Field(None, description="Run without GPUs (default False)."),
        max_ongoing_requests: int | None = Field(None, ge=1, description="Concurrent calls (default 10)."),
        auto_redeploy: bool | None = Field(None, description="Redeploy when the app fails (default False)."),
        authorized_users: list | dict | None = Field(
            None, description="Who may call the app: [users] or {method or '*': [users]}."
        ),
        wait: bool = Field(
            False,
            description="Return only once the app is RUNNING with its Hypha service registered; "
            "raise with the reason if it fails, or when `timeout` runs out.",
        ),
        timeout: float = Field(
            300.0, gt=0, le=3600, description="Seconds to wait for RUNNING (with wait=True)."
        ),
        context: dict | None = None,
    ) -> str:
        """Deploy or update an app on Ray Serve (admin only); returns its application id.

        Without `wait` it returns at once and the deployment goes on in the background (follow it
        with wait_for_app or get_app_status). On an update, parameters left out keep their previous
        values; an unchanged app is not redeployed.
        """
        self._admin(context, "deploy_app")
        return await self.call(
            "apps", "deploy_app", context, call_timeout=120.0 + (float(timeout) if wait else 0.0),
            artifact_id=artifact_id, version=version, application_id=application_id,
            application_kwargs=application_kwargs, application_env_vars=application_env_vars,
            hypha_token=hypha_token, disable_gpu=disable_gpu, max_ongoing_requests=max_ongoing_requests,
            auto_redeploy=auto_redeploy, authorized_users=authorized_users, wait=wait, timeout=timeout,
        )  # fmt: skip

    @schema_method
    async def wait_for_app(
        self,
        application_id: str = Field(..., description="Id of a deployed app."),
        timeout: float = Field(300.0, gt=0, le=3600, description="Seconds to wait at most."),
        context: dict | None = None,
    ) -> dict:
        """Wait until an app is RUNNING with its Hypha service registered (admin only); its status.

        Returns the app's get_app_status entry, with `service_ids[0]["websocket_service_id"]` set.
        Raises with the failure reason when the app is DEPLOY_FAILED or UNHEALTHY or is stopped,
        and a timeout error naming the last state when `timeout` runs out.
        """
        self._admin(context, "wait_for_app")
        return await self.call(
            "apps", "wait_for_app", context, call_timeout=float(timeout) + 30.0,
            application_id=application_id, timeout=timeout,
        )  # fmt: skip

    @schema_method
    async def stop_app(
        self,
        application_id: str = Field(..., description="Id of a running app."),
        context: dict | None = None,
    ) -> dict:
        """Stop an app (admin only); it is removed in the background.

        Returns {application_id, status, message}: "stopping", or "already stopping" / "already
        stopped" for an app stopped before; an app this worker never deployed is an error.
        """
        self._admin(context, "stop_app")
        return await self.call(
            "apps", "stop_app", context, call_timeout=30.0, application_id=application_id
        )  # fmt: skip

    @schema_method
    async def stop_all_apps(
        self,
        timeout_seconds: float = Field(180.0, gt=0, description="Seconds to wait for the apps to be gone."),
        context: dict | None = None,
    ) -> dict:
        """Stop every app and wait until they are gone (admin only): {stopped, still_running}."""
        self._admin(context, "stop_all_apps")
        return await self.call(
            "apps", "stop_all_apps", context, call_timeout=float(timeout_seconds) + 30.0,
            timeout_seconds=timeout_seconds,
        )  # fmt: skip

    @schema_method
    async def get_app_status(
        self,
        application_ids: list | str | None = Field(None, description="App ids; default every app."),
        logs_tail: int = Field(30, ge=-1, description="Log lines per replica (-1 all, 0 none)."),
        context: dict | None = None,
    ) -> dict:
        """Status of apps keyed by id: states, failure reasons, methods, service ids (any caller).

        Admins also see kwargs, env vars (secrets masked), access rules and replica logs.
        """
        return await self.call(
            "apps", "get_app_status", context, call_timeout=60.0,
            application_ids=application_ids, logs_tail=logs_tail,
        )  # fmt: skip

    @schema_method
    async def list_app_directories(self, context: dict | None = None) -> list:
        """Each app's folder: [{name, path, is_running, size_bytes}] (admin only)."""
        self._admin(context, "list_app_directories")
        return await self.call("apps", "list_app_directories", context, call_timeout=30.0)

    @schema_method
    async def clear_app_directory(
        self,
        application_id: str = Field(
            ..., description="Name of the app's folder; the app must not be running."
        ),
        context: dict | None = None,
    ) -> None:
        """Delete an app's folder (admin only)."""
        self._admin(context, "clear_app_directory")
        await self.call(
            "apps", "clear_app_directory", context, call_timeout=30.0, application_id=application_id
        )
