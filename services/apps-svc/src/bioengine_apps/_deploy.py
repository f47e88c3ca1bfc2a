"""``deploy_app`` as pure steps, beside the reconciler (:func:`._state.plan_reconcile`).

A deploy call is: merge the request with the app's previous deployment
(:func:`merge_with_previous`, :func:`resolve_env`), check it against the app
(:func:`env_scope_problems`, :func:`fit_request`, :func:`resources_grow`), then build the :class:`AppSpec` Serve gets
(:func:`build_spec`) and the :class:`AppRecord` apps-svc keeps (:func:`build_record`,
:func:`settle_unchanged`). No Ray, no Hypha, no files: ``AppsService.deploy_app`` loads the app
and its secrets, calls these steps, then saves and submits what they give.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from bioengine_app_runtime import App06, AppSpec
from bioengine_common import token_claims

from ._state import AppRecord, split_env_vars

__all__ = [
    "BOOKKEEPING_FIELDS",
    "AppEnv",
    "DeployRequest",
    "DiscoveredSpecs",
    "WorkerFacts",
    "app06_deployments",
    "build_record",
    "build_spec",
    "env_scope_problems",
    "fit_request",
    "merge_with_previous",
    "resolve_env",
    "resources_grow",
    "reusable_spec",
    "secrets_revision",
    "settle_unchanged",
]

#: Fields of an AppRecord that are bookkeeping, not settings: an update that changes none of the
#: others is a no-op and leaves the record as it was (last_updated_at included).
BOOKKEEPING_FIELDS = frozenset(
    {
        "start_time", "last_updated_at", "last_updated_by", "applied_hash", "failed_hash", "last_error",
        "redeploy_attempts", "next_redeploy_at", "gave_up", "recovery_note",
    }
)  # fmt: skip


@dataclass(frozen=True)
class DeployRequest:
    """The settings a ``deploy_app`` call gives, as given: None is "not given" (on an update, the
    previous value; on a new app, the default)."""

    version: str | None = None
    application_kwargs: dict[str, Any] | None = None
    disable_gpu: bool | None = None
    max_ongoing_requests: int | None = None
    auto_redeploy: bool | None = None
    authorized_users: list[str] | dict[str, list[str]] | None = None
    scaling: dict[str, dict[str, Any]] | None = None
    proxy_memory_in_gb: float | None = None
    debug: bool | None = None
    ice_servers: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class AppEnv:
    """An app's env vars split for Serve and the KV store, and its HYPHA_TOKEN."""

    #: {Class or '*': {KEY: value}}: in the spec (Ray's env_vars).
    plain: dict[str, dict[str, str]]
    #: {Class or '*': {KEY: value}} of the secrets (names without the '_'): only in the KV store.
    secret: dict[str, dict[str, str]]
    #: As the caller gave them, secret values masked: what the record and the status show.
    masked: dict[str, dict[str, str]]
    hypha_token: str | None


@dataclass(frozen=True)
class WorkerFacts:
    """What every app spec of this worker shares (apps-svc's settings and trusted callers)."""

    server_url: str
    workspace: str
    datasets_service_id: str
    default_app_cpus: float
    services_users: list[str]


def merge_with_previous(request: DeployRequest, previous: AppRecord | None) -> DeployRequest:
    """The request with every setting left out taken from the previous deployment of the app
    (env vars and the token live with its secrets: see :func:`resolve_env`)."""
    if previous is None:
        return request

    def given(value: Any, before: Any) -> Any:
        return value if value is not None else before

    return replace(
        request,
        version=given(request.version, previous.version),
        application_kwargs=given(request.application_kwargs, previous.application_kwargs),
        disable_gpu=given(request.disable_gpu, previous.disable_gpu),
        max_ongoing_requests=given(request.max_ongoing_requests, previous.max_ongoing_requests),
        auto_redeploy=given(request.auto_redeploy, previous.auto_redeploy),
        authorized_users=given(request.authorized_users, previous.requested_authorized_users),
        scaling=given(request.scaling, previous.scaling),
        proxy_memory_in_gb=given(request.proxy_memory_in_gb, previous.proxy_memory_in_gb),
        debug=given(request.debug, previous.debug),
        ice_servers=given(request.ice_servers, previous.ice_servers),
    )


def reusable_spec(
    previous: AppRecord | None, code_dir: str, entry: str, sdk_version: str
) -> dict[str, Any] | None:
    """The previous deployment's discovered spec of a 0.6.0 app when it still holds: same code
    (its folder is named by the code's hash), same entry, read by this SDK version. Then a
    redeploy (new kwargs, env vars, scaling) needs no discovery task."""
    app06 = (previous.spec.get("app06") if previous else None) or {}
    if not app06 or previous is None or previous.spec.get("code_dir") != code_dir:
        return None
    if app06.get("entry") != entry or not sdk_version or app06.get("sdk_version") != sdk_version:
        return None
    return dict(app06["spec"])


