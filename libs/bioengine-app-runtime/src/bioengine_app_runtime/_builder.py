"""The app builder: runs inside Ray (Serve's build task), never in a service process.

Serve calls :func:`build` with the app's :class:`~._spec.AppSpec` as ``args``. It imports the
app's files from ``code_dir``, checks that every entry names a Serve deployment, binds the
sub-deployments into the entry one (each under the parameter named after its file stem) and
puts the Hypha proxy in front.

The build task runs without an app-level runtime_env, so Ray can use an idle worker instead of
starting one per app (seconds on a small machine). A worker may build several apps in turn:
before each build the modules of the previous one are dropped and only the current app's folder
is on ``sys.path``. Each user deployment gets ``working_dir = local://<code_dir>`` for its
replicas; the proxy needs nothing but this package.

Updates without downtime: every deployment gets a Serve ``version`` computed from what its
replicas are made of (its class and code, its own kwargs and env vars, the app's secrets
revision; for the proxy only what the proxy uses), so Serve replaces only the replicas of a
deployment that changed (without a version, the imperative API gives each deploy a random one
and restarts every replica, the proxy included). The proxy's access rules, call limit and
methods are its Serve ``user_config``, outside its version: Serve hands a change to the running
replica (``reconfigure``), which keeps its Hypha connection, so the app's service id stays. Replacements start before the old replicas
stop (``max_surge_percent=100``, unless the app's decorator sets it): the old ones serve until
the new ones are ready.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import sys
from typing import Any

from ._proxy import BioEngineProxy
from ._replica import wrap_deployment_class
from ._spec import PROXY_CONFIG_FIELDS, PROXY_DEPLOYMENT, AppSpec, MethodSpec, ProxySpec

__all__ = [
    "PROXY_ENV",
    "build",
    "deployment_version",
    "deployment_version_06",
    "proxy_options",
    "proxy_version",
    "scaling_options",
    "schema_methods",
    "worker_env",
]

#: Start a deployment's new replicas before stopping the old ones (percent of its replicas).
MAX_SURGE_PERCENT = 100
#: Fields of an AppSpec that only the proxy uses, or that Serve applies without new replicas
#: (scaling): they never restart the app's own replicas.
_PROXY_ONLY = {
    "authorized_users",
    "max_ongoing_requests",
    "methods",
    "proxy_memory_in_gb",
    "debug",
    "scaling",
}
#: Fields of an AppSpec that hold one entry per deployment class ("*" for all of them).
_PER_CLASS = {"init_kwargs", "env_vars", "secret_env_names"}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


def deployment_version(spec: AppSpec, class_name: str) -> str:
    """Serve version of one user deployment: it changes exactly when what its replicas are made
    of changes (the app's code and settings, and its own entries of the per-class fields)."""
    shared = spec.model_dump(mode="json", exclude=_PROXY_ONLY | _PER_CLASS | {"app06"})
    own = {
        field: {scope: getattr(spec, field).get(scope) for scope in ("*", class_name)} for field in _PER_CLASS
    }
    return _digest({"class": class_name, "app": shared, "own": own})


def deployment_version_06(spec: AppSpec, key: str) -> str:
    """:func:`deployment_version` of one class (``module:qualname``) of a 0.6.0 app: also its own
    part of the discovered spec, kwargs and GPUs (``scaling`` changes in place, as for the
    older format)."""
    assert spec.app06 is not None
    class_name = spec.app06.spec["deployments"][key]["class_name"]
    return _digest({"base": deployment_version(spec, class_name), "own06": spec.app06.own(key)})


def proxy_version(proxy_spec: ProxySpec) -> str:
    """Serve version of the proxy: what it cannot take on in place (not its user_config)."""
    return _digest({"proxy": proxy_spec.model_dump(mode="json", exclude=set(PROXY_CONFIG_FIELDS))})


def _rolling(deployment: Any, version: str) -> Any:
    """``deployment`` with its Serve version and, unless the app chose otherwise, a surge."""
    if "max_surge_percent" not in deployment._deployment_config.user_configured_option_names:
        deployment = deployment.options(max_surge_percent=MAX_SURGE_PERCENT)
    # Serve removed `version` from the public options; its own builder passes it like this.
    return deployment.options(version=version, _internal=True)


#: The proxy's code never blocks (hypha-rpc and handle calls only): run it and Serve's router on
#: the replica's main event loop instead of hopping between threads on every call (what Ray's
#: RAY_SERVE_THROUGHPUT_OPTIMIZED mode does).
PROXY_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def schema_methods(cls: type) -> list[MethodSpec]:
    """Public methods of ``cls`` made with hypha-rpc's ``schema_method`` (they carry ``__schema__``)."""
    methods = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or not callable(member) or not hasattr(member, "__schema__"):
            continue
        try:
            parameters = inspect.signature(member).parameters
        except (TypeError, ValueError):
            parameters = {}  # type: ignore[assignment]
        methods.append(
            MethodSpec(
                name=name, accepts_context="context" in parameters, json_schema=dict(member.__schema__)
            )
        )
    return methods


#: What the previous build in this worker put on sys.path and into sys.modules.
_previous: dict[str, Any] = {"path": None, "modules": set()}


def _enter(code_dir: str, module_names: list[str]) -> None:
    """Make ``code_dir`` the only app folder on ``sys.path`` with none of its modules cached."""
    for name in _previous["modules"] | set(module_names):
        sys.modules.pop(name, None)
    _previous["modules"] = set()
    if _previous["path"] in sys.path:
        sys.path.remove(_previous["path"])
    sys.path.insert(0, code_dir)
    _previous["path"] = code_dir
    importlib.invalidate_caches()


def _remember_modules(code_dir: str) -> None:
    prefix = os.path.join(code_dir, "")
    _previous["modules"] |= {
        name
        for name, module in list(sys.modules.items())
        if str(getattr(module, "__file__", None) or "").startswith(prefix)
    }


def _load(module_name: str, class_name: str) -> Any:
    from ray import serve

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ValueError(f"the app has no file '{module_name}.py'") from exc
        raise
    if not hasattr(module, class_name):
        raise ValueError(f"'{module_name}.py' defines no '{class_name}'")
    deployment = getattr(module, class_name)
    if not isinstance(deployment, serve.Deployment):
        raise ValueError(
            f"'{class_name}' in '{module_name}.py' is not a Ray Serve deployment (decorate it with @serve.deployment)"
        )
    return deployment


def worker_env(spec: AppSpec, class_name: str) -> dict[str, str]:
    """The env vars the platform sets in a replica of ``class_name`` (over the author's)."""
    env_vars: dict[str, str] = {}
    for scope in ("*", class_name):
        env_vars.update(spec.env_vars.get(scope) or {})
    env_vars.update(
        HOME=spec.home_dir,
        TMPDIR=f"{spec.home_dir}/tmp",
        TMP=f"{spec.home_dir}/tmp",
        TEMP=f"{spec.home_dir}/tmp",
        HYPHA_SERVER_URL=spec.server_url,
        HYPHA_WORKSPACE=spec.workspace,
        HYPHA_ARTIFACT_ID=spec.artifact_id,
        BIOENGINE_APPLICATION_ID=spec.application_id,
        BIOENGINE_DATASETS_SERVICE_ID=spec.datasets_service_id,
        BIOENGINE_SERVICES_USERS=",".join(spec.services_users),
    )
    return env_vars


def _prepared(deployment: Any, class_name: str, spec: AppSpec) -> Any:
    """The deployment with the worker's options: env vars, GPU switch, default CPUs, working_dir."""
    options = dict(deployment.ray_actor_options or {})
    if spec.disable_gpu:
        options["num_gpus"] = 0
    options.setdefault("num_cpus", spec.default_num_cpus)
    runtime_env = dict(options.get("runtime_env") or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    env_vars.update(worker_env(spec, class_name))
    runtime_env["env_vars"] = env_vars
    runtime_env.setdefault("working_dir", f"local://{spec.code_dir}")
    options["runtime_env"] = runtime_env
    wrapped = wrap_deployment_class(deployment.func_or_class, spec.application_id, spec.home_dir)
    prepared = deployment.options(
        func_or_class=wrapped, ray_actor_options=options, **scaling_options(spec, class_name)
    )
    return _rolling(prepared, deployment_version(spec, class_name))


def scaling_options(spec: AppSpec, class_name: str) -> dict[str, Any]:
    """Serve options of deploy_app's ``scaling`` for one class (none: the decorator's own)."""
    rule = spec.scaling.get(class_name) or {}
    if "num_replicas" in rule:
        return {"num_replicas": int(rule["num_replicas"]), "autoscaling_config": None}
    if "autoscaling_config" in rule:
        return {"num_replicas": "auto", "autoscaling_config": dict(rule["autoscaling_config"])}
    return {}


def proxy_options(spec: AppSpec) -> dict[str, Any]:
    """Serve options of the app's proxy: its 0 CPUs, deploy_app's ``proxy_memory_in_gb`` and
    ``debug`` (the proxy's log level)."""
    actor: dict[str, Any] = {"num_cpus": 0, "runtime_env": {"env_vars": PROXY_ENV}}
    if spec.proxy_memory_in_gb:
        actor["memory"] = int(spec.proxy_memory_in_gb * 1024**3)
    options: dict[str, Any] = {"ray_actor_options": actor}
    if spec.debug:
        options["logging_config"] = {"log_level": "DEBUG"}
    return options


def build(args: dict[str, Any]) -> Any:
    """Serve app builder: ``args`` is an :class:`AppSpec` as a dict."""
    spec = AppSpec.model_validate(args)
    if spec.app06 is not None:
        return _build_06(spec)
    refs = spec.refs()
    _enter(spec.code_dir, [ref.module for ref in refs])
    try:
        loaded = {ref.module: _load(ref.module, ref.class_name) for ref in refs}
    finally:
        _remember_modules(spec.code_dir)
    entry_ref, others = refs[0], refs[1:]
    entry = loaded[entry_ref.module]
    handles = {}
    for ref in others:
        handles[ref.module] = _prepared(loaded[ref.module], ref.class_name, spec).bind(
            **spec.init_kwargs.get(ref.class_name, {})
        )
    entry_kwargs = {**spec.init_kwargs.get(entry_ref.class_name, {}), **handles}
    entry_app = _prepared(entry, entry_ref.class_name, spec).bind(**entry_kwargs)
    methods = schema_methods(entry.func_or_class)
    if not methods:
        raise ValueError(
            f"'{entry_ref.class_name}' exposes no methods: decorate the methods callers may use with "
            "hypha_rpc.utils.schema.schema_method"
        )
    return _with_proxy(entry_app, ProxySpec.of(spec.model_copy(update={"methods": methods})), spec)


def _build_06(spec: AppSpec) -> Any:
    """A 0.6.0 app: every class of the discovered spec a deployment, the proxy in front
    publishing the entry's ``@bioengine.method``s and refusing calls over capacity."""
    from .app06 import build_06

    assert spec.app06 is not None
    modules = sorted({str(d["module"]).split(".")[0] for d in spec.app06.spec["deployments"].values()})
    _enter(spec.code_dir, modules)
    try:
        entry_app, methods = build_06(spec)
    finally:
        _remember_modules(spec.code_dir)
    proxy_spec = ProxySpec.of(spec).model_copy(
        update={"methods": [MethodSpec.model_validate(m) for m in methods], "refuse_when_full": True}
    )
    return _with_proxy(entry_app, proxy_spec, spec)


def _with_proxy(entry_app: Any, proxy_spec: ProxySpec, spec: AppSpec) -> Any:
    """``BioEngineProxy`` bound in front of the entry deployment."""
    proxy = BioEngineProxy.options(  # type: ignore[attr-defined]
        name=PROXY_DEPLOYMENT,
        max_ongoing_requests=max(spec.max_ongoing_requests, 1) + 10,
        user_config=proxy_spec.user_config(),
        **proxy_options(spec),
    )
    return _rolling(proxy, proxy_version(proxy_spec)).bind(entry_app, proxy_spec.model_dump(mode="json"))
