"""The ``bioengine-apps`` service: app artifacts, deployments on Ray Serve, status and control.

apps-svc is a Ray driver of the worker's cluster (address from ``bioengine-cluster``). It never
imports app code: it checks app files statically, places them under ``--apps-dir`` and asks the
``AppDeployer`` actor (``bioengine_app_runtime``) to build and submit them inside Ray. The
desired state of every app is a record in apps-svc's workspace dir (:mod:`._store`), so a
restarted apps-svc finds its apps (they keep serving through their own Hypha services
meanwhile), and after a restart of the Ray head, which takes Serve and every app with it,
apps-svc deploys them again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import Field

from bioengine import BioEngineUserError
from bioengine import __version__ as SDK_VERSION
from bioengine.composition import validate_application_kwargs
from bioengine_app_format import (
    FORMAT_06,
    AppAnalysis,
    analyze_app,
    check_authorized_users,
    decode_files,
    format_version_of,
    load_manifest,
    replica_files,
    validate_upload,
)
from bioengine_app_runtime import App06
from bioengine_app_runtime import kv as runtime_kv
from bioengine_app_runtime.app06 import (
    AppCodeError,
    deployment_resources,
    discover,
    entry_methods,
    installer_error,
    size_gpus,
)
from bioengine_app_runtime.kv import RayKV
from bioengine_common import (
    AppFailed,
    BioEngineService,
    InvalidRequest,
    NotFound,
    RayCalls,
    ResourceUnavailable,
    ServiceSettings,
    ServiceUnavailable,
    connect,
    connect_driver,
    create_context,
    error_summary,
    ray_environment,
    within,
)
from bioengine_common.contracts import worker
from bioengine_common.tracing import trace_carrier

from ._artifacts import ArtifactStore, static_site_url
from ._deploy import (
    DeployRequest,
    DiscoveredSpecs,
    WorkerFacts,
    app06_deployments,
    build_record,
    build_spec,
    env_scope_problems,
    fit_request,
    merge_with_previous,
    resolve_env,
    resources_grow,
    reusable_spec,
    secrets_revision,
    settle_unchanged,
    token_owner_problem,
)
from ._metrics import ServeCounts, count_serve
from ._metrics import families as metric_families
from ._options import ice_server_problems, parse_startup_applications, scaling_problems
from ._serve import ServeAdapter, enum_value, plain_message
from ._state import (
    FAILED_STATES,
    AppRecord,
    AppsKV,
    after_head_restart,
    apply_bookkeeping,
    failure_reason,
    format_time,
    newer_records_in_kv,
    plan_reconcile,
    reported_state,
    resolve_authorized_users,
    session_started_at,
    spec_hash,
    unavailable_message,
    wait_outcome,
)
from ._store import StateStore

_STANDARD_RESOURCES = ("num_cpus", "num_gpus", "memory")
_APP_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_WORDS = ("bright", "calm", "swift", "quiet", "bold", "keen", "brave", "lucid")
_NOUNS = ("cell", "nucleus", "tissue", "spindle", "axon", "organoid", "membrane", "vesicle")
#: Seconds a status call waits for Serve before answering with what apps-svc knows.
SERVE_STATUS_TIMEOUT_S = 5.0
#: Seconds a probe of the artifact store (a file listing, which reaches its S3 storage) is trusted,
#: and how long it may take: a store down fails at once; a slow answer on a busy machine (seen
#: at 5-10 s with both cores loaded) is still an answer.
ARTIFACT_PROBE_TTL_S = 5.0
ARTIFACT_PROBE_TIMEOUT_S = 20.0
#: Seconds between the background probes while the store answers. Each listing stops the Hypha
#: server for 0.1 to 0.25 s on this 2-core machine (it builds an S3 client per call), during
#: which it routes no message of anyone's: every 10 s that was a visible stall of every call.
#: A store that failed, or was never checked, is probed every 2 x TTL to see it back soon; a
#: call that needs the store probes it itself once the last probe is older than the TTL.
ARTIFACT_PROBE_HEALTHY_S = 60.0


def artifact_probe_due(ok: bool | None, since_last_s: float) -> bool:
    """Whether the monitor probes the artifact store now: the last probe said ``ok`` (None: none
    answered yet) and was ``since_last_s`` seconds ago."""
    return since_last_s >= (ARTIFACT_PROBE_HEALTHY_S if ok else 2 * ARTIFACT_PROBE_TTL_S)


#: Longest wait between two tries to connect to the Ray cluster after the connection was lost.
RAY_RETRY_MAX_S = 3.0
#: Seconds between tries to connect while apps-svc starts (never connected yet): the cluster
#: service answers "not ready" cheaply, and the worker is ready as soon as this connection is.
RAY_RETRY_STARTING_S = 1.0
#: Seconds between two looks at an app's state while waiting for it (wait_for_app).
WAIT_POLL_S = 0.5
#: Stopped app ids remembered, so stopping one again is answered plainly.
STOPPED_MEMORY = 500
#: Tries of a startup app's deploy while a dependency (the artifact store) is unavailable, and
#: seconds between them.
STARTUP_TRIES = 10
STARTUP_RETRY_S = 3.0
#: Seconds an artifact's view_config (its frontend) is remembered for get_app_status.
VIEW_CONFIG_TTL_S = 30.0
#: How long letting go of a lost Ray cluster waits for our threads still inside a Ray call (a
#: status query on a dead head ends within its own 10 s) before shutting the driver down all the
#: same (a KV call on a dead GCS may block until Ray gives up on it, 60 s, and ends the process).
RAY_IDLE_WAIT_S = 15.0


def _log_lines(logs_tail: int, deployment_logs: dict | None) -> Callable[[str], int]:
    """Log lines per replica of a deployment: ``deployment_logs``' entry for it, else ``logs_tail``.
    Raises InvalidRequest for an entry that is not a whole number >= -1."""
    overrides: dict[str, int] = {}
    for name, value in (deployment_logs or {}).items():
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise InvalidRequest(
                f"deployment_logs['{name}']: log lines must be a whole number >= -1 (-1 all, 0 none)"
            )
        overrides[str(name)] = value
    return lambda name: overrides.get(name, int(logs_tail))


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def _rounded(resources: dict[str, float]) -> dict[str, float]:
    """Resource figures for people: 0.30000000000000004 CPUs is 0.3."""
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in resources.items()}


class AppsSettings(ServiceSettings):
    apps_dir: Path | None = Field(
        None, description="Where app files and app HOME dirs go; default <workspace-dir>/apps."
    )
    local_apps_dir: Path | None = Field(
        None,
        description="Development: deploy an app from <dir>/<artifact alias>/ (manifest.yaml and .py "
        "files) instead of the artifact manager when that folder exists.",
    )
    default_app_cpus: float = Field(
        0.1, ge=0, description="CPUs a deployment reserves when its decorator does not say."
    )
    cluster_service_id: str = Field("bioengine-cluster", description="Service id of the cluster service.")
    datasets_service_id: str = Field("bioengine-datasets", description="Service id of the datasets service.")
    reconcile_interval: float = Field(5.0, gt=0, description="Seconds between reconciliations with Serve.")
    app_token_days: float = Field(
        30.0, gt=0, description="Lifetime of the token each app uses to register its Hypha service."
    )
    startup_applications: str | None = Field(
        None,
        description="Apps to deploy once the Ray cluster is ready: a JSON list of deploy_app "
        'keyword arguments, e.g. \'[{"artifact_id": "demo-app", "application_id": "demo"}]\'; '
        "${VAR} in a string is taken from the environment. A bad entry or a failed deploy is "
        "logged and shown in get_status (startup_applications), never fatal.",
    )


def _code_hash(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def _session_name() -> str:
    """The session of the Ray cluster this driver is connected to: new with every head start."""
    import ray

    node: Any = ray._private.worker.global_worker.node
    return str(node.session_name)


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


def _accepts(address: str, timeout: float = 1.0) -> tuple[bool | None, str]:
    """Does the Ray head (GCS or Ray Client port of ``address``) accept TCP connections? True,
    False (refused: nothing listens), or None (no answer in time: maybe only a busy machine)."""
    try:
        host, port = _host_port(address)
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except ConnectionRefusedError:
        return False, f"{address} refuses connections"
    except TimeoutError:
        return None, f"{address} did not accept a connection within {timeout:g} s"
    except OSError as exc:
        return False, f"{address} is unreachable ({exc.strerror or exc})"
    except ValueError:
        return False, f"'{address}' is not a host:port address"


_RETRYING = re.compile(r"\s*\(retrying (in|every) \d+ s\)")
_UNAVAILABLE = re.compile(r"^(bioengine_common\.errors\.)?ServiceUnavailable: ")


def ray_retry_delay(failures: int, was_connected: bool) -> float:
    """Seconds before the next try to connect to the Ray cluster after ``failures`` failed ones:
    every RAY_RETRY_STARTING_S while starting; once a connection was lost, 2 s then
    RAY_RETRY_MAX_S."""
    if not was_connected:
        return RAY_RETRY_STARTING_S
    return float(min(2.0**failures, RAY_RETRY_MAX_S))


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


class AppsService(BioEngineService):
    name = "apps"
    service_id = "bioengine-apps"
    distribution = "apps-svc"
    description = "Uploads, deploys and exposes AI model apps on Ray Serve."
    settings_model = AppsSettings
    settings: AppsSettings

    def __init__(self, settings: AppsSettings):
        super().__init__(settings)
        os.environ.update(ray_environment())
        self.serve = ServeAdapter()
        #: The apps' records and secrets in Ray's KV store (blocking calls: run through _ray).
        self.kv: AppsKV = RayKV()
        self.store = StateStore(settings.workspace_dir.expanduser().resolve() / "apps-state")
        self.records: dict[str, AppRecord] = {}
        self.connected = False
        self.ray_error: str | None = "not connected to the Ray cluster yet"
        #: Connected to Ray once: a later failure to connect backs off (ray_retry_delay).
        self._was_connected = False
        self.ray_address: str | None = None
        #: Since when apps-svc has had no Ray connection (wall clock), and whether the head is
        #: known to be down (it stopped accepting connections) rather than just unreachable.
        self.ray_down_since: float | None = time.time()
        self.head_down = False
        self.session: str | None = None
        #: Last status Serve reported for each app, and when: {app_id: (status, time)}.
        self.last_seen: dict[str, tuple[str, float]] = {}
        #: Apps and replicas by state at the last look at Serve, for the Prometheus gauges.
        self.serve_counts: ServeCounts | None = None
        self.artifact_probe: dict[str, Any] = {"ok": None, "reason": "not checked yet", "checked_at": None}
        self._artifact_probe_at = -1e9
        self._slow_probes = 0
        #: Ray calls run here, so one hung on a dead head never starves other threads.
        self._ray_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="apps-ray")
        #: Those calls: ray.shutdown() never runs beside one (see RayCalls).
        self.ray_calls = RayCalls()
        self.decisions: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self._lock = asyncio.Lock()
        self.discovered = DiscoveredSpecs()
        self._retry_at = 0.0
        self._failures = 0
        self._artifacts: ArtifactStore | None = None
        #: App ids stopped through this service, and when: {app_id: time}. Stopping one again
        #: says "already stopped" instead of "unknown app".
        self.stopped: dict[str, float] = {}
        #: GPUs in the Ray cluster (refreshed while reconciling); GPU fields of an app's status
        #: are shown only on a cluster with GPUs or for an app that asked for them.
        self.cluster_gpus = 0.0
        #: The startup apps and how their deploy went: [{artifact_id, application_id, status, error}].
        self.startup_apps: list[dict[str, Any]] = []
        self._startup_task: asyncio.Task[None] | None = None
        #: {artifact id: (monotonic time, view_config)}: the frontends get_app_status shows.
        self._view_configs: dict[str, tuple[float, Any]] = {}

    @property
    def apps_dir(self) -> Path:
        return (self.settings.apps_dir or self.settings.default_apps_dir()).expanduser().resolve()

    @property
    def artifacts(self) -> ArtifactStore:
        if self._artifacts is None:
            self._artifacts = ArtifactStore(self.hypha.server, self.settings.workspace)
        return self._artifacts

    async def _ray(self, function: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
        """``function(*args)`` (blocking, talks to Ray) in the Ray thread pool, bounded in time
        (the wait; the thread itself ends when Ray answers or its own timeout passes)."""
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(
            loop.run_in_executor(self._ray_pool, partial(self.ray_calls.call, function, *args)), timeout
        )

    async def _release_driver(self) -> None:
        """Shut the Ray driver of a lost cluster down once none of our calls is under way on it,
        or after RAY_IDLE_WAIT_S all the same."""
        try:
            idle = await within(
                asyncio.to_thread(self.ray_calls.shutdown_when_idle, RAY_IDLE_WAIT_S, True),
                RAY_IDLE_WAIT_S + 30,
            )
        except Exception as exc:
            self.logger.warning("Letting go of the Ray cluster failed: %s", error_summary(exc))
            return
        if not idle:
            self.logger.warning(
                "%d Ray call(s) still under way after %.0f s; the driver was shut down all the same",
                self.ray_calls.under_way,
                RAY_IDLE_WAIT_S,
            )

    async def initialize(self) -> None:
        records, problems = await asyncio.to_thread(self.store.load_records)
        for problem in problems:
            self.logger.error("Unreadable app record skipped: %s", problem)
        self.records = records
        self.stopped = await asyncio.to_thread(self.store.load_stopped)
        self.logger.info("%d app(s) on record in %s", len(records), self.store.root)

    # ---- the Ray connection ---------------------------------------------------------------------
    async def _connect_ray(self) -> None:
        cluster = await self.get_internal_service(self.settings.cluster_service_id)
        info = await asyncio.wait_for(cluster.get_connection_info(), 15)
        address = info["address"]
        await asyncio.wait_for(
            # With the cluster's token file (a path on a filesystem shared with bioengine-cluster).
            asyncio.to_thread(
                connect_driver, address, 60.0, info.get("namespace") or "bioengine", info.get("token_file")
            ),
            90,
        )
        # Ray's driver replaces our SIGTERM handling.
        self.install_signal_handlers()
        self.serve.namespace = info.get("namespace") or "bioengine"
        await self._ray(self.serve.start, timeout=60)
        session = await self._ray(_session_name, timeout=15)
        async with self._lock:
            await self._adopt_cluster(session, info)
            self.connected, self.ray_error, self.ray_address, self._failures = True, None, address, 0
            self._was_connected = True
            self.ray_down_since, self.head_down, self.session = None, False, session
            self.logger.info(
                "Connected to Ray at %s (session %s); %d app(s) on record",
                address,
                session,
                len(self.records),
            )
            await self._reconcile()
        if self._startup_task is None and self.settings.startup_applications:
            self._startup_task = asyncio.create_task(self._deploy_startup_apps(), name="startup-apps")

    async def _deploy_startup_apps(self) -> None:
        """Deploy the ``--startup-applications`` (once, after the first connection to Ray), as
        the first admin; every problem is logged and kept in :attr:`startup_apps`, none is fatal."""
        apps, problems = parse_startup_applications(self.settings.startup_applications)
        for problem in problems:
            self.logger.error("Startup app skipped: %s", problem)
            self.startup_apps.append(
                {"artifact_id": None, "application_id": None, "status": "invalid", "error": problem}
            )
        defaults = {
            name: getattr(parameter.default, "default", None)
            for name, parameter in worker.deploy_app.parameters.items()
        }
        admin = next((u for u in self.admin_users if u != "*"), None)
        context = create_context(admin, admin if admin and "@" in admin else None)
        for kwargs in apps:
            entry: dict[str, Any] = {
                "artifact_id": kwargs["artifact_id"],
                "application_id": kwargs.get("application_id"),
                "status": "deploying",
                "error": None,
            }
            self.startup_apps.append(entry)
            app_id: str | None = None
            for attempt in range(STARTUP_TRIES):
                try:
                    app_id = await self.deploy_app(**{**defaults, **kwargs, "wait": False}, context=context)
                    break
                except ServiceUnavailable as exc:  # the artifact store may still be starting
                    entry["error"] = error_summary(exc)
                    if attempt + 1 < STARTUP_TRIES:
                        await asyncio.sleep(STARTUP_RETRY_S)
                except Exception as exc:
                    entry["error"] = error_summary(exc)
                    break
            if app_id is None:
                entry["status"] = "failed"
                self.logger.error(
                    "Startup app %s failed to deploy: %s", kwargs["artifact_id"], entry["error"]
                )
                continue
            entry.update(application_id=app_id, status="submitted", error=None)
            self.logger.info("Startup app %s submitted as %s", kwargs["artifact_id"], app_id)

    async def _adopt_cluster(self, session: str, info: dict[str, Any]) -> None:
        """Bring the records, the secrets in Ray's KV store and the cluster's identity in line
        after (re)connecting; on a new head, mark every deployed app for redeployment."""
        # Records only in Ray's KV store (a replica of apps-svc, or the state of a version that
        # kept them only there): the newer copy wins and is written to disk.
        for record in await self._ray(newer_records_in_kv, self.records, self.kv):
            self.records[record.application_id] = record
            await asyncio.to_thread(self.store.save_record, record)
        # Replicas read their secrets from the KV store, which a new head starts without.
        for app_id in list(self.records):
            value = await asyncio.to_thread(self.store.load_secrets, app_id)
            if value is None:
                value = await self._ray(self.kv.get_secrets, app_id)
                if value is not None:
                    await asyncio.to_thread(self.store.save_secrets, app_id, value)
            if value is not None:
                await self._ray(self.kv.put_secrets, app_id, value)
        known = (await asyncio.to_thread(self.store.load_cluster)).get("session")
        started_at = info.get("head_started_at") or session_started_at(session)
        restart = after_head_restart(self.records, known, session, started_at, now=time.time())
        if restart.restarted:
            for app_id, note in restart.redeploy.items():
                record = self.records[app_id]
                record.recovery_note = note
                record.redeploy_attempts, record.next_redeploy_at, record.gave_up = 0, 0.0, None
                await self._save(record)
            for decision in restart.decisions:
                self.logger.warning("%s", decision.message)
                self.decisions.append(decision.model_dump())
        await asyncio.to_thread(
            self.store.save_cluster,
            {"session": session, "address": info.get("address"), "head_started_at": started_at},
        )

    async def _disconnect_ray(self, reason: str, head_down: bool = False) -> None:
        self.connected = False
        self.ray_error = reason
        self.head_down = head_down
        self.ray_down_since = self.ray_down_since or time.time()
        self.serve.forget()
        await self._release_driver()

    def _require_ray(self) -> None:
        if not self.connected:
            raise ServiceUnavailable(f"apps-svc is not connected to the Ray cluster: {self.ray_error}")

    async def monitor(self) -> None:
        last_reconcile = 0.0
        while True:
            if artifact_probe_due(self.artifact_probe["ok"], time.monotonic() - self._artifact_probe_at):
                with contextlib.suppress(Exception):
                    await self._probe_artifact_store()
            if not self.connected:
                if time.monotonic() >= self._retry_at:
                    try:
                        await self._connect_ray()
                    except Exception as exc:
                        self._failures += 1
                        # Short: the cluster service answers "not ready" cheaply, and a restarted
                        # head should find its apps again within seconds.
                        delay = ray_retry_delay(self._failures, self._was_connected)
                        self._retry_at = time.monotonic() + delay
                        # Without the cluster's own retry note and the remote error's class path.
                        reason = _UNAVAILABLE.sub("", _RETRYING.sub("", error_summary(exc)))
                        if self.head_down:
                            reason = f"Ray head down since {format_time(self.ray_down_since or 0)}: {reason}"
                        if self._was_connected:
                            self.ray_error = f"{reason} (retrying in {delay:.0f} s)"
                        else:
                            self.ray_error = (
                                f"not connected to the Ray cluster yet: {reason} (retrying every {delay:g} s)"
                            )
                        # While starting, a try a second: one warning in ten, the rest at debug level.
                        quiet = not self._was_connected and self._failures % 10 != 1
                        self.logger.log(
                            logging.DEBUG if quiet else logging.WARNING,
                            "Ray cluster not available: %s",
                            self.ray_error,
                        )
                        await self._release_driver()
                await asyncio.sleep(min(1.0, max(0.1, self._retry_at - time.monotonic())))
                continue
            # A head that stops accepting connections is gone (with every app on it): let go of
            # it at once, since Ray ends a driver whose GCS stays away for 60 s.
            alive, reason = await asyncio.to_thread(_accepts, self.ray_address or "")
            self._slow_probes = self._slow_probes + 1 if alive is None else 0
            if alive is False or self._slow_probes >= 3:
                self._slow_probes = 0
                self.logger.error("The Ray head is down: %s; apps are redeployed when it is back", reason)
                self.ray_down_since = time.time()
                await self._disconnect_ray(f"Ray head down: {reason}", head_down=True)
                self._retry_at = time.monotonic() + 1.0
                continue
            if time.monotonic() - last_reconcile >= self.settings.reconcile_interval:
                last_reconcile = time.monotonic()
                try:
                    async with self._lock:
                        await asyncio.wait_for(self._reconcile(), 30)
                except Exception as exc:
                    self.logger.error("Lost the Ray cluster: %s", error_summary(exc))
                    await self._disconnect_ray(f"lost the Ray cluster: {error_summary(exc)}")
            await asyncio.sleep(0.5)

    async def cleanup(self) -> None:
        if self._startup_task is not None:
            self._startup_task.cancel()
        if self.connected:
            await self._disconnect_ray("stopping")
        self._ray_pool.shutdown(wait=False, cancel_futures=True)

    # ---- reconciliation --------------------------------------------------------------------------
    async def _save(self, record: AppRecord) -> None:
        """On disk (what survives the head), and a copy in Ray's KV store for other replicas."""
        await asyncio.to_thread(self.store.save_record, record)
        await self._ray(self.kv.put_record, record.application_id, record.model_dump(mode="json"))

    async def _load_secrets(self, app_id: str) -> dict[str, Any]:
        value = await asyncio.to_thread(self.store.load_secrets, app_id)
        if value is None:
            self._require_ray()  # a clear ServiceUnavailable, not a torn-down driver's AttributeError
            value = await self._ray(self.kv.get_secrets, app_id)
        return dict(value or {})

    async def _save_secrets(self, app_id: str, value: dict[str, Any]) -> None:
        await asyncio.to_thread(self.store.save_secrets, app_id, value)
        self._require_ray()
        await self._ray(self.kv.put_secrets, app_id, value)

    async def _deploy_one(self, record: AppRecord) -> None:
        """Build and submit one app; record the outcome (the caller holds the lock)."""
        digest = spec_hash(record.spec)
        try:
            deploy = partial(self.serve.deploy, telemetry=trace_carrier(self.otlp_endpoint))
            outcome = await self._ray(deploy, record.spec, timeout=150)
        except Exception as exc:
            record.failed_hash, record.last_error = digest, error_summary(exc)
            await self._save(record)
            raise
        record.applied_hash, record.failed_hash, record.last_error = digest, None, None
        await self._save(record)
        self.logger.info(
            "App %s submitted to Serve (build %.2f s, submit %.2f s)",
            record.application_id, outcome.get("build_s", 0.0), outcome.get("submit_s", 0.0),
        )  # fmt: skip

    async def _reconcile(self) -> None:
        """Make Serve run exactly the recorded apps (caller holds the lock)."""
        details = await self._ray(self.serve.details, timeout=SERVE_STATUS_TIMEOUT_S * 2)
        observed = self.serve.observed(details)
        self.serve_counts = count_serve(details, list(self.records))
        now = time.time()
        for app_id, seen in observed.items():
            if app_id in self.records:
                self.last_seen[app_id] = (seen.status, now)
        result = plan_reconcile(self.records, observed, now)
        for app_id, reason in result.give_up.items():
            self.logger.error("App %s: %s", app_id, reason)
        for app_id in apply_bookkeeping(self.records, result, now):
            await self._save(self.records[app_id])
        for app_id in result.deploy:
            try:
                await self._deploy_one(self.records[app_id])
            except Exception as exc:
                self.logger.error("Deploying app %s failed: %s", app_id, error_summary(exc))
        for app_id in result.delete:
            await self._ray(self.serve.delete, app_id)
        with contextlib.suppress(Exception):
            self.cluster_gpus = await self._ray(_cluster_gpus, timeout=5)
        for decision in result.decisions:
            self.logger.info("Reconcile: %s", decision.message)
            self.decisions.append(decision.model_dump())

    # ---- helpers ------------------------------------------------------------------------------------
    def _worker_facts(self) -> WorkerFacts:
        return WorkerFacts(
            server_url=self.settings.server_url,
            workspace=self.settings.workspace,
            datasets_service_id=self.settings.datasets_service_id,
            default_app_cpus=self.settings.default_app_cpus,
            services_users=sorted(self.trusted_callers),
        )

    def _user_ids(self, context: dict[str, Any]) -> list[str]:
        user = context.get("user") or {}
        return [str(v) for v in (user.get("id"), user.get("email")) if v]

    async def _local_files(self, alias: str) -> dict[str, bytes] | None:
        if self.settings.local_apps_dir is None:
            return None
        root = self.settings.local_apps_dir.expanduser().resolve()
        folder = (root / alias).resolve()
        if folder.parent != root or not (folder / "manifest.yaml").is_file():
            return None

        def read() -> dict[str, bytes]:
            files = {}
            for path in sorted(folder.rglob("*")):
                relative = path.relative_to(folder)
                if (
                    path.is_file()
                    and "__pycache__" not in relative.parts
                    and not relative.name.startswith(".")
                ):
                    files[relative.as_posix()] = path.read_bytes()
            return files

        return await asyncio.to_thread(read)

    async def _load_app(
        self, artifact_id: str, version: str | None
    ) -> tuple[dict[str, Any], dict[str, bytes], str]:
        """(manifest, files, source) of an app: the local folder if configured, else the artifact."""
        if not isinstance(artifact_id, str) or not artifact_id.strip():
            raise InvalidRequest("artifact_id must be a non-empty string")
        alias = artifact_id.rsplit("/", 1)[-1]
        files = await self._local_files(alias)
        if files is not None:
            try:
                return load_manifest(files), files, "local"
            except ValueError as exc:
                raise InvalidRequest(f"local app '{alias}': {exc}") from exc
        # No probe first: files fetched before need no S3 call at all, and a fetch that lists
        # files reaches the store anyway (a probe first made loading kept files 101 ms instead
        # of 13 ms here). A store seen down within the probe's TTL fails at once; a fetch that
        # fails is explained by a probe when the store is the cause.
        if self._store_down_recently():
            await self._require_artifact_store()
        try:
            _, files = await self.artifacts.fetch(artifact_id, version)
        except NotFound:
            raise
        except Exception as exc:
            probe = await self._probe_artifact_store(fresh=True)
            if not probe["ok"]:
                raise ServiceUnavailable(f"app artifacts are unavailable: {probe['reason']}") from exc
            raise
        try:
            return load_manifest(files), files, "artifact"
        except ValueError as exc:
            raise InvalidRequest(f"artifact '{artifact_id}': {exc}") from exc

    def _place_files(self, app_id: str, code_hash: str, files: dict[str, bytes]) -> Path:
        """Write the files once per content under <apps_dir>/<app_id>/code-<hash>/ (atomic)."""
        app_dir = self.apps_dir / app_id
        code_dir = app_dir / f"code-{code_hash[:16]}"
        if code_dir.is_dir():
            return code_dir
        staging = app_dir / f".staging-{secrets.token_hex(4)}"
        for name, data in files.items():
            target = (staging / name).resolve()
            if staging.resolve() not in target.parents:
                raise InvalidRequest(f"file name '{name}' leaves the app folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        try:
            staging.rename(code_dir)
        except OSError:  # placed meanwhile by a concurrent deploy of the same content
            shutil.rmtree(staging, ignore_errors=True)
        return code_dir

    async def _check_fit(self, app_id: str, resources: dict[str, float], context: dict[str, Any]) -> None:
        try:
            cluster = await self.get_internal_service(self.settings.cluster_service_id)
            fit = await asyncio.wait_for(
                cluster.check_resources(
                    num_cpus=resources.get("num_cpus", 0.0),
                    num_gpus=resources.get("num_gpus", 0.0),
                    memory=resources.get("memory", 0.0),
                    resources={k: v for k, v in resources.items() if k not in _STANDARD_RESOURCES},
                ),
                15,
            )
        except Exception as exc:
            raise ServiceUnavailable(f"cannot check the cluster's resources: {error_summary(exc)}") from exc
        if fit.get("verdict") == "cannot_fit":
            raise ResourceUnavailable(f"app '{app_id}' cannot be deployed: {fit.get('reason')}")

    async def _app_token(self, previous: dict[str, Any]) -> dict[str, Any]:
        """``{proxy_token, proxy_token_expires}`` for the app's Hypha service: the previous token
        while it has more than a third of its life left, else a new one."""
        lifetime = self.settings.app_token_days * 86400
        if (
            previous.get("proxy_token")
            and previous.get("proxy_token_expires", 0) > time.time() + lifetime / 3
        ):
            return {k: previous[k] for k in ("proxy_token", "proxy_token_expires")}
        expires = time.time() + lifetime
        try:
            token = await self.hypha.server.generate_token(
                {
                    "workspace": self.settings.workspace,
                    "permission": "read_write",
                    "expires_in": int(lifetime),
                }
            )
        except Exception as exc:
            # Never fall back to this service's own token: an app holding it would be trusted
            # to speak for any caller. Only workspace admins may generate tokens.
            raise ServiceUnavailable(
                "cannot generate a token for the app's Hypha service (apps-svc's token needs admin "
                f"permission on workspace '{self.settings.workspace}'): {error_summary(exc)}"
            ) from exc
        return {"proxy_token": str(token), "proxy_token_expires": expires}

    # ---- artifacts ----------------------------------------------------------------------------------
    async def _probe_artifact_store(self, fresh: bool = False) -> dict[str, Any]:
        """List the files of the apps collection: an answer needs Hypha, the artifact manager
        and the S3 store behind it. Cached for ARTIFACT_PROBE_TTL_S unless ``fresh`` (after a
        call to the store failed)."""
        if not fresh and time.monotonic() - self._artifact_probe_at < ARTIFACT_PROBE_TTL_S:
            return self.artifact_probe
        self._artifact_probe_at = time.monotonic()
        try:
            await asyncio.wait_for(self.artifacts.probe(), ARTIFACT_PROBE_TIMEOUT_S)
            ok, reason = True, None
        except TimeoutError:
            ok, reason = False, f"the artifact store did not answer within {ARTIFACT_PROBE_TIMEOUT_S:.0f} s"
        except Exception as exc:
            ok, reason = False, f"the artifact store failed: {error_summary(exc)}"
        if ok != self.artifact_probe["ok"]:
            if ok:
                self.logger.info("Artifact store available")
            else:
                self.logger.warning("Artifact store unavailable: %s", reason)
        self.artifact_probe = {"ok": ok, "reason": reason, "checked_at": time.time()}
        self._artifact_probe_at = time.monotonic()
        return self.artifact_probe

    def _store_down_recently(self) -> bool:
        """The last probe, within ARTIFACT_PROBE_TTL_S, found the artifact store down."""
        recent = time.monotonic() - self._artifact_probe_at < ARTIFACT_PROBE_TTL_S
        return recent and self.artifact_probe["ok"] is False

    async def _require_artifact_store(self) -> None:
        probe = await self._probe_artifact_store()
        if not probe["ok"]:
            raise ServiceUnavailable(f"app artifacts are unavailable: {probe['reason']}")

    @worker.upload_app.implementation
    async def upload_app(
        self,
        files: list,
        workspace: str | None,
        hypha_token: str | None,
        public: bool,
        caller: dict | None = None,
        context: dict | None = None,
    ) -> str:
        resolved = self.caller_context(context, caller)
        if (workspace is None) != (hypha_token is None):
            raise InvalidRequest("give both workspace and hypha_token, or neither")
        # Admin only without workspace and hypha_token: the contract's rule, applied by
        # ``implementation`` before this body runs.
        try:
            decoded = decode_files(files)
            validate_upload(decoded)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        uploader = (resolved.get("user") or {}).get("id")
        if workspace is None:
            await self._require_artifact_store()
            artifact_id = await self.artifacts.upload(decoded, uploader, public=bool(public))
            self._view_configs.pop(artifact_id, None)
            return artifact_id
        other = await connect(self.settings.server_url, workspace=workspace, token=hypha_token)
        try:
            return await ArtifactStore(other, workspace).upload(decoded, uploader, public=bool(public))
        finally:
            with contextlib.suppress(Exception):
                await other.disconnect()

    @worker.list_apps.implementation
    async def list_apps(self, caller: dict | None = None, context: dict | None = None) -> dict:
        await self._require_artifact_store()
        return await self.artifacts.list_apps()

    @worker.get_app_manifest.implementation
    async def get_app_manifest(
        self,
        artifact_id: str,
        version: str | None,
        caller: dict | None = None,
        context: dict | None = None,
    ) -> dict:
        await self._require_artifact_store()
        return dict((await self.artifacts.get(artifact_id, version)).get("manifest") or {})

    @worker.delete_app.implementation
    async def delete_app(
        self,
        artifact_id: str,
        caller: dict | None = None,
        context: dict | None = None,
    ) -> None:
        await self._require_artifact_store()
        await self.artifacts.delete(artifact_id)

    @worker.delete_app_version.implementation
    async def delete_app_version(
        self,
        artifact_id: str,
        version: str,
        caller: dict | None = None,
        context: dict | None = None,
    ) -> str:
        await self._require_artifact_store()
        full = self.artifacts.full_id(artifact_id)
        record = await self.artifacts.get(full)
        tags = [str(v.get("version")) for v in record.get("versions") or [] if v.get("version")]
        latest = tags[-1] if tags else None
        running = sorted(
            app_id
            for app_id, app in self.records.items()
            if app.artifact_id == full and (app.version or latest) == version
        )
        if running:
            raise InvalidRequest(
                f"version '{version}' of '{full}' is deployed as {', '.join(running)}; stop it first"
            )
        deleted = await self.artifacts.delete_version(full, version)
        self._view_configs.pop(deleted, None)
        self.logger.info("Deleted version %s of app %s", version, deleted)
        return deleted

    # ---- deployments --------------------------------------------------------------------------------
    async def _discover_06(
        self,
        application_id: str,
        artifact_id: str,
        manifest: dict[str, Any],
        files: dict[str, bytes],
        request: DeployRequest,
    ) -> tuple[App06, AppAnalysis]:
        """A 0.6.0 app's classes, kwargs, GPUs and resources: its replica files are placed and
        its entry imported inside Ray (a task of its own), never here; a redeploy of the same
        code reuses the spec found then (:func:`._deploy.reusable_spec`), and so does the same
        code under another id (:class:`._deploy.DiscoveredSpecs`). The author's mistakes
        (an import error, a cycle, bad kwargs) are an InvalidRequest saying which; ``scaling`` is
        checked by the caller against the classes found."""
        code_hash = _code_hash(files)
        code_dir = await asyncio.to_thread(self._place_files, application_id, code_hash, files)
        entry = str(manifest["entry"])
        kwargs = dict(request.application_kwargs or {})
        spec = reusable_spec(
            self.records.get(application_id), str(code_dir), entry, SDK_VERSION
        ) or self.discovered.get(code_hash, entry, SDK_VERSION)
        try:
            if spec is None:
                found = await self._ray(discover, str(code_dir), entry, kwargs, timeout=150)
                spec, init_kwargs, sdk_version = found["spec"], found["kwargs"], found["sdk_version"]
                self.discovered.put(code_hash, entry, sdk_version, spec)
            else:  # the same code as deployed: only the kwargs are new (the SDK's pure check)
                init_kwargs, sdk_version = validate_application_kwargs(spec, kwargs), SDK_VERSION
            if not request.disable_gpu and any(d.get("gpu_memory_mb") for d in spec["deployments"].values()):
                self.cluster_gpus = await self._ray(_cluster_gpus, timeout=5)  # the GPUs of this moment
            num_gpus = {
                key: size_gpus(deployment, bool(request.disable_gpu), self.cluster_gpus)
                for key, deployment in spec["deployments"].items()
            }
            by_class = {d["class_name"]: key for key, d in spec["deployments"].items()}
            scaling = {
                by_class[name]: rule for name, rule in (request.scaling or {}).items() if name in by_class
            }
        except (AppCodeError, BioEngineUserError, ValueError) as exc:
            raise InvalidRequest(f"cannot deploy '{artifact_id}' (entry '{entry}'): {exc}") from exc
        app06 = App06(
            entry=entry,
            spec=spec,
            init_kwargs=init_kwargs,
            num_gpus=num_gpus,
            sdk_version=sdk_version,
        )
        analysis = AppAnalysis(
            entry_class=entry,
            methods=[m["name"] for m in entry_methods(spec)],
            resources=deployment_resources(spec, num_gpus, scaling),
            problems=[] if entry_methods(spec) else [f"'{entry}' publishes no @bioengine.method"],
        )
        return app06, analysis

    @worker.deploy_app.implementation
    async def deploy_app(
        self,
        artifact_id: str,
        version: str | None,
        application_id: str | None,
        application_kwargs: dict | None,
        application_env_vars: dict | None,
        hypha_token: str | None,
        disable_gpu: bool | None,
        max_ongoing_requests: int | None,
        auto_redeploy: bool | None,
        authorized_users: list | dict | None,
        wait: bool,
        timeout: float,
        scaling: dict | None,
        proxy_memory_in_gb: float | None,
        debug: bool | None,
        ice_servers: list | None,
        caller: dict | None = None,
        context: dict | None = None,
    ) -> str:
        resolved = self.caller_context(context, caller)  # an admin: the contract's rule was applied
        self._require_ray()
        if authorized_users is not None:
            problems = check_authorized_users(authorized_users)
            if problems:
                raise InvalidRequest("; ".join(problems))
        problems = scaling_problems(scaling, None) + ice_server_problems(ice_servers)
        if problems:
            raise InvalidRequest("; ".join(problems))
        if application_id is not None and not _APP_ID.match(str(application_id)):
            raise InvalidRequest(
                f"application_id '{application_id}' must be 1-63 lowercase letters, digits or hyphens"
            )
        async with self._lock:
            previous = self.records.get(application_id) if application_id else None
            if application_id is None:
                application_id = self._new_id(artifact_id)
            request = merge_with_previous(
                DeployRequest(
                    version=version,
                    application_kwargs=application_kwargs,
                    disable_gpu=disable_gpu,
                    max_ongoing_requests=max_ongoing_requests,
                    auto_redeploy=auto_redeploy,
                    authorized_users=authorized_users,
                    scaling=scaling,
                    proxy_memory_in_gb=proxy_memory_in_gb,
                    debug=debug,
                    ice_servers=ice_servers,
                ),
                previous,
            )
            manifest, files, source = await self._load_app(artifact_id, request.version)
            problem = token_owner_problem(hypha_token, self.trusted_callers)
            if problem:
                raise InvalidRequest(problem)
            old_secrets = await self._load_secrets(application_id)
            try:
                env = resolve_env(application_env_vars, hypha_token, previous, old_secrets)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from exc
            app06: App06 | None = None
            if format_version_of(manifest) == FORMAT_06:
                files = {name: files[name] for name in replica_files(files)}  # no frontend, docs
                app06, analysis = await self._discover_06(
                    application_id, artifact_id, manifest, files, request
                )
                deployments = app06_deployments(app06.spec)
            else:
                analysis = analyze_app(
                    files, manifest["deployments"], dict(request.application_kwargs or {}),
                    default_num_cpus=self.settings.default_app_cpus, disable_gpu=bool(request.disable_gpu),
                )  # fmt: skip
                deployments = list(manifest["deployments"])
            if analysis.problems:
                raise InvalidRequest(f"cannot deploy '{artifact_id}': " + "; ".join(analysis.problems))
            # The current format's classes are known here; a 0.6.0 app's from its discovered spec.
            class_names = (
                [d["class_name"] for d in app06.spec["deployments"].values()]
                if app06
                else [d.partition(":")[2] for d in manifest["deployments"]]
            )
            problems = scaling_problems(request.scaling, class_names)
            if problems:
                raise InvalidRequest(f"cannot deploy '{artifact_id}': " + "; ".join(problems))
            scope_problems = env_scope_problems(env, deployments)
            if scope_problems:
                raise InvalidRequest(scope_problems[0])
            needed = fit_request(analysis.resources, request.proxy_memory_in_gb)
            if resources_grow(needed, previous):
                await self._check_fit(application_id, needed, resolved)
            code_hash = _code_hash(files)
            code_dir = await asyncio.to_thread(self._place_files, application_id, code_hash, files)
            rules = resolve_authorized_users(
                request.authorized_users,
                manifest.get("authorized_users"),
                self._user_ids(resolved),
                self.admin_users,
            )
            new_secrets = {
                "env": env.secret,
                "hypha_token": env.hypha_token,
                # The proxy's WebRTC service reads them at each offer (TURN credentials are secrets).
                "ice_servers": request.ice_servers,
                **await self._app_token(old_secrets),
            }
            spec = build_spec(
                application_id,
                self.artifacts.full_id(artifact_id) if source == "artifact" else artifact_id,
                request,
                env,
                manifest,
                source,
                code_dir=str(code_dir),
                home_dir=str(self.apps_dir / application_id / "home"),
                authorized_users=rules,
                revision=secrets_revision(previous, env, old_secrets),
                previous=previous,
                worker=self._worker_facts(),
                app06=app06,
            )
            user = resolved.get("user") or {}
            record, unchanged = settle_unchanged(
                build_record(
                    spec,
                    request,
                    env,
                    manifest,
                    source,
                    resources=analysis.resources,
                    methods=analysis.methods,
                    code_hash=code_hash,
                    previous=previous,
                    now=time.time(),
                    updated_by=user.get("email") or user.get("id"),
                ),
                previous,
            )
            await self._submit(record, previous, new_secrets, old_secrets, unchanged)
        self.logger.info(
            "%s app %s (%s, %s)",
            "Unchanged" if unchanged else "Deploying",
            application_id,
            spec.artifact_id,
            source,
        )
        if wait:
            await self._wait(application_id, float(timeout), full=True)
        return application_id

    async def _submit(
        self,
        record: AppRecord,
        previous: AppRecord | None,
        new_secrets: dict[str, Any],
        old_secrets: dict[str, Any],
        unchanged: bool,
    ) -> None:
        """Save a deployment's record and secrets, and hand its spec to Serve unless Serve runs it
        already; a failed build restores the previous deployment (or forgets a new app) and is
        an InvalidRequest. The caller holds the lock."""
        application_id = record.application_id
        await self._save_secrets(application_id, new_secrets)
        self.records[application_id] = record
        await self._save(record)
        if self.stopped.pop(application_id, None) is not None:
            await asyncio.to_thread(self.store.save_stopped, dict(self.stopped))
        details = await self._ray(self.serve.details, timeout=SERVE_STATUS_TIMEOUT_S * 2)
        in_serve = application_id in (details.get("applications") or {})
        if unchanged and in_serve and record.applied_hash == spec_hash(record.spec):
            return
        try:
            await self._deploy_one(record)
        except Exception as exc:
            # Nothing lost: an update leaves the running version as it was.
            if previous is not None:
                self.records[application_id] = previous
                await self._save(previous)
                await self._save_secrets(application_id, old_secrets)
            else:
                await self._forget(application_id)
            raise InvalidRequest(f"building app '{application_id}' failed: {error_summary(exc)}") from exc

    # ---- waiting for an app -------------------------------------------------------------------------
    async def _current_status(self, app_id: str, full: bool) -> dict[str, Any]:
        if not self.connected:
            return self._offline_status(app_id, self.ray_error or "", full)
        try:
            details = await self._ray(self.serve.details, timeout=SERVE_STATUS_TIMEOUT_S)
        except Exception as exc:
            return self._offline_status(app_id, f"Serve did not answer: {error_summary(exc)}", full)
        return await self._status_of(app_id, (details.get("applications") or {}).get(app_id), 0, full)

    async def _wait(self, app_id: str, timeout: float, full: bool) -> dict[str, Any]:
        """The app's status once it is RUNNING (its Hypha service registered); AppFailed when
        it fails or is stopped meanwhile, TimeoutError with its last state when time runs out."""
        if app_id not in self.records:
            raise NotFound(f"no app '{app_id}' is deployed by this worker; deploy it with deploy_app")
        deadline = time.monotonic() + timeout
        while True:
            record = self.records.get(app_id)
            if record is None:
                raise AppFailed(f"app '{app_id}' was stopped while waiting for it to run")
            status = await self._current_status(app_id, full)
            outcome = wait_outcome(status)
            if outcome == "running":
                return status
            # An auto_redeploy app gets more tries, unless apps-svc gave up on it.
            retrying = record.auto_redeploy and not record.gave_up and status["status"] in FAILED_STATES
            if outcome == "failed" and not retrying:
                raise AppFailed(
                    f"app '{app_id}' is {status['status']}: {status.get('reason') or status['message']}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"app '{app_id}' is not running after {timeout:g} s; last state {status['status']}: "
                    f"{status['message'] or 'no message'} (it keeps deploying: see get_app_status)"
                )
            await asyncio.sleep(min(WAIT_POLL_S, remaining))

    @worker.wait_for_app.implementation
    async def wait_for_app(
        self,
        application_id: str,
        timeout: float,
        caller: dict | None = None,
        context: dict | None = None,
    ) -> dict:
        if not isinstance(application_id, str) or not _APP_ID.match(application_id):
            raise InvalidRequest(f"'{application_id}' is not an application id")
        return await self._wait(application_id, float(timeout), full=True)

    def _new_id(self, artifact_id: str) -> str:
        while True:
            candidate = f"{secrets.choice(_WORDS)}-{secrets.choice(_NOUNS)}-{secrets.token_hex(2)}"
            if candidate not in self.records:
                return candidate

    async def _forget(self, app_id: str) -> None:
        self.records.pop(app_id, None)
        self.last_seen.pop(app_id, None)
        await asyncio.to_thread(self.store.delete, app_id)
        await self._ray(self.kv.delete_app, app_id)

    async def _remember_stopped(self, app_ids: list[str]) -> None:
        now = time.time()
        for app_id in app_ids:
            self.stopped.pop(app_id, None)
            self.stopped[app_id] = now
        while len(self.stopped) > STOPPED_MEMORY:
            self.stopped.pop(next(iter(self.stopped)))
        await asyncio.to_thread(self.store.save_stopped, dict(self.stopped))

    @worker.stop_app.implementation
    async def stop_app(
        self,
        application_id: str,
        caller: dict | None = None,
        context: dict | None = None,
    ) -> dict:
        self._require_ray()
        if not isinstance(application_id, str) or not _APP_ID.match(application_id):
            raise InvalidRequest(f"'{application_id}' is not an application id")
        async with self._lock:
            if application_id in self.records:
                await self._forget(application_id)
                await self._ray(self.serve.delete, application_id)
                await self._remember_stopped([application_id])
                self.logger.info("Stopping app %s", application_id)
                return {
                    "application_id": application_id,
                    "status": "stopping",
                    "message": f"app '{application_id}' is being removed in the background",
                }
            details = await self._ray(self.serve.details, timeout=SERVE_STATUS_TIMEOUT_S * 2)
            seen = self.serve.observed(details).get(application_id)
            # Serve empties a deleted app's deployments before it drops the app: one we stopped
            # is known by our own memory, not by its (gone) proxy deployment.
            if seen is not None and not seen.ours and application_id not in self.stopped:
                raise InvalidRequest(
                    f"'{application_id}' was not deployed by BioEngine; apps started outside BioEngine "
                    "cannot be stopped here"
                )
            if seen is not None:
                # Stopped before and Serve is still removing it, or ours and left over.
                if seen.status != "DELETING":
                    await self._ray(self.serve.delete, application_id)
                return {
                    "application_id": application_id,
                    "status": "already stopping",
                    "message": f"app '{application_id}' was stopped already; Serve is removing it",
                }
            if application_id in self.stopped:
                return {
                    "application_id": application_id,
                    "status": "already stopped",
                    "message": f"app '{application_id}' was stopped at {format_time(self.stopped[application_id])}",
                }
        raise NotFound(f"no app '{application_id}' was deployed by this worker")

    @worker.stop_all_apps.implementation
    async def stop_all_apps(
        self,
        timeout_seconds: float,
        caller: dict | None = None,
        context: dict | None = None,
    ) -> dict:
        self._require_ray()
        async with self._lock:
            stopped = sorted(self.records)
            for app_id in stopped:
                await self._forget(app_id)
                await self._ray(self.serve.delete, app_id)
            if stopped:
                await self._remember_stopped(stopped)
        deadline = time.monotonic() + float(timeout_seconds)
        remaining = list(stopped)
        while remaining and time.monotonic() < deadline:
            details = await self._ray(self.serve.details, timeout=SERVE_STATUS_TIMEOUT_S * 2)
            remaining = [a for a in stopped if a in (details.get("applications") or {})]
            if remaining:
                await asyncio.sleep(0.5)
        return {"stopped": stopped, "still_running": remaining}

    # ---- status -------------------------------------------------------------------------------------------
    async def _replica_logs(self, replicas: list[dict[str, Any]], lines: int) -> dict[str, Any]:
        async def one(replica: dict[str, Any]) -> tuple[str, Any]:
            entry: dict[str, Any] = {
                "state": enum_value(replica.get("state")),
                "node_ip": replica.get("node_ip"),
            }
            try:
                entry.update(await self._ray(self.serve.replica_logs, replica, lines, timeout=12))
            except Exception as exc:
                entry["error"] = error_summary(exc)
            return str(replica.get("replica_id")), entry

        return dict(await asyncio.gather(*(one(r) for r in replicas)))

    async def _status_of(
        self, app_id: str, app: dict[str, Any] | None, logs_tail: int | Callable[[str], int], full: bool
    ) -> dict[str, Any]:
        """``logs_tail``: log lines per replica, or a function of the deployment's name giving them."""
        lines_of = logs_tail if callable(logs_tail) else (lambda _name, n=int(logs_tail): n)
        record = self.records.get(app_id)
        if record is None:
            return {
                "status": "NOT_RUNNING",
                "message": f"No app '{app_id}' is deployed by this worker; deploy it with deploy_app.",
            }
        deployments: dict[str, Any] = {}
        serve_status: str | None = None
        serve_message = ""
        service_ids: list[dict[str, Any]] = []
        registration_error: str | None = None
        webrtc_error: str | None = None
        if app is not None:
            serve_status, serve_message = enum_value(app.get("status")), plain_message(app.get("message"))
            for name, deployment in (app.get("deployments") or {}).items():
                replicas = deployment.get("replicas") or []
                entry: dict[str, Any] = {
                    "status": enum_value(deployment.get("status")),
                    "message": plain_message(deployment.get("message")),
                    "replica_states": dict(collections.Counter(enum_value(r.get("state")) for r in replicas)),
                    "replica_ids": sorted(str(r.get("replica_id")) for r in replicas),
                }
                if full and lines_of(name) != 0 and replicas:
                    entry["logs"] = await self._replica_logs(replicas, lines_of(name))
                deployments[name] = entry
            await self._add_lifecycle_failures(record, deployments)
            if serve_status == "RUNNING":
                try:
                    info = await self._ray(self.serve.proxy_info, app_id, timeout=4)
                    if info.get("websocket_service_id"):
                        service_ids.append(
                            {k: info.get(k) for k in ("websocket_service_id", "webrtc_service_id")}
                        )
                    registration_error = info.get("error")
                    webrtc_error = info.get("webrtc_error")
                except Exception as exc:
                    registration_error = f"cannot reach the app's proxy: {error_summary(exc)}"
        build_failed = record.last_error and record.failed_hash == spec_hash(record.spec)
        status, message = reported_state(
            serve_status,
            serve_message,
            service_ids[0]["websocket_service_id"] if service_ids else None,
            registration_error,
            record.last_error if build_failed else None,
        )
        reason = failure_reason(status, message, deployments)
        if status == "DEPLOY_FAILED" and serve_status is None:
            reason = record.last_error
        if record.gave_up:
            message = f"{message} (auto_redeploy {record.gave_up})".strip()
        if record.recovery_note:
            message = f"{message}; {record.recovery_note}" if message else record.recovery_note
        result = self._status_fields(record, status, message, deployments, service_ids, full, reason)
        result["static_site_url"] = await self._static_site_url(record, service_ids)
        result["webrtc_error"] = webrtc_error
        return result

    async def _static_site_url(self, record: AppRecord, service_ids: list[dict[str, Any]]) -> str | None:
        """Where Hypha serves the app's frontend, with the query its page connects with; None
        without a frontend or before the app's service is registered (as the public worker)."""
        websocket_id = service_ids[0].get("websocket_service_id") if service_ids else None
        if record.source != "artifact" or not websocket_id:
            return None
        view = await self._view_config(record.artifact_id)
        base = self._public_base_url()
        workspace, _, alias = record.artifact_id.rpartition("/")
        return static_site_url(
            base,
            workspace,
            alias,
            view,
            {
                "server": base,
                "ws_service_id": websocket_id,
                "webrtc_service_id": service_ids[0].get("webrtc_service_id"),
            },
        )

    async def _view_config(self, artifact_id: str) -> Any:
        """The artifact's view_config, remembered for VIEW_CONFIG_TTL_S (None when unknown)."""
        cached = self._view_configs.get(artifact_id)
        if cached is not None and time.monotonic() - cached[0] < VIEW_CONFIG_TTL_S:
            return cached[1]
        try:
            view = await within(self.artifacts.view_config(artifact_id), 5)
        except Exception as exc:
            self.logger.debug("No view_config of %s: %s", artifact_id, error_summary(exc))
            return cached[1] if cached else None
        self._view_configs[artifact_id] = (time.monotonic(), view)
        return view

    def _public_base_url(self) -> str:
        """The Hypha server's public URL (its own config says), else the URL apps-svc uses."""
        config = getattr(self.hypha.server, "config", None) or {}
        base = (
            config.get("public_base_url")
            if isinstance(config, dict)
            else getattr(config, "public_base_url", None)
        )
        return str(base or self.settings.server_url).rstrip("/")

    async def _add_lifecycle_failures(self, record: AppRecord, deployments: dict[str, Any]) -> None:
        """A 0.6.0 app's replicas record why their health check failed (a failed smoke test, a
        failing health_check): an unhealthy deployment's message is that reason, when it happened
        since the app's last update, or the installer's error when its packages cannot be
        installed; Serve's own message is kept as ``serve_message``."""
        if not record.spec.get("app06") or all(d["status"] == "HEALTHY" for d in deployments.values()):
            return
        for entry in deployments.values():
            installer = installer_error(entry["message"]) if entry["status"] != "HEALTHY" else None
            if installer:
                entry.update(lifecycle_error=installer, serve_message=entry["message"], message=installer)
        with contextlib.suppress(Exception):
            failures = await self._ray(
                runtime_kv.get_json, runtime_kv.health_key(record.application_id), timeout=4
            )
            failures = dict(failures or {})
            for name, failure in failures.items():
                entry = deployments.get(name)
                if (
                    entry is None
                    or entry["status"] == "HEALTHY"
                    or failure.get("at", 0) < record.last_updated_at
                ):
                    continue
                entry.update(
                    lifecycle_error=failure["reason"],
                    serve_message=entry["message"],
                    message=failure["reason"],
                )

    def _offline_status(self, app_id: str, reason: str, full: bool) -> dict[str, Any]:
        """What apps-svc knows of an app while it cannot see Serve: its record, and when and how
        it was last seen."""
        record = self.records.get(app_id)
        if record is None:
            return {
                "status": "NOT_RUNNING",
                "message": f"No app '{app_id}' is deployed by this worker; deploy it with deploy_app.",
            }
        last_status, last_seen = self.last_seen.get(app_id, (None, None))
        message = unavailable_message(reason, self.ray_down_since, self.head_down, last_status, last_seen)
        if record.recovery_note:
            message = f"{message}; {record.recovery_note}"
        return {**self._status_fields(record, "UNAVAILABLE", message, {}, [], full), "static_site_url": None}

    def _status_fields(
        self,
        record: AppRecord,
        status: str,
        message: str,
        deployments: dict[str, Any],
        service_ids: list[dict[str, Any]],
        full: bool,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """One app's status entry. ``reason``: one line saying why a failed app failed."""
        result: dict[str, Any] = {
            "display_name": record.display_name,
            "description": record.description,
            "artifact_id": record.artifact_id,
            "version": record.version or "latest",
            "source": record.source,
            "status": status,
            "message": message,
            "reason": reason,
            "deployments": deployments,
            "available_methods": record.methods,
            "service_ids": service_ids or [{"websocket_service_id": None, "webrtc_service_id": None}],
            # Why the app's WebRTC service is not registered (the app still answers over the websocket).
            "webrtc_error": None,
            "max_ongoing_requests": record.max_ongoing_requests,
            "application_resources": _rounded(record.resources),
            "start_time": record.start_time,
            "last_updated_at": record.last_updated_at,
            "auto_redeploy": record.auto_redeploy,
            "recovery_note": record.recovery_note,
            "scaling": record.scaling,
        }
        # GPU fields only where GPUs mean something: on a cluster with GPUs, or for an app that
        # asked for them (or was told not to use them).
        if self.cluster_gpus > 0 or record.resources.get("num_gpus", 0) > 0 or record.disable_gpu:
            result["gpu_enabled"] = not record.disable_gpu
        else:
            result["application_resources"].pop("num_gpus", None)
        if full:
            result.update(
                application_kwargs=record.application_kwargs,
                application_env_vars=record.application_env_vars,
                authorized_users=record.authorized_users,
                last_updated_by=record.last_updated_by,
                redeploy_attempts=record.redeploy_attempts,
                proxy_memory_in_gb=record.proxy_memory_in_gb,
                debug=bool(record.debug),
            )
        return result

    @worker.get_app_status.implementation
    async def get_app_status(
        self,
        application_ids: list | str | None,
        logs_tail: int,
        deployment_logs: dict | None,
        caller: dict | None = None,
        context: dict | None = None,
    ) -> dict:
        resolved = self.caller_context(context, caller)
        lines = _log_lines(logs_tail, deployment_logs)
        full = self.is_admin(resolved.get("user") or {})
        if isinstance(application_ids, str):
            application_ids = [application_ids]
        ids = list(application_ids) if application_ids else sorted(self.records)
        # Never hangs on a lost head: without Serve, the answer is what apps-svc knows.
        if not self.connected:
            return {app_id: self._offline_status(app_id, self.ray_error or "", full) for app_id in ids}
        try:
            details = await self._ray(self.serve.details, timeout=SERVE_STATUS_TIMEOUT_S)
        except Exception as exc:
            reason = (
                f"Serve did not answer within {SERVE_STATUS_TIMEOUT_S:.0f} s"
                if isinstance(exc, TimeoutError)
                else f"Serve did not answer: {error_summary(exc)}"
            )
            return {app_id: self._offline_status(app_id, reason, full) for app_id in ids}
        apps = details.get("applications") or {}
        statuses = await asyncio.gather(
            *(self._status_of(app_id, apps.get(app_id), lines, full) for app_id in ids)
        )
        return dict(zip(ids, statuses, strict=True))

    # ---- working directories -------------------------------------------------------------------------
    @worker.list_app_directories.implementation
    async def list_app_directories(self, caller: dict | None = None, context: dict | None = None) -> list:

        def scan() -> list[dict[str, Any]]:
            if not self.apps_dir.is_dir():
                return []
            return [
                {
                    "name": p.name,
                    "path": str(p),
                    "is_running": p.name in self.records,
                    "size_bytes": _dir_size(p),
                }
                for p in sorted(self.apps_dir.iterdir())
                if p.is_dir() and not p.name.startswith(".")
            ]

        return await asyncio.to_thread(scan)

    @worker.clear_app_directory.implementation
    async def clear_app_directory(
        self,
        application_id: str,
        caller: dict | None = None,
        context: dict | None = None,
    ) -> None:
        if not isinstance(application_id, str) or not _APP_ID.match(application_id):
            raise InvalidRequest(f"'{application_id}' is not an application id (no paths)")
        folder = self.apps_dir / application_id
        if not folder.is_dir():
            raise NotFound(f"no app folder '{application_id}' under {self.apps_dir}")
        if application_id in self.records:
            raise InvalidRequest(f"app '{application_id}' is running; stop it first")
        await asyncio.to_thread(shutil.rmtree, folder)

    # ---- service status ---------------------------------------------------------------------------------
    def is_ready(self) -> bool:
        return self.ready and self.connected

    def collect_metrics(self) -> Any:
        return metric_families(self.serve_counts, len(self.records))

    def status_details(self) -> dict[str, Any]:
        artifacts_ok = bool(self.artifact_probe["ok"])
        return {
            "apps_dir": str(self.apps_dir),
            "state_dir": str(self.store.root),
            "local_apps_dir": str(self.settings.local_apps_dir) if self.settings.local_apps_dir else None,
            "ray_connected": self.connected,
            "ray_address": self.ray_address,
            "ray_error": self.ray_error,
            "ray_session": self.session,
            "dependencies": {
                "ray": {
                    "ok": self.connected,
                    "reason": self.ray_error,
                    "down_since": self.ray_down_since,
                    "head_down": self.head_down,
                },
                "artifact_store": dict(self.artifact_probe),
            },
            # What each group of operations needs: status answers always (from the records
            # while Ray is away); deploy/stop need Ray; artifacts need the store.
            "ready_for": {
                "status": True,
                "apps": self.is_ready(),
                "artifacts": self.ready and artifacts_ok,
                "deploy_from_artifact": self.is_ready() and artifacts_ok,
            },
            "apps": sorted(self.records),
            "startup_applications": [dict(entry) for entry in self.startup_apps],
            "recent_decisions": list(self.decisions)[-20:],
        }
