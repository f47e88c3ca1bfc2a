# mypy: disable-error-code="empty-body"
"""The public API of the worker (Hypha service ``bioengine-worker``), declared once.

Each stub below is one method: its parameters with their pydantic fields, its docstring, the
service that implements it, who may call it, how long the gateway waits for it and what it
raises. The gateway builds its methods from these, the internal services check their
implementations against them, and ``docs/api.md`` and ``docs/SKILL.md`` are generated from them
(``python -m bioengine_common.contracts --write docs``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ._model import Access, Api, CallTimeout

ADMIN = Access.ADMIN
ANYONE = Access.ANYONE

#: Longest wait_for_app / deploy_app(wait=True) a caller may ask for, seconds.
WAIT_MAX_S = 3600.0

WORKER = Api(
    "bioengine-worker",
    "BioEngine worker: run bioimage AI apps, datasets and code on this worker's compute.",
)

_NOT_AN_APP_ID = "`application_id` is not an application id"

# ---- the worker itself (the gateway) --------------------------------------------------------------


@WORKER.method("gateway", ANYONE)
async def get_status() -> dict:
    """Status of the worker: versions, uptime, readiness and each internal service (up or down, with the error).

    `is_ready` is true when every internal service is up and ready; `not_ready_reasons` says
    why not, one `"<service>: <reason>"` line per cause. `admin_users` is shown to admins only.
    `ray_cluster.usage_history` is the last hour of cluster totals, one point per 30 s; in slurm
    mode `ray_cluster.slurm.job_script` (the script a new worker job gets) is shown to admins
    only. `dashboard_url` is where the Hypha server serves the worker's dashboard page.
    """


@WORKER.method("gateway", ANYONE)
async def check_access() -> bool:
    """Whether the caller is an admin of this worker. Never raises."""


@WORKER.method("gateway", ADMIN)
async def stop_worker(
    blocking: bool = Field(False, description="Accepted for compatibility; the call always returns at once."),
) -> None:
    """Stop the whole worker gracefully (admin only): this service disappears from Hypha, then
    the supervisor stops the other services and the cluster."""


@WORKER.method("gateway", ADMIN)
async def get_logs(
    tail: int = Field(100, description="Number of lines from the end of each log.", ge=1, le=10000),
) -> dict:
    """The last lines of each service's log, keyed by service (admin only).

    A service that is down gives `["unavailable: <error>"]`.
    """


# ---- code (bioengine-cluster) ---------------------------------------------------------------------


@WORKER.method(
    "cluster",
    ADMIN,
    timeout=CallTimeout(30.0, plus="timeout"),
    callbacks=("write_stdout", "write_stderr"),
    raises={
        "InvalidRequest": "bad `remote_options` (the message names the field)",
        "ResourceUnavailable": "no node could ever hold the request (nor, in slurm mode, a worker "
        "job of the configured size); a request that waits for busy nodes or a scale-up is run",
        "ServiceUnavailable": "the Ray cluster is not ready",
    },
)
async def run_code(
    code: str | None = Field(None, description="Python source defining the function (mode 'source')."),
    function_name: str = Field("analyze", description="Name of the function to call in `code`."),
    func_bytes: bytes | None = Field(None, description="A cloudpickled callable (mode 'pickle')."),
    mode: str = Field("source", description="'source' or 'pickle'."),
    args: list | None = Field(None, description="Positional arguments."),
    kwargs: dict | None = Field(None, description="Keyword arguments."),
    remote_options: dict | None = Field(
        None,
        description="Ray task options: num_cpus (default 1), num_gpus, memory (bytes), runtime_env, "
        "resources, accelerator_type, max_retries.",
    ),
    write_stdout: Any = Field(None, description="Called with each stdout line while the code runs."),
    write_stderr: Any = Field(None, description="Called with each stderr line while the code runs."),
    timeout: float = Field(180.0, gt=0, description="Seconds before the task is cancelled."),
) -> dict:
    """Run a Python function in a Ray task on the worker's cluster (admin only).

    Returns {result, stdout, stderr}, or {error, traceback, stdout, stderr}; never raises for
    errors of the code itself. stdout and stderr lines reach the callbacks while the code runs.
    On timeout the task is cancelled and the error result holds the lines printed before it.
    """


# ---- datasets (bioengine-datasets) ----------------------------------------------------------------


@WORKER.method("datasets", ANYONE)
async def list_datasets() -> dict:
    """The datasets the caller may read: {dataset_id: {name, description, public, zarr_stores, manifest,
    size_bytes}} (size_bytes once measured: a walk of its files, repeated every --size-interval)."""


# ---- app artifacts (bioengine-apps) ---------------------------------------------------------------


@WORKER.method(
    "apps",
    ADMIN,
    timeout=CallTimeout(120.0),
    admin_unless=("workspace", "hypha_token"),
    raises={
        "InvalidRequest": "only one of `workspace` and `hypha_token` is given, the files or "
        "the manifest are not valid (the message says what is wrong), or `public` for an app "
        "uploaded private before",
        "ServiceUnavailable": "the artifact store is not available",
    },
)
async def upload_app(
    files: list = Field(
        ..., description="The app's files: [{name, content, type: 'text' | 'base64'}], incl. manifest.yaml."
    ),
    workspace: str | None = Field(
        None, description="Upload into this workspace instead (needs hypha_token)."
    ),
    hypha_token: str | None = Field(None, description="Token for `workspace`."),
    public: bool = Field(
        False,
        description="A new app goes into the collection anyone may read ('applications-public'): "
        "its files and its frontend page. An app keeps the collection of its first upload.",
    ),
) -> str:
    """Validate and store an app as an artifact of collection 'applications' ('applications-public' with `public`); returns 'workspace/alias'.

    Admins only, unless both `workspace` and `hypha_token` are given: then the upload goes into
    that workspace with that token. An app whose manifest names a `frontend_entry` (a file of
    the app, e.g. `frontend/index.html`) gets its frontend served by the Hypha server from that
    file's folder; get_app_status shows its `static_site_url`.
    """


@WORKER.method(
    "apps",
    ADMIN,
    timeout=CallTimeout(30.0),
    raises={"ServiceUnavailable": "the artifact store is not available"},
)
async def list_apps() -> dict:
    """Uploaded app artifacts: {artifact_id: {manifest, format_version, versions, files, public}} (admin only)."""


@WORKER.method(
    "apps",
    ADMIN,
    raises={
        "NotFound": "no such app artifact or version",
        "InvalidRequest": "`artifact_id` is empty or not in this worker's workspace",
    },
)
async def get_app_manifest(
    artifact_id: str = Field(..., description="'alias' or 'workspace/alias'."),
    version: str | None = Field(None, description="A stored version; default the latest."),
) -> dict:
    """The manifest of an uploaded app (admin only)."""


@WORKER.method(
    "apps",
    ADMIN,
    timeout=CallTimeout(30.0),
    raises={
        "NotFound": "no such app artifact",
        "InvalidRequest": "`artifact_id` is empty or not in this worker's workspace",
    },
)
async def delete_app(
    artifact_id: str = Field(..., description="'alias' or 'workspace/alias' in this worker's workspace."),
) -> None:
    """Delete an uploaded app with all its versions (admin only). Running apps keep running."""


@WORKER.method(
    "apps",
    ADMIN,
    timeout=CallTimeout(30.0),
    raises={
        "NotFound": "no such app artifact, or it has no such version",
        "InvalidRequest": "`artifact_id` is not in this worker's workspace, the version is not a "
        "development version (its tag lacks 'dev'), it is the app's only version, or a deployed "
        "app runs it",
    },
)
async def delete_app_version(
    artifact_id: str = Field(..., description="'alias' or 'workspace/alias' in this worker's workspace."),
    version: str = Field(..., description="A development version of the app: its tag contains 'dev'."),
) -> str:
    """Delete one development version of an uploaded app (admin only); returns the artifact id.

    Only versions whose tag contains 'dev' (e.g. '1.2.0.dev3'), never the app's only version,
    and never one a deployed app runs (stop it first). Releases go with the whole app
    (delete_app).
    """


# ---- deployments (bioengine-apps) -----------------------------------------------------------------


@WORKER.method(
    "apps",
    ADMIN,
    timeout=CallTimeout(120.0, plus="timeout", when="wait"),
    raises={
        "InvalidRequest": "a bad `application_id`, `authorized_users`, `application_env_vars`, "
        "`scaling` (an unknown class is named) or `ice_servers`, or an app whose files do not "
        "pass the checks (the message lists the problems)",
        "NotFound": "no such app artifact or version",
        "ResourceUnavailable": "the app's replicas could never fit on the cluster",
        "AppFailed": "with `wait`: the app failed to deploy (with the reason)",
        "TimeoutError": "with `wait`: `timeout` ran out (the message names the last state)",
        "ServiceUnavailable": "apps-svc is not connected to the Ray cluster",
    },
)
async def deploy_app(
    artifact_id: str = Field(..., description="App artifact ('alias' or 'workspace/alias')."),
    version: str | None = Field(None, description="Artifact version; default the latest."),
    application_id: str | None = Field(None, description="Id of the running app; an existing id updates it."),
    application_kwargs: dict | None = Field(
        None, description="Init kwargs per deployment class: {ClassName: {...}}."
    ),
    application_env_vars: dict | None = Field(
        None, description="Env vars per class ({ClassName or '*': {KEY: value}}); '_KEY' is a secret."
    ),
    hypha_token: str | None = Field(None, description="Given to the app's code as the secret HYPHA_TOKEN."),
    disable_gpu: bool | None = Field(None, description="Run without GPUs (default False)."),
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="Concurrent calls through the app's service (default 10)."
    ),
    auto_redeploy: bool | None = Field(None, description="Redeploy when the app fails (default False)."),
    authorized_users: list | dict | None = Field(
        None,
        description="Who may call the app: [users] or {method or '*': [users]}; default the manifest's.",
    ),
    wait: bool = Field(
        False,
        description="Return only once the app is RUNNING with its Hypha service registered; "
        "raise with the reason if it fails, or when `timeout` runs out.",
    ),
    timeout: float = Field(
        300.0, gt=0, le=WAIT_MAX_S, description="Seconds to wait for RUNNING (with wait=True)."
    ),
    scaling: dict | None = Field(
        None,
        description="Replicas per deployment class: {ClassName: {num_replicas: n} or "
        "{autoscaling_config: {...Ray Serve autoscaling options}}}; replaced whole on an update.",
    ),
    proxy_memory_in_gb: float | None = Field(
        None, gt=0, description="Memory the app's proxy replica reserves, GiB (default: none reserved)."
    ),
    debug: bool | None = Field(None, description="DEBUG log level for the app's proxy (default False)."),
    ice_servers: list | None = Field(
        None,
        description="ICE servers for the app's WebRTC service: [{urls, username?, credential?}] "
        "(default: hypha-rpc's public STUN server; none when Hypha is on loopback).",
    ),
) -> str:
    """Deploy or update an app on Ray Serve (admin only); returns its application id.

    Without `wait` it returns at once and the deployment goes on in the background (follow it
    with wait_for_app or get_app_status). On an update, parameters left out keep their previous
    values; an unchanged app is not redeployed and its record (last_updated_at) is kept.
    """


@WORKER.method(
    "apps",
    ADMIN,
    timeout=CallTimeout(30.0, plus="timeout"),
    raises={
        "InvalidRequest": _NOT_AN_APP_ID,
        "NotFound": "this worker deployed no app of that id",
        "AppFailed": "the app is DEPLOY_FAILED or UNHEALTHY (with the reason), or was stopped",
        "TimeoutError": "`timeout` ran out (the message names the last state; the app keeps deploying)",
    },
)
async def wait_for_app(
    application_id: str = Field(..., description="Id of a deployed app."),
    timeout: float = Field(300.0, gt=0, le=WAIT_MAX_S, description="Seconds to wait at most."),
) -> dict:
    """Wait until an app is RUNNING with its Hypha service registered (admin only); its status.

    The status is get_app_status's entry for the app: `service_ids[0]["websocket_service_id"]`
    is set. Raises with the failure reason when the app is DEPLOY_FAILED or UNHEALTHY (an
    auto_redeploy app gets its retries first) or is stopped, and a TimeoutError naming the last
    state when `timeout` runs out (the app keeps deploying).
    """


@WORKER.method(
    "apps",
    ADMIN,
    timeout=CallTimeout(30.0),
    raises={
        "InvalidRequest": _NOT_AN_APP_ID,
        "NotFound": "this worker never deployed an app of that id",
        "ServiceUnavailable": "apps-svc is not connected to the Ray cluster",
    },
)
async def stop_app(
    application_id: str = Field(..., description="Id of a running app."),
) -> dict:
    """Stop an app (admin only); Serve removes it in the background.

    Returns {application_id, status, message}: status "stopping", or, for an app stopped
    before, "already stopping" (Serve is still removing it) or "already stopped". An app this
    worker never deployed is an error naming it.
    """


@WORKER.method(
    "apps",
    ADMIN,
    timeout=CallTimeout(30.0, plus="timeout_seconds"),
    raises={"ServiceUnavailable": "apps-svc is not connected to the Ray cluster"},
)
async def stop_all_apps(
    timeout_seconds: float = Field(180.0, gt=0, description="Seconds to wait for the apps to be gone."),
) -> dict:
    """Stop every app and wait until Serve has removed them (admin only): {stopped, still_running}."""


@WORKER.method("apps", ANYONE, timeout=CallTimeout(60.0))
async def get_app_status(
    application_ids: list | str | None = Field(None, description="App ids; default every app."),
    logs_tail: int = Field(30, ge=-1, description="Log lines per replica (-1 all, 0 none)."),
    deployment_logs: dict | None = Field(
        None,
        description="Log lines per replica for some deployments, overriding `logs_tail`: "
        "{deployment name: lines (-1 all, 0 none)}.",
    ),
) -> dict:
    """Status of apps, keyed by application id: Serve states, failure reasons, methods, service ids (anyone).

    Admins also see kwargs, env vars (secrets masked), access rules and replica logs.
    `static_site_url` is where the Hypha server serves the app's frontend, with the query
    `?server=...&ws_service_id=...&webrtc_service_id=...` its page connects with (None when the
    app has no frontend or its service is not registered yet).
    """


@WORKER.method("apps", ADMIN, timeout=CallTimeout(30.0))
async def list_app_directories() -> list:
    """Each app's folder under the apps dir: [{name, path, is_running, size_bytes}] (admin only)."""


@WORKER.method(
    "apps",
    ADMIN,
    timeout=CallTimeout(30.0),
    raises={
        "InvalidRequest": "not an application id (no paths), or the app is running (stop it first)",
        "NotFound": "no folder of that name under the apps dir",
    },
)
async def clear_app_directory(
    application_id: str = Field(..., description="Name of the app's folder; the app must not be running."),
) -> None:
    """Delete an app's folder (files, HOME) under the apps dir (admin only)."""
