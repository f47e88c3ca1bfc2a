"""Apps of manifest format 0.6.0 (``entry: module:Class``, the ``bioengine`` SDK) inside Ray.

Three pieces, none of which runs in a service process:

- :func:`discover` (called by apps-svc, a Ray driver) runs :func:`discovery_task` as a Ray task
  (0 CPUs, one call per worker process, so the app's modules never stay in a shared worker): it
  puts the app's replica files on ``sys.path``, imports the entry and returns the SDK's
  ``introspect_app`` spec with the ``application_kwargs`` checked against it. An import error,
  a composition cycle or a bad kwarg comes back as :class:`AppCodeError` naming the cause.
- :func:`build_06` (the builder, in the ``AppDeployer`` actor) makes one Serve deployment per
  class of the spec, binds each handle parameter to the deployment it names, and returns the
  entry's bound deployment; the caller puts the proxy in front.
- :func:`wrap_class_06`: the subclass each replica runs. Its ``__init__`` reads the app's
  secrets, moves into HOME, sets ``BIOENGINE_DATA_SERVER_URL``, wraps handle arguments as
  ``BioEngineRuntimeHandle``, runs the user's ``__init__`` and then ``async_init`` (the smoke test
  starts in the background); its ``check_health`` runs the SDK's lifecycle and records a failure
  in Ray's KV store, so apps-svc's status can say why a replica failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from bioengine_common import within

from . import kv

__all__ = [
    "AppCodeError",
    "build_06",
    "deployment_resources",
    "discover",
    "discovery_task",
    "entry_methods",
    "installer_error",
    "size_gpus",
    "wrap_class_06",
]

logger = logging.getLogger("ray.serve")

#: Seconds the discovery task may take (a fresh worker process imports the app).
DISCOVERY_TIMEOUT_S = 120.0
#: Seconds a replica waits for the datasets server's URL before starting without it.
DATASETS_LOOKUP_TIMEOUT_S = 10.0


class AppCodeError(ValueError):
    """The app's own code cannot be deployed (import error, cycle, bad kwargs): the author's to fix."""


# ---- discovery -------------------------------------------------------------------------------------
def discovery_task(code_dir: str, entry: str, application_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Inside Ray, in a worker process of its own: ``{"spec": ..., "kwargs": {key: {...}},
    "sdk_version": ...}`` (the spec depends only on the code and the SDK that read it)."""
    import bioengine
    from bioengine.composition import introspect_app, validate_application_kwargs

    sys.path.insert(0, code_dir)
    os.chdir(code_dir)  # modules that read their own files at import find them
    importlib.invalidate_caches()
    spec = introspect_app(entry)
    kwargs = validate_application_kwargs(spec, dict(application_kwargs or {}))
    return {"spec": spec, "kwargs": kwargs, "sdk_version": bioengine.__version__}


def discover(
    code_dir: str,
    entry: str,
    application_kwargs: Mapping[str, Any] | None,
    timeout: float = DISCOVERY_TIMEOUT_S,
) -> dict[str, Any]:
    """From a Ray driver (blocks): run :func:`discovery_task` in a fresh worker process; the
    author's mistakes raise :class:`AppCodeError` with the SDK's message."""
    import ray

    task: Any = ray.remote(num_cpus=0, max_calls=1, max_retries=0)(discovery_task)
    try:
        found: dict[str, Any] = ray.get(
            task.remote(code_dir, entry, dict(application_kwargs or {})), timeout=timeout
        )
        return found
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
        raise AppCodeError(f"{type(cause).__name__}: {cause}") from None
    except ray.exceptions.GetTimeoutError:
        raise AppCodeError(f"importing '{entry}' took longer than {timeout:.0f} s") from None


# ---- sizing ----------------------------------------------------------------------------------------
def size_gpus(deployment: Mapping[str, Any], disable_gpu: bool, cluster_gpus: float) -> float:
    """``num_gpus`` of one deployment: 0 with ``disable_gpu``; the older ``num_gpus`` as given;
    for ``gpu_memory_mb`` a whole GPU (``-1`` or any amount: this worker does not know its GPUs'
    memory, so it never shares one). Raises AppCodeError when a GPU is needed and there is none."""
    if disable_gpu:
        return 0.0
    memory = deployment.get("gpu_memory_mb")
    if memory is None:
        return float((deployment.get("ray_actor_options") or {}).get("num_gpus") or 0.0)
    if cluster_gpus <= 0:
        raise AppCodeError(
            f"'{deployment['class_name']}' needs a GPU (gpu_memory_mb={memory}) and this worker has none; "
            "deploy with disable_gpu=True to run it on CPUs"
        )
    return 1.0