class DiscoveredSpecs:
    """The specs discovery tasks found, by (code hash, entry, SDK version), the newest ``size``:
    a spec depends only on the code and the SDK that read it, so deploying the same code again
    under another application id needs no discovery task either (:func:`reusable_spec` covers
    an app's own redeploys, also after a restart)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._specs: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()

    def get(self, code_hash: str, entry: str, sdk_version: str) -> dict[str, Any] | None:
        key = (code_hash, entry, sdk_version)
        if key not in self._specs:
            return None
        self._specs.move_to_end(key)
        return dict(self._specs[key])

    def put(self, code_hash: str, entry: str, sdk_version: str, spec: Mapping[str, Any]) -> None:
        if not sdk_version:
            return
        self._specs[(code_hash, entry, sdk_version)] = dict(spec)
        while len(self._specs) > self.size:
            self._specs.popitem(last=False)


def app06_deployments(spec: Mapping[str, Any]) -> list[str]:
    """A 0.6.0 app's classes as ``module:qualname``, the entry first (the AppSpec's ``deployments``)."""
    entry = str(spec["entry"])
    return [entry, *(key for key in reversed(spec["order"]) if key != entry)]


def resolve_env(
    env_vars: Mapping[str, Mapping[str, Any]] | None,
    hypha_token: str | None,
    previous: AppRecord | None,
    old_secrets: Mapping[str, Any],
) -> AppEnv:
    """The app's env vars and token: as given, or, left out on an update, the previous
    deployment's (its record's plain values and masks, the secret values of ``old_secrets``).

    Raises ValueError naming a bad variable (see :func:`._state.split_env_vars`).
    """
    if env_vars is None and previous is not None:
        plain = {
            scope: {k: v for k, v in variables.items() if not k.startswith("_")}
            for scope, variables in previous.application_env_vars.items()
        }
        secret, masked = dict(old_secrets.get("env") or {}), previous.application_env_vars
    else:
        plain, secret, masked = split_env_vars(env_vars)
    token = hypha_token if hypha_token is not None else old_secrets.get("hypha_token")
    return AppEnv(plain=plain, secret=secret, masked=masked, hypha_token=token)


def token_owner_problem(hypha_token: str | None, service_users: Collection[str]) -> str | None:
    """Why ``hypha_token`` must not be given to an app: it belongs to a user the services trust
    to speak for callers (their own user, --trusted-callers), so the app could act as a worker
    service. Read from the token's claims without verifying them: the Hypha server verifies the
    token whenever it is used, and one that does not parse is left to it."""
    if not hypha_token:
        return None
    try:
        subject = token_claims(hypha_token).get("sub")
    except ValueError:
        return None
    if subject in service_users:
        return (
            f"hypha_token belongs to '{subject}', a user the worker's services run as: an app "
            "holding it could act as a worker service; give the app a token of its own"
        )
    return None


def env_scope_problems(env: AppEnv, deployments: Iterable[str]) -> list[str]:
    """Env var scopes that name no deployment class of the app ('*' is every class)."""
    class_names = {d.partition(":")[2] for d in deployments}
    return [
        f"application_env_vars.{scope}: the app has no deployment '{scope}'"
        for scope in (*env.plain, *env.secret)
        if scope != "*" and scope not in class_names
    ]


def fit_request(resources: Mapping[str, float], proxy_memory_in_gb: float | None) -> dict[str, float]:
    """What the fit check asks the cluster for: the app's replicas together (``resources``: CPUs,
    GPUs as sized, memory in bytes, custom resources) and its proxy replica, which reserves 0 CPUs
    and ``proxy_memory_in_gb`` GiB of memory (none when not given)."""
    needed = {name: float(amount) for name, amount in resources.items()}
    if proxy_memory_in_gb:
        needed["memory"] = needed.get("memory", 0.0) + float(proxy_memory_in_gb) * 1024**3
    return needed


def resources_grow(needed: Mapping[str, float], previous: AppRecord | None) -> bool:
    """Does the app need more of some resource (``needed``: its :func:`fit_request`) than its
    previous deployment, proxy included (a new app: yes)? Only then is the cluster asked whether
    it fits."""
    if previous is None:
        return True
    before = fit_request(previous.resources, previous.proxy_memory_in_gb)
    return any(needed.get(k, 0) > before.get(k, 0) + 1e-9 for k in needed)


def secrets_revision(previous: AppRecord | None, env: AppEnv, old_secrets: Mapping[str, Any]) -> int:
    """The spec's ``secrets_revision``: the previous one, plus one when a secret value or the
    token changed (so replicas restart and read them)."""
    revision = int((previous.spec if previous else {}).get("secrets_revision", 0))
    if (env.secret, env.hypha_token) != (old_secrets.get("env") or {}, old_secrets.get("hypha_token")):
        revision += 1
    return revision


def build_spec(
    application_id: str,
    artifact_id: str,
    request: DeployRequest,
    env: AppEnv,
    manifest: Mapping[str, Any],
    source: str,
    code_dir: str,
    home_dir: str,
    authorized_users: dict[str, list[str]],
    revision: int,
    previous: AppRecord | None,
    worker: WorkerFacts,
    app06: App06 | None = None,
) -> AppSpec:
    """The spec Serve's builder gets (no secret values in it) from a merged request.

    ``artifact_id`` is the artifact's full id ('workspace/alias'); an app from the local apps
    folder (``source`` 'local') is ``local/<alias>`` and has no version. A 0.6.0 app gives
    ``app06`` (what the discovery task found); its ``init_kwargs`` live there, by class key.
    """
    return AppSpec(
        application_id=application_id,
        artifact_id=artifact_id if source == "artifact" else f"local/{artifact_id.rsplit('/', 1)[-1]}",
        version=manifest.get("version") if source == "artifact" else None,
        code_dir=code_dir,
        home_dir=home_dir,
        deployments=app06_deployments(app06.spec) if app06 else list(manifest["deployments"]),
        init_kwargs={} if app06 else dict(request.application_kwargs or {}),
        env_vars=env.plain,
        secret_env_names={scope: sorted(values) for scope, values in env.secret.items()},
        disable_gpu=bool(request.disable_gpu),
        default_num_cpus=worker.default_app_cpus,
        max_ongoing_requests=int(request.max_ongoing_requests or 10),
        authorized_users=authorized_users,
        server_url=worker.server_url,
        workspace=worker.workspace,
        datasets_service_id=worker.datasets_service_id,
        services_users=sorted(worker.services_users),
        secrets_revision=revision,
        redeploy=int(previous.spec.get("redeploy", 0)) if previous else 0,
        app06=app06,
        scaling=dict(request.scaling or {}),
        proxy_memory_in_gb=request.proxy_memory_in_gb,
        debug=bool(request.debug),
    )


def build_record(
    spec: AppSpec,
    request: DeployRequest,
    env: AppEnv,
    manifest: Mapping[str, Any],
    source: str,
    resources: dict[str, float],
    methods: list[str],
    code_hash: str,
    previous: AppRecord | None,
    now: float,
    updated_by: str | None,
) -> AppRecord:
    """The record of a deployment (its desired state; secrets masked), new as of ``now``."""
    return AppRecord(
        application_id=spec.application_id,
        artifact_id=spec.artifact_id,
        version=request.version or manifest.get("version"),
        source=source,
        display_name=str(manifest.get("name", "")),
        description=str(manifest.get("description", "")),
        application_kwargs=dict(request.application_kwargs or {}),
        application_env_vars=env.masked,
        disable_gpu=bool(request.disable_gpu),
        max_ongoing_requests=spec.max_ongoing_requests,
        auto_redeploy=bool(request.auto_redeploy),
        requested_authorized_users=request.authorized_users,
        authorized_users=spec.authorized_users,
        resources=resources,
        methods=methods,
        code_hash=code_hash,
        scaling=request.scaling,
        proxy_memory_in_gb=request.proxy_memory_in_gb,
        debug=request.debug,
        ice_servers=request.ice_servers,
        start_time=previous.start_time if previous else now,
        last_updated_at=now,
        last_updated_by=updated_by,
        spec=spec.model_dump(mode="json"),
    )


def settle_unchanged(record: AppRecord, previous: AppRecord | None) -> tuple[AppRecord, bool]:
    """(the record to keep, whether Serve's spec is unchanged).

    With the spec unchanged Serve keeps what it has, while settings outside the spec
    (auto_redeploy, ...) may still change: the new record keeps the previous bookkeeping. When
    nothing changed at all, the previous record stays exactly as it was (last_updated_at too).
    """
    if previous is None or previous.spec != record.spec:
        return record, False
    kept = {k: getattr(previous, k) for k in BOOKKEEPING_FIELDS}
    if record.model_copy(update=kept) == previous:
        return previous, True
    kept.pop("last_updated_at"), kept.pop("last_updated_by")
    return record.model_copy(update=kept), True
