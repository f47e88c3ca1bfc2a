"""What runs inside a replica: handles to other deployments, and the lifecycle runner.

Both are installed by the platform's builder inside Ray; neither imports Ray (a handle is
anything with Ray Serve's ``DeploymentHandle`` shape), so they are tested without it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .decorators import app_definition

__all__ = ["BioEngineRuntimeHandle", "LifecycleRunner", "check_health", "lifecycle_runner", "wrap_handles"]


class _MethodCaller:
    """``handle.m``: calling it is ``raw.m.remote(...)`` (awaitable); ``.remote``/``.options``
    of Serve's method handle still work."""

    __slots__ = ("_method", "_name")

    def __init__(self, method: Any, name: str):
        self._method = method
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._method.remote(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._method, name)

    def __repr__(self) -> str:
        return f"<BioEngineRuntimeHandle method {self._name}>"


class BioEngineRuntimeHandle:
    """A handle to another deployment of the app, given to ``__init__`` in place of Serve's
    ``DeploymentHandle``: ``await handle.predict(x)`` is ``await raw.predict.remote(x)``.
    ``handle.options(...)`` and ``handle.remote(...)`` are Serve's, unchanged; ``handle._raw`` is
    the raw handle (for streaming or other Serve features); other ``_`` names raise."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Any):
        object.__setattr__(self, "_raw", raw)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(
                f"{name!r}: a BioEngineRuntimeHandle publishes no private names; use ._raw for the raw handle"
            )
        raw = object.__getattribute__(self, "_raw")
        if name in ("options", "remote"):
            return getattr(raw, name)
        return _MethodCaller(getattr(raw, name), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a BioEngineRuntimeHandle is read-only")

    def __repr__(self) -> str:
        return f"BioEngineRuntimeHandle({self._raw!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (BioEngineRuntimeHandle, (self._raw,))


def wrap_handles(deployment_spec: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``__init__`` keyword arguments with every handle parameter of the spec wrapped."""
    handles = {p["name"] for p in deployment_spec["init_params"] if p["kind"] == "handle"}
    return {
        name: BioEngineRuntimeHandle(value)
        if name in handles and not isinstance(value, BioEngineRuntimeHandle)
        else value
        for name, value in kwargs.items()
    }


async def _call_hook(function: Callable[[], Any]) -> Any:
    """A hook may be sync (run in a thread: it must not block the replica's loop) or async."""
    if inspect.iscoroutinefunction(function):
        return await function()
    result = await asyncio.to_thread(function)
    if inspect.isawaitable(result):
        result = await result
    return result


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class LifecycleRunner:
    """Runs an instance's hooks on Serve's health checks. The first ``check_health`` awaits
    ``async_init`` and then starts ``smoke_test`` in the background (the replica may be healthy
    before it ends); once the smoke test has failed, every later call raises
    ``RuntimeError("Smoke test failed: ...")``; otherwise later calls run ``health_check``."""

    def __init__(self, instance: Any, hooks: Mapping[str, str | None] | None = None):
        if hooks is None:
            definition = app_definition(type(instance))
            if definition is None:
                for klass in type(instance).__mro__:
                    definition = app_definition(klass)
                    if definition is not None:
                        break
            hooks = definition.hooks if definition else {}
        self.instance = instance
        self.hooks = {kind: name for kind, name in hooks.items() if name}
        self._lock = asyncio.Lock()
        self._initialised = False
        self._init_error: str | None = None
        self.smoke_task: asyncio.Task[Any] | None = None
        self.smoke_error: str | None = None

    def _hook(self, kind: str) -> Callable[[], Any] | None:
        name = self.hooks.get(kind)
        return getattr(self.instance, name) if name else None

    async def _smoke(self, hook: Callable[[], Any]) -> None:
        try:
            await _call_hook(hook)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.smoke_error = _reason(exc)
            from ._logging import current_logger

            current_logger().error("Smoke test failed: %s", self.smoke_error)

    async def check_health(self) -> None:
        async with self._lock:
            if self._init_error is not None:
                raise RuntimeError(f"async_init failed: {self._init_error}")
            if not self._initialised:
                init = self._hook("async_init")
                if init is not None:
                    try:
                        await _call_hook(init)
                    except Exception as exc:
                        self._init_error = _reason(exc)
                        raise
                self._initialised = True
                smoke = self._hook("smoke_test")
                if smoke is not None:
                    self.smoke_task = asyncio.create_task(self._smoke(smoke), name="bioengine-smoke-test")
                return
        if self.smoke_error is not None:
            raise RuntimeError(f"Smoke test failed: {self.smoke_error}")
        health = self._hook("health_check")
        if health is not None:
            await _call_hook(health)


_RUNNER_ATTR = "_bioengine_lifecycle_runner"


def lifecycle_runner(instance: Any, hooks: Mapping[str, str | None] | None = None) -> LifecycleRunner:
    """The instance's ``LifecycleRunner``, made on first use (with ``hooks``, else its class's)."""
    runner = instance.__dict__.get(_RUNNER_ATTR)
    if runner is None:
        runner = LifecycleRunner(instance, hooks)
        instance.__dict__[_RUNNER_ATTR] = runner
    return runner


async def check_health(self: Any) -> None:
    """The ``check_health`` method the platform installs on a deployment class (Ray Serve calls
    it periodically): one ``LifecycleRunner`` per instance."""
    await lifecycle_runner(self).check_health()