def deployment_resources(
    spec: Mapping[str, Any], num_gpus: Mapping[str, float], scaling: Mapping[str, Mapping[str, Any]]
) -> dict[str, float]:
    """What the app's replicas reserve together (num_cpus, num_gpus, memory in bytes): every
    deployment times its replicas (the minimum of an autoscaling config), as for the older format."""
    total: dict[str, float] = {"num_cpus": 0.0, "num_gpus": 0.0, "memory": 0.0}
    for key, deployment in spec["deployments"].items():
        serve_options = {**deployment.get("serve_options", {}), **(scaling.get(key) or {})}
        replicas = serve_options.get("num_replicas") or 1
        autoscaling = serve_options.get("autoscaling_config")
        if isinstance(autoscaling, Mapping):
            replicas = autoscaling.get("min_replicas", autoscaling.get("initial_replicas", 1)) or 1
        if not isinstance(replicas, int | float):  # "auto"
            replicas = 1
        options = deployment.get("ray_actor_options") or {}
        total["num_cpus"] += float(options.get("num_cpus", 1)) * replicas
        total["num_gpus"] += float(num_gpus.get(key, 0.0)) * replicas
        total["memory"] += float(options.get("memory") or 0) * replicas
        for name, amount in (options.get("resources") or {}).items():
            total[name] = total.get(name, 0.0) + float(amount) * replicas
    return total


def entry_methods(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The entry's ``@bioengine.method``s as the proxy publishes them (MethodSpec fields)."""
    entry = spec["deployments"][spec["entry"]]
    context = set(entry.get("context_methods") or [])
    return [
        {"name": name, "accepts_context": name in context, "json_schema": schema}
        for name, schema in entry["method_schemas"].items()
    ]


def installer_error(message: str) -> str | None:
    """From a Serve deployment message, the installer's own words when Ray could not set up a
    replica's runtime environment (a ``pip`` requirement that cannot be installed), else None."""
    if "runtime env" not in message and "runtime environment" not in message:
        return None
    _, found, output = message.rpartition("Last 50 lines of stdout:")
    lines = [line.strip() for line in output.splitlines() if line.strip()] if found else []
    errors = [line for line in lines if line.startswith("ERROR:")] or lines[-3:]
    if not errors:
        return "setting up the replica's runtime environment failed"
    return "installing the app's packages failed: " + " ".join(errors)


# ---- the replica -----------------------------------------------------------------------------------
async def _datasets_url(application_id: str) -> None:
    """Set ``BIOENGINE_DATA_SERVER_URL`` from the worker's datasets service (looked up through
    Hypha, as ``AppDatasets`` does); without one, ``bioengine.datasets`` says none is configured."""
    if os.environ.get("BIOENGINE_DATA_SERVER_URL"):
        return
    from ._datasets import AppDatasets

    try:
        url = await within(AppDatasets(application_id).server_url(), DATASETS_LOOKUP_TIMEOUT_S)
    except Exception as exc:
        logger.info("No datasets server for this app: %s", exc)
        return
    os.environ["BIOENGINE_DATA_SERVER_URL"] = url


def _record_failure(application_id: str, deployment_name: str, reason: str) -> None:
    key = kv.health_key(application_id)
    failures = kv.get_json(key) or {}
    failures[deployment_name] = {"reason": reason, "at": time.time()}
    kv.put_json(key, failures)


def wrap_class_06(
    user_class: type, deployment: Mapping[str, Any], application_id: str, home_dir: str
) -> type:
    """The class a replica of ``deployment`` (a spec entry) runs: ``user_class`` with the
    platform's ``__init__`` and ``check_health`` (see the module docstring)."""
    from bioengine.runtime import lifecycle_runner, wrap_handles

    from ._replica import prepare_replica

    class_name = user_class.__name__
    deployment_name = str(deployment["deployment_name"])
    hooks = dict(deployment.get("lifecycle_methods") or {})
    handles_spec = {"init_params": list(deployment.get("init_params") or [])}
    user_init: Any = user_class.__init__  # type: ignore[misc]

    async def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        prepare_replica(application_id, class_name, home_dir)
        os.environ["BIOENGINE_REPLICA"] = "1"
        await _datasets_url(application_id)
        kwargs = wrap_handles(handles_spec, kwargs)
        if user_init is not object.__init__:
            result = user_init(self, *args, **kwargs)
            if inspect.isawaitable(result):
                await result
        # async_init now; the smoke test starts in the background
        await lifecycle_runner(self, hooks).check_health()

    async def check_health(self: Any) -> None:
        try:
            await lifecycle_runner(self).check_health()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, RuntimeError) else str(exc)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_record_failure, application_id, deployment_name, reason)
            raise

    wrapped = type(
        class_name,
        (user_class,),
        {"__init__": __init__, "check_health": check_health, "__doc__": user_class.__doc__},
    )
    wrapped.__module__ = user_class.__module__
    wrapped.__qualname__ = user_class.__qualname__
    return wrapped


