"""``@bioengine.app``, ``@bioengine.method`` and the lifecycle hooks.

The decorators only record: ``@bioengine.app`` validates its options into one model
(``AppOptions``) and stores an ``AppDefinition`` on the class (``app_definition(cls)``); the
class itself is returned unchanged, so an author can construct and call it in a plain test.
Nothing here imports Ray: the deployment is made inside Ray by the platform's builder, from the
spec that ``bioengine.composition.introspect_app`` derives from these records.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import BioEngineUserError, ReservedMethodNameError

__all__ = [
    "HOOK_KINDS",
    "RESERVED_METHOD_NAMES",
    "SERVE_OPTIONS",
    "AppDefinition",
    "AppOptions",
    "app",
    "app_definition",
    "async_init",
    "health_check",
    "method",
    "smoke_test",
]

C = TypeVar("C", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

#: Lifecycle hooks, in the order the platform runs them.
HOOK_KINDS: tuple[str, ...] = ("async_init", "smoke_test", "health_check")
#: Names the platform installs on (or reserves for) a deployment class.
RESERVED_METHOD_NAMES = frozenset(
    {"check_health", "async_init", "test_deployment", "bioengine_runtime_version"}
)
#: ``@bioengine.app(**kwargs)`` beyond the named options: Ray Serve ``serve.deployment`` options.
SERVE_OPTIONS = frozenset(
    {"num_replicas", "autoscaling_config", "max_queued_requests", "user_config", "health_check_period_s",
     "health_check_timeout_s", "graceful_shutdown_wait_loop_s", "graceful_shutdown_timeout_s",
     "logging_config", "placement_group_bundles", "placement_group_strategy", "max_replicas_per_node",
     "request_router_config", "name", "version"}
)  # fmt: skip

_HOOK_ATTR = "__bioengine_hook__"
_METHOD_ATTR = "__bioengine_method__"
_APP_ATTR = "__bioengine_app__"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _json_safe(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{what} must be plain JSON data (str, numbers, bools, lists, dicts): {exc}"
        ) from None


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class AppOptions(BaseModel):
    """The options of ``@bioengine.app``, validated. ``num_gpus`` is the older SDKs' way to ask
    for GPUs (kept so their apps deploy); newer apps give ``gpu_memory_mb``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    num_cpus: float = Field(1, ge=0)
    gpu_memory_mb: int | None = None
    num_gpus: float | None = Field(None, ge=0)
    memory_mb: int | None = Field(None, gt=0)
    pip: list[str] | None = None
    container_image: str | None = None
    env_vars: dict[str, str] | None = None
    max_ongoing_requests: int = Field(10, ge=1)
    ray_actor_options: dict[str, Any] | None = None
    serve_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("gpu_memory_mb")
    @classmethod
    def _gpu_memory(cls, value: int | None) -> int | None:
        if value is not None and value <= 0 and value != -1:
            raise ValueError("must be a positive number of MiB, or -1 for a whole GPU")
        return value

    @field_validator("pip")
    @classmethod
    def _pip(cls, value: list[str] | None) -> list[str] | None:
        for requirement in value or []:
            if not requirement.strip():
                raise ValueError("an empty requirement")
        return value

    @field_validator("container_image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("env_vars")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name in value or {}:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @field_validator("ray_actor_options")
    @classmethod
    def _actor_options(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _json_safe(value, "ray_actor_options")

    @field_validator("serve_kwargs")
    @classmethod
    def _serve(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - SERVE_OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(map(repr, unknown))}; besides the named options, "
                f"@bioengine.app takes these Ray Serve deployment options: {', '.join(sorted(SERVE_OPTIONS))}"
            )
        return _json_safe(value, "Ray Serve options")

    @model_validator(mode="after")
    def _combinations(self) -> AppOptions:
        if self.container_image is not None and self.pip:
            raise ValueError(
                "container_image and pip cannot be combined: install the packages into the image"
            )
        if self.num_gpus is not None and self.gpu_memory_mb is not None:
            raise ValueError("give gpu_memory_mb or the older num_gpus, not both")
        return self

    def runtime_env(self) -> dict[str, Any]:
        env: dict[str, Any] = {}
        if self.pip:
            env["pip"] = list(self.pip)
        if self.container_image is not None:
            env["container"] = {"image": self.container_image}
        if self.env_vars:
            env["env_vars"] = dict(self.env_vars)
        return env

    def actor_options(self) -> dict[str, Any]:
        """Ray actor options of a replica: ``num_cpus``, ``memory`` (bytes), ``num_gpus`` (only
        from the older ``num_gpus`` option; ``gpu_memory_mb`` is sized by the platform, which
        knows the GPUs), ``runtime_env``; then ``ray_actor_options`` deep-merged over them."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.memory_mb is not None:
            options["memory"] = self.memory_mb * 1024 * 1024
        if self.num_gpus is not None:
            options["num_gpus"] = self.num_gpus
        runtime_env = self.runtime_env()
        if runtime_env:
            options["runtime_env"] = runtime_env
        return _deep_merge(options, self.ray_actor_options or {})


@dataclass(frozen=True)
class AppDefinition:
    """What ``@bioengine.app`` recorded on a class."""

    options: AppOptions
    #: hook kind ("async_init", "smoke_test", "health_check") -> method name
    hooks: dict[str, str] = field(default_factory=dict)
    #: method name -> {"context": bool}
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)


def app_definition(cls: Any) -> AppDefinition | None:
    """The ``AppDefinition`` of a class decorated with ``@bioengine.app`` itself (a subclass of a
    decorated class is not decorated), else None."""
    if not isinstance(cls, type):
        return None
    definition = cls.__dict__.get(_APP_ATTR)
    return definition if isinstance(definition, AppDefinition) else None


def _describe_validation_error(where: str, error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        location = [str(part) for part in item["loc"]]
        message = str(item["msg"]).removeprefix("Value error, ")
        if not location:
            problems.append(message)
            continue
        name = location[0]
        if name == "serve_kwargs" and len(location) > 1:
            name = location[1]
        detail = "".join(f"[{part}]" for part in location[1:] if location[0] != "serve_kwargs")
        problems.append(f"option '{name}'{detail}: {message}")
    return f"{where}: " + "; ".join(problems)


def _attributes(cls: type) -> dict[str, Any]:
    """The class's attributes as lookup finds them (own before inherited), ``object`` excluded."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[:-1]):
        found.update(vars(klass))
    return found


def _function(value: Any) -> Any:
    return value.__func__ if isinstance(value, (staticmethod, classmethod)) else value


def _collect(cls: type) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    where = f"@bioengine.app on '{cls.__qualname__}'"
    hooks: dict[str, str] = {}
    methods: dict[str, dict[str, Any]] = {}
    for name, raw in _attributes(cls).items():
        value = _function(raw)
        kind = getattr(value, _HOOK_ATTR, None)
        if kind in HOOK_KINDS:
            if kind in hooks:
                raise ReservedMethodNameError(
                    f"{where}: both '{hooks[kind]}' and '{name}' are marked @bioengine.{kind}; "
                    f"a class has at most one {kind} hook"
                )
            hooks[kind] = name
        marker = getattr(value, _METHOD_ATTR, None)
        if isinstance(marker, dict):
            methods[name] = dict(marker)
        if name in RESERVED_METHOD_NAMES and not (name == "async_init" and kind == "async_init"):
            raise ReservedMethodNameError(
                f"{where}: '{name}' is a name BioEngine reserves for itself "
                f"({', '.join(sorted(RESERVED_METHOD_NAMES))}); rename the method"
                + ("; mark a health check with @bioengine.health_check" if name == "check_health" else "")
            )
    return hooks, methods


@overload
def app(cls: C, /) -> C: ...
@overload
def app(
    *,
    num_cpus: float = 1,
    gpu_memory_mb: int | None = None,
    num_gpus: float | None = None,
    memory_mb: int | None = None,
    pip: list[str] | None = None,
    container_image: str | None = None,
    env_vars: dict[str, str] | None = None,
    max_ongoing_requests: int = 10,
    ray_actor_options: dict[str, Any] | None = None,
    **serve_kwargs: Any,
) -> Callable[[C], C]: ...
def app(cls: Any = None, /, **options: Any) -> Any:
    """Mark a class as a BioEngine app deployment (see the package README for every option).

    Returns the class itself (upstream BioEngine returns a Ray Serve ``Deployment``; here the
    platform makes the deployment inside Ray), so ``MyApp(...)`` works in a local test."""
    named = set(AppOptions.model_fields) - {"serve_kwargs"}
    serve_kwargs = {k: options.pop(k) for k in list(options) if k not in named}

    def decorate(target: C) -> C:
        if not isinstance(target, type):
            raise BioEngineUserError(
                f"@bioengine.app decorates a class, not {type(target).__name__} {target!r}"
            )
        where = f"@bioengine.app on '{target.__qualname__}'"
        unknown = sorted(set(serve_kwargs) - SERVE_OPTIONS)
        if unknown:
            raise BioEngineUserError(
                f"{where}: unknown option {', '.join(map(repr, unknown))}; besides "
                f"{', '.join(sorted(named))}, it takes these Ray Serve deployment options: "
                f"{', '.join(sorted(SERVE_OPTIONS))}"
            )
        try:
            validated = AppOptions(**options, serve_kwargs=serve_kwargs)
        except ValidationError as exc:
            raise BioEngineUserError(_describe_validation_error(where, exc)) from None
        hooks, methods = _collect(target)
        setattr(target, _APP_ATTR, AppDefinition(validated, hooks, methods))
        return target

    if cls is not None:
        if options or serve_kwargs:
            raise BioEngineUserError("@bioengine.app takes keyword options only: @bioengine.app(num_cpus=2)")
        return decorate(cls)
    return decorate


@overload
def method(func: F, /) -> F: ...
@overload
def method(*, context: bool = False) -> Callable[[F], F]: ...
def method(func: Any = None, /, *, context: bool = False) -> Any:
    """Publish a method on the app's Hypha service, with a JSON schema built from its signature
    (hypha-rpc ``schema_method``). ``context=True``: the method has a ``context`` parameter, which
    receives the caller's Hypha context (a dict) and is left out of the schema."""

    def decorate(target: F) -> F:
        if not callable(target):
            raise BioEngineUserError(f"@bioengine.method decorates a function, not {target!r}")
        name = getattr(target, "__qualname__", repr(target))
        if context and "context" not in inspect.signature(target).parameters:
            raise BioEngineUserError(
                f"@bioengine.method(context=True) on '{name}': the method needs a parameter named 'context'"
            )
        from hypha_rpc.utils.schema import schema_method

        try:
            wrapped = schema_method(target, arbitrary_types_allowed=True)
        except (ValueError, AssertionError, TypeError) as exc:
            raise BioEngineUserError(f"@bioengine.method on '{name}': {exc}") from None
        if context:
            parameters = wrapped.__schema__["parameters"]
            parameters.get("properties", {}).pop("context", None)
            if "context" in parameters.get("required", []):
                parameters["required"] = [p for p in parameters["required"] if p != "context"]
        setattr(wrapped, _METHOD_ATTR, {"context": bool(context)})
        return wrapped

    if func is not None:
        return decorate(func)
    return decorate


def _hook(kind: Literal["async_init", "smoke_test", "health_check"]) -> Callable[[F], F]:
    def mark(func: F) -> F:
        if not callable(func):
            raise BioEngineUserError(f"@bioengine.{kind} decorates a method, not {func!r}")
        setattr(func, _HOOK_ATTR, kind)
        return func

    return mark


def async_init(func: F, /) -> F:
    """Run once per replica after ``__init__``, before it counts as healthy (sync or async)."""
    return _hook("async_init")(func)


def smoke_test(func: F, /) -> F:
    """Run once per replica in the background after ``async_init``; if it raises, the replica is
    marked failed with the reason (sync or async)."""
    return _hook("smoke_test")(func)


@overload
def health_check(func: F, /) -> F: ...
@overload
def health_check() -> Callable[[F], F]: ...
def health_check(func: Any = None, /) -> Any:
    """Run on each of Ray Serve's health checks; raising marks the replica unhealthy.
    ``@bioengine.health_check`` or ``@bioengine.health_check()``."""
    mark = _hook("health_check")
    return mark if func is None else mark(func)
