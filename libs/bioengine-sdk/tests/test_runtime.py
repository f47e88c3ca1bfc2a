"""The runtime handle and the lifecycle runner, with stand-ins for Serve's handles."""

import asyncio
import pickle
import threading

import pytest

import bioengine
from bioengine.runtime import BioEngineRuntimeHandle, LifecycleRunner, check_health, wrap_handles


class FakeResponse:
    """Awaitable like Serve's DeploymentResponse."""

    def __init__(self, value):
        self.value = value

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return self.value


class FakeMethod:
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def remote(self, *args, **kwargs):
        self.calls.append((self.name, args, kwargs))
        return FakeResponse((self.name, args, kwargs))

    def options(self, **options):
        return ("method options", self.name, options)


class FakeHandle:
    """The shape of Serve's DeploymentHandle: attributes are method handles."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return FakeMethod(name, self.calls)

    def options(self, **options):
        return ("handle options", options)

    def remote(self, *args, **kwargs):
        return FakeResponse(("__call__", args, kwargs))


async def test_calling_a_method_is_remote_and_awaitable():
    raw = FakeHandle()
    handle = BioEngineRuntimeHandle(raw)
    assert await handle.predict(1, k=2) == ("predict", (1,), {"k": 2})
    assert await handle.predict.remote(3) == ("predict", (3,), {})  # Serve's spelling still works
    assert handle.predict.options(stream=True) == ("method options", "predict", {"stream": True})
    assert raw.calls == [("predict", (1,), {"k": 2}), ("predict", (3,), {})]


async def test_options_remote_and_raw_pass_through():
    raw = FakeHandle()
    handle = BioEngineRuntimeHandle(raw)
    assert handle._raw is raw
    assert handle.options(method_name="x") == ("handle options", {"method_name": "x"})
    assert await handle.remote(5) == ("__call__", (5,), {})


def test_private_names_raise_and_the_handle_is_read_only():
    handle = BioEngineRuntimeHandle(FakeHandle())
    with pytest.raises(AttributeError, match=r"use ._raw"):
        _ = handle._secret
    with pytest.raises(AttributeError, match=r"read-only"):
        handle.x = 1
    assert isinstance(pickle.loads(pickle.dumps(BioEngineRuntimeHandle("raw"))), BioEngineRuntimeHandle)


def test_wrap_handles_wraps_only_handle_parameters():
    spec = {
        "init_params": [{"name": "model", "kind": "handle", "target": "m:M"}, {"name": "n", "kind": "value"}]
    }
    raw = FakeHandle()
    kwargs = wrap_handles(spec, {"model": raw, "n": 3})
    assert isinstance(kwargs["model"], BioEngineRuntimeHandle) and kwargs["model"]._raw is raw
    assert kwargs["n"] == 3
    assert wrap_handles(spec, kwargs)["model"] is kwargs["model"]


def make_app(sync: bool, smoke_fails: bool = False, health_fails: bool = False):
    events = []

    if sync:

        @bioengine.app
        class App:
            @bioengine.async_init
            def init(self):
                events.append(("init", threading.current_thread() is threading.main_thread()))

            @bioengine.smoke_test
            def smoke(self):
                events.append(("smoke", threading.current_thread() is threading.main_thread()))
                if smoke_fails:
                    raise ValueError("the model gave 2 + 2 = 5")

            @bioengine.health_check
            def health(self):
                events.append(("health", threading.current_thread() is threading.main_thread()))
                if health_fails:
                    raise RuntimeError("GPU lost")

    else:
        gate = asyncio.Event()

        @bioengine.app
        class App:
            @bioengine.async_init
            async def init(self):
                events.append(("init", True))

            @bioengine.smoke_test
            async def smoke(self):
                await gate.wait()
                events.append(("smoke", True))
                if smoke_fails:
                    raise ValueError("the model gave 2 + 2 = 5")

            @bioengine.health_check()
            async def health(self):
                events.append(("health", True))
                if health_fails:
                    raise RuntimeError("GPU lost")

        App.gate = gate

    return App, events


async def test_sync_hooks_run_in_a_thread_in_order():
    App, events = make_app(sync=True)
    runner = LifecycleRunner(App())
    await runner.check_health()  # async_init, then the smoke test starts
    await runner.smoke_task
    await runner.check_health()  # health_check
    assert events == [("init", False), ("smoke", False), ("health", False)]


async def test_async_hooks_and_the_smoke_test_in_the_background():
    App, events = make_app(sync=False)
    runner = LifecycleRunner(App())
    await runner.check_health()
    assert events == [("init", True)]  # healthy before the smoke test has finished
    await runner.check_health()
    assert events == [("init", True), ("health", True)]
    App.gate.set()
    await runner.smoke_task
    assert runner.smoke_error is None
    await runner.check_health()
    assert events[-1] == ("health", True) and ("smoke", True) in events


@pytest.mark.parametrize("sync", [True, False])
async def test_a_failed_smoke_test_fails_every_later_check(sync):
    App, events = make_app(sync=sync, smoke_fails=True)
    if not sync:
        App.gate.set()
    runner = LifecycleRunner(App())
    await runner.check_health()
    await runner.smoke_task
    for _ in range(2):
        with pytest.raises(RuntimeError, match=r"Smoke test failed: ValueError: the model gave 2 \+ 2 = 5"):
            await runner.check_health()
    assert not [e for e in events if e[0] == "health"]  # health_check no longer runs


@pytest.mark.parametrize("sync", [True, False])
async def test_a_failing_health_check_raises(sync):
    App, _ = make_app(sync=sync, health_fails=True)
    runner = LifecycleRunner(App())
    await runner.check_health()
    with pytest.raises(RuntimeError, match=r"GPU lost"):
        await runner.check_health()


async def test_a_failed_async_init_stays_failed():
    calls = []

    @bioengine.app
    class Broken:
        @bioengine.async_init
        async def init(self):
            calls.append(1)
            raise OSError("weights missing")

    runner = LifecycleRunner(Broken())
    with pytest.raises(OSError, match=r"weights missing"):
        await runner.check_health()
    with pytest.raises(RuntimeError, match=r"async_init failed: OSError: weights missing"):
        await runner.check_health()
    assert calls == [1]


async def test_concurrent_first_checks_run_async_init_once():
    calls = []

    @bioengine.app
    class Slow:
        @bioengine.async_init
        async def init(self):
            calls.append(1)
            await asyncio.sleep(0.01)

    runner = LifecycleRunner(Slow())
    await asyncio.gather(*(runner.check_health() for _ in range(5)))
    assert calls == [1]


async def test_the_installed_check_health_keeps_one_runner_per_instance():
    App, events = make_app(sync=True)

    class Deployed(App):  # what the builder does inside Ray
        check_health = check_health

    instance = Deployed()
    await instance.check_health()
    await instance._bioengine_lifecycle_runner.smoke_task
    await instance.check_health()
    assert [e[0] for e in events] == ["init", "smoke", "health"]


async def test_a_class_without_hooks_is_always_healthy():
    @bioengine.app
    class Nothing:
        pass

    runner = LifecycleRunner(Nothing())
    await runner.check_health()
    await runner.check_health()
    assert runner.smoke_task is None