# ---- the build -------------------------------------------------------------------------------------
def _class_of(deployment: Mapping[str, Any]) -> type:
    target: Any = importlib.import_module(str(deployment["module"]))
    for part in str(deployment["qualname"]).split("."):
        target = getattr(target, part)
    assert isinstance(target, type)
    return target


def _actor_options(
    deployment: Mapping[str, Any], num_gpus: float, worker_env: Mapping[str, str], code_dir: str
) -> dict[str, Any]:
    """The replica's Ray actor options: the author's, ``num_gpus`` as sized, and a runtime_env
    with the author's ``pip`` (Ray installs it; the same requirements give the same environment,
    which Ray reuses), the author's env vars under the worker's and the app's files."""
    options = dict(deployment.get("ray_actor_options") or {})
    options["num_gpus"] = num_gpus
    runtime_env = dict(options.get("runtime_env") or {})
    runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), **worker_env}
    if "container" not in runtime_env:
        runtime_env.setdefault("working_dir", f"local://{code_dir}")
    if runtime_env.get("pip"):
        runtime_env["pip"] = {"packages": list(runtime_env["pip"]), "pip_check": False}
    options["runtime_env"] = runtime_env
    return options


def build_06(spec: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The entry's bound deployment (every other class bound into it through its handle
    parameters) and the entry's published methods. ``spec`` is an ``AppSpec`` with ``app06``.
    Each class gets the platform's env vars, its own Serve version and deploy_app's ``scaling``
    (changed in place, outside the version) as the older format's deployments do."""
    from ray import serve

    from ._builder import _rolling, deployment_version_06, scaling_options, worker_env

    app = spec.app06
    app_spec = app.spec
    # Imported from the app's folder, as in the discovery task and the replicas: a module may
    # read its own files at import by a relative path (a requirements file for ``pip=``, say).
    with contextlib.chdir(spec.code_dir):
        classes = {key: _class_of(app_spec["deployments"][key]) for key in app_spec["order"]}
    bound: dict[str, Any] = {}
    for key in app_spec["order"]:
        deployment = app_spec["deployments"][key]
        user_class = classes[key]
        kwargs = dict(app.init_kwargs.get(key) or {})
        for param in deployment["init_params"]:
            if param["kind"] == "handle":
                kwargs[param["name"]] = bound[param["target"]]
        serve_options = {
            **deployment.get("serve_options", {}),
            **scaling_options(spec, deployment["class_name"]),
        }
        serve_options.pop("version", None)
        made = serve.deployment(
            wrap_class_06(user_class, deployment, spec.application_id, spec.home_dir),
            name=deployment["deployment_name"],
            ray_actor_options=_actor_options(
                deployment,
                float(app.num_gpus.get(key, 0.0)),
                worker_env(spec, deployment["class_name"]),
                spec.code_dir,
            ),
            max_ongoing_requests=deployment["max_ongoing_requests"],
            **serve_options,
        )
        bound[key] = _rolling(made, deployment_version_06(spec, key)).bind(**kwargs)
    return bound[app_spec["entry"]], entry_methods(app_spec)
