"""Pure parts of the app runtime: specs, access rules, schema methods, module isolation, class wrapping."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypha_rpc.utils.schema import schema_method

from bioengine_app_runtime import AppSpec, DeploymentRef, _builder, _replica
from bioengine_app_runtime._proxy import method_rule


@pytest.mark.parametrize("entry", ["demo_app:DemoApp", "a:B"])
def test_deployment_ref_round_trip(entry):
    assert str(DeploymentRef.parse(entry)) == entry


@pytest.mark.parametrize("entry", ["demo_app", ":DemoApp", "demo_app:", ""])
def test_deployment_ref_rejects_bad_entries(entry):
    with pytest.raises(ValueError, match="must look like"):
        DeploymentRef.parse(entry)


@pytest.mark.parametrize(
    ("rules", "method", "expected"),
    [
        ({"*": ["*"]}, "ping", ["*"]),
        ({"*": ["*"], "secret": ["admin"]}, "secret", ["admin"]),
        ({"*": ["alice"], "secret": ["admin"]}, "ping", ["alice"]),
        ({"secret": ["admin"]}, "ping", []),  # no rule for it and no '*' rule: nobody
        ({}, "ping", []),
    ],
)
def test_method_rule(rules, method, expected):
    assert method_rule(rules, method) == expected


class _Entry:
    @schema_method
    async def ping(self) -> str:
        """Answers."""
        return "pong"

    @schema_method
    async def whoami(self, context: dict | None = None) -> str:
        """Uses the caller's context."""
        return str(context)

    async def not_exposed(self) -> None:
        return None

    @schema_method
    async def _private(self) -> None:
        return None


def test_schema_methods_are_the_public_schema_methods_with_their_schemas():
    methods = {m.name: m for m in _builder.schema_methods(_Entry)}
    assert set(methods) == {"ping", "whoami"}
    assert methods["whoami"].accepts_context and not methods["ping"].accepts_context
    assert methods["ping"].json_schema and methods["ping"].json_schema["name"] == "ping"


def _app_dir(base, name, value):
    folder = base / name
    folder.mkdir()
    (folder / "appmod.py").write_text(f"VALUE = {value!r}\n")
    (folder / "helper_mod.py").write_text(f"HELPER = {value!r}\n")
    return str(folder)


def test_builds_in_one_worker_see_only_their_own_app(tmp_path):
    first, second = _app_dir(tmp_path, "one", 1), _app_dir(tmp_path, "two", 2)
    try:
        _builder._enter(first, ["appmod"])
        assert importlib.import_module("appmod").VALUE == 1
        assert importlib.import_module("helper_mod").HELPER == 1
        _builder._remember_modules(first)
        _builder._enter(second, ["appmod"])
        assert first not in sys.path and sys.path[0] == second
        assert "helper_mod" not in sys.modules  # the previous app's sibling module is dropped too
        assert importlib.import_module("appmod").VALUE == 2
        assert importlib.import_module("helper_mod").HELPER == 2
    finally:
        _builder._remember_modules(second)
        for name in ("appmod", "helper_mod"):
            sys.modules.pop(name, None)
        for folder in (first, second):
            if folder in sys.path:
                sys.path.remove(folder)
        _builder._previous.update(path=None, modules=set())


def test_load_names_what_is_wrong(tmp_path):
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "plain.py").write_text("class NotADeployment:\n    pass\n")
    try:
        _builder._enter(str(folder), ["plain"])
        with pytest.raises(ValueError, match=r"the app has no file 'missing\.py'"):
            _builder._load("missing", "X")
        with pytest.raises(ValueError, match=r"'plain\.py' defines no 'Other'"):
            _builder._load("plain", "Other")
        with pytest.raises(ValueError, match="is not a Ray Serve deployment"):
            _builder._load("plain", "NotADeployment")
    finally:
        _builder._remember_modules(str(folder))
        sys.modules.pop("plain", None)
        sys.path.remove(str(folder))
        _builder._previous.update(path=None, modules=set())


def test_wrapped_class_prepares_the_replica_before_the_users_init(monkeypatch):
    calls = []
    monkeypatch.setattr(_replica, "prepare_replica", lambda app, cls, home: calls.append((app, cls, home)))

    class Model:
        """The user's class."""

        def __init__(self, size: int = 1):
            # The datasets client is there before the user's __init__ runs.
            self.seen_datasets = self.bioengine_datasets
            self.size = size

        def double(self) -> int:
            return self.size * 2

    wrapped = _replica.wrap_deployment_class(Model, "my-app", "/apps/my-app/home")
    assert wrapped.__name__ == "Model" and wrapped.__doc__ == "The user's class."
    assert wrapped.__qualname__ == Model.__qualname__ and issubclass(wrapped, Model)
    instance = wrapped(size=4)
    assert calls == [("my-app", "Model", "/apps/my-app/home")]
    assert instance.double() == 8 and instance.seen_datasets is instance.bioengine_datasets


async def test_wrapped_async_init_is_awaited(monkeypatch):
    monkeypatch.setattr(_replica, "prepare_replica", lambda *args: None)

    class AsyncModel:
        async def __init__(self, value: int):  # Serve supports async constructors
            self.value = value

    wrapped = _replica.wrap_deployment_class(AsyncModel, "a", "/h")
    instance = wrapped.__new__(wrapped)
    await instance.__init__(5)
    assert instance.value == 5


def test_spec_defaults_are_stable():
    spec = AppSpec(
        application_id="a", artifact_id="ws/a", code_dir="/c", home_dir="/h",
        deployments=["m:C"], server_url="http://s", workspace="ws",
    )  # fmt: skip
    assert spec.authorized_users == {"*": ["*"]} and spec.default_num_cpus == 0.1
    assert spec.refs() == [DeploymentRef(module="m", class_name="C")]


# ---- the proxy's Hypha connection ---------------------------------------------------------------


def test_watch_verdict_replaces_only_connections_hypha_rpc_cannot_bring_back():
    from bioengine_app_runtime._proxy import STALE_AFTER_S, watch_verdict

    assert watch_verdict(True, False, None, False) == "hypha-rpc gave up reconnecting to the Hypha server"
    assert watch_verdict(False, True, None, True) is None  # connected
    assert watch_verdict(False, False, 1.0, True) is None  # hypha-rpc is still on it
    assert watch_verdict(False, False, STALE_AFTER_S + 1, False) is None  # the server is still away
    stale = watch_verdict(False, False, STALE_AFTER_S + 1, True)
    assert stale is not None and "down for" in stale


class _FakeServer:
    """What the proxy uses of a hypha-rpc connection, with its private connection state."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        websocket = SimpleNamespace(state=SimpleNamespace(name="OPEN"))
        self.rpc = SimpleNamespace(_connection=SimpleNamespace(_closed=False, _websocket=websocket))
        self.disconnected = False

    async def register_service(self, api: dict, config: dict) -> dict:
        return {"id": f"ws/app-x-r1:{api['id']}"}

    async def get_service_info(self, service_id: str) -> dict:
        return {"id": service_id}

    async def disconnect(self) -> None:
        self.disconnected = True


def _unconnected_proxy() -> Any:
    """A proxy as ``__init__`` leaves it, before its registration task starts."""
    from bioengine_app_runtime import _proxy

    proxy: Any = object.__new__(_proxy.BioEngineProxy.func_or_class)
    proxy.spec = AppSpec(
        application_id="app-x", artifact_id="ws/app-x", code_dir="/c", home_dir="/h",
        deployments=["demo_app:DemoApp"], server_url="http://hypha.test", workspace="ws",
    )  # fmt: skip
    proxy.server, proxy.service_id, proxy.error, proxy.connected = None, None, None, False
    proxy.registrations, proxy.ongoing, proxy.client_id = 0, 0, "app-x-r1"
    proxy.peers = _proxy.PeerConnections("ws", proxy.service_api, proxy._ice_servers)
    proxy.rtc_service_id, proxy.rtc_error = None, None
    proxy._aiortc = _proxy.import_in_thread("aiortc")
    return proxy


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_the_proxy_connects_and_registers_anew_when_hypha_rpc_gives_up(monkeypatch):
    from bioengine_app_runtime import _proxy

    servers: list[_FakeServer] = []
    tokens: list[str | None] = []

    async def fake_connect(server_url: str, **kwargs: object) -> _FakeServer:
        tokens.append(kwargs.get("token"))  # type: ignore[arg-type]
        servers.append(_FakeServer())
        return servers[-1]

    monkeypatch.setattr(_proxy, "connect", fake_connect)
    monkeypatch.setattr(_proxy.kv, "get_json", lambda key: {"proxy_token": f"token-{len(servers)}"})
    monkeypatch.setattr(_proxy, "WATCH_INTERVAL_S", 0.01)
    proxy = _unconnected_proxy()
    task = asyncio.create_task(proxy._register())
    try:
        await until(lambda: proxy.registrations == 1)
        assert proxy.connected and proxy.service_id == "ws/app-x-r1:app-x"
        assert proxy.rtc_service_id == "ws/app-x-r1:app-x-rtc" and proxy.rtc_error is None
        servers[0].rpc._connection._closed = True  # the server refused hypha-rpc's reconnect
        await until(lambda: not proxy.connected)
        assert "gave up" in proxy.error
        await until(lambda: proxy.registrations == 2)
        assert servers[0].disconnected and not servers[1].disconnected
        assert proxy.connected and proxy.error is None
        assert tokens == ["token-0", "token-1"]  # the token is read again (apps-svc renews it)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_refused_registration_cancels_the_webrtc_one_and_starts_over(monkeypatch):
    from bioengine_app_runtime import _proxy

    rtc_started = asyncio.Event()
    rtc_cancelled: list[bool] = []

    class RefusingServer(_FakeServer):
        async def register_service(self, api: dict, config: dict) -> dict:
            if api["id"].endswith("-rtc"):
                rtc_started.set()
                try:
                    await asyncio.sleep(30)  # still under way when the main one is refused
                except asyncio.CancelledError:
                    rtc_cancelled.append(True)
                    raise
            await rtc_started.wait()
            raise RuntimeError("registration refused")

    servers: list[_FakeServer] = []

    async def fake_connect(server_url: str, **kwargs: object) -> _FakeServer:
        servers.append(RefusingServer() if not servers else _FakeServer())
        return servers[-1]

    monkeypatch.setattr(_proxy, "connect", fake_connect)
    monkeypatch.setattr(_proxy.kv, "get_json", lambda key: {"proxy_token": "t"})
    proxy = _unconnected_proxy()
    task = asyncio.create_task(proxy._register())
    try:
        await until(lambda: proxy.registrations == 1)  # on the second connection, after 1 s
        assert rtc_cancelled == [True] and servers[0].disconnected
        assert proxy.service_id == "ws/app-x-r1:app-x" and proxy.rtc_service_id == "ws/app-x-r1:app-x-rtc"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---- updates: Serve versions ------------------------------------------------------------------------

APPS = Path(__file__).resolve().parents[3] / "apps"


def _composition(**changes: Any) -> AppSpec:
    base: dict[str, Any] = {
        "application_id": "comp",
        "artifact_id": "ws/composition-app",
        "code_dir": str(APPS / "composition-app"),
        "home_dir": "/h",
        "deployments": [
            "composition_deployment:CompositionDeployment",
            "deployment_1:Deployment1",
            "deployment_2:Deployment2",
        ],
        "init_kwargs": {"CompositionDeployment": {"demo_input": "a"}, "Deployment2": {"start_number": 1}},
        "server_url": "http://s",
        "workspace": "ws",
    }
    base.update(changes)
    return AppSpec.model_validate(base)


CLASSES = ("CompositionDeployment", "Deployment1", "Deployment2")


def _versions(spec: AppSpec) -> dict[str, str]:
    from bioengine_app_runtime import ProxySpec

    versions = {name: _builder.deployment_version(spec, name) for name in CLASSES}
    versions["BioEngineProxy"] = _builder.proxy_version(ProxySpec.of(spec))
    return versions


def _changed(before: AppSpec, after: AppSpec) -> set[str]:
    old, new = _versions(before), _versions(after)
    return {name for name in old if old[name] != new[name]}


@pytest.mark.parametrize(
    ("changes", "restarted"),
    [
        ({}, set()),
        (
            {
                "init_kwargs": {
                    "CompositionDeployment": {"demo_input": "a"},
                    "Deployment2": {"start_number": 2},
                }
            },
            {"Deployment2"},
        ),
        (
            {
                "init_kwargs": {
                    "CompositionDeployment": {"demo_input": "b"},
                    "Deployment2": {"start_number": 1},
                }
            },
            {"CompositionDeployment"},
        ),
        ({"env_vars": {"Deployment1": {"X": "1"}}}, {"Deployment1"}),
        ({"env_vars": {"*": {"X": "1"}}}, set(CLASSES)),
        ({"secret_env_names": {"Deployment2": ["KEY"]}}, {"Deployment2"}),
        ({"secrets_revision": 1}, set(CLASSES)),  # replicas read secret values when they start
        ({"code_dir": "/apps/comp/code-other"}, set(CLASSES)),
        # The proxy takes these on in place (user_config): no deployment restarts.
        ({"authorized_users": {"*": ["alice"]}}, set()),
        ({"max_ongoing_requests": 3}, set()),
        ({"methods": [{"name": "ping"}]}, set()),
        ({"server_url": "http://other"}, {*CLASSES, "BioEngineProxy"}),  # a new connection
        ({"redeploy": 1}, {*CLASSES, "BioEngineProxy"}),  # auto_redeploy rebuilds everything
    ],
)
def test_an_update_restarts_exactly_the_deployments_it_concerns(changes, restarted):
    assert _changed(_composition(), _composition(**changes)) == restarted


def test_the_built_app_carries_the_versions_and_starts_new_replicas_first():
    from bioengine_app_runtime import ProxySpec

    spec = _composition()
    try:
        app = _builder.build(spec.model_dump(mode="json"))
    finally:
        _builder._previous.update(path=None, modules=set())
    proxy = app._bound_deployment
    entry = proxy.init_args[0]._bound_deployment
    sub = {
        a._bound_deployment.name: a._bound_deployment
        for a in entry.init_kwargs.values()
        if hasattr(a, "_bound_deployment")
    }
    assert set(sub) == {"Deployment1", "Deployment2"}
    with_methods = spec.model_copy(update={"methods": _builder.schema_methods(entry.func_or_class)})
    assert proxy.version == _builder.proxy_version(ProxySpec.of(with_methods))
    assert entry.version == _builder.deployment_version(spec, "CompositionDeployment")
    assert sub["Deployment2"].version == _builder.deployment_version(spec, "Deployment2")
    for deployment in (proxy, entry, *sub.values()):
        assert deployment._deployment_config.max_surge_percent == 100
    # The proxy gets only what it uses: nothing of the deployments' kwargs or code.
    assert set(proxy.init_args[1]) == set(ProxySpec.model_fields)
    # Rules, limit (and whether a call over it waits) and methods also travel as user_config,
    # which Serve changes in place.
    assert proxy._deployment_config.user_config == ProxySpec.of(with_methods).user_config()
    assert set(proxy._deployment_config.user_config) == {
        "authorized_users",
        "max_ongoing_requests",
        "methods",
        "refuse_when_full",
    }
    assert proxy._deployment_config.user_config["refuse_when_full"] is False  # the older format waits


async def test_the_proxy_takes_on_new_rules_limit_and_methods_in_place():
    from bioengine_app_runtime import ProxySpec, _proxy

    class Server:
        def __init__(self) -> None:
            self.registered: list[list[str]] = []

        async def register_service(self, api: dict, config: dict) -> dict:
            assert config == {"overwrite": True}
            self.registered.append(sorted(k for k in api if callable(api[k])))
            return {"id": f"ws/app-x-r1:{api['id']}"}

    class Handle:
        def __getattr__(self, name: str) -> Any:
            return None

    proxy: Any = object.__new__(_proxy.BioEngineProxy.func_or_class)
    proxy.spec = ProxySpec(
        application_id="app-x", artifact_id="ws/app-x", server_url="http://s", workspace="ws"
    )
    proxy.entry, proxy.server, proxy.connected, proxy.error, proxy.ongoing = Handle(), Server(), True, None, 0
    proxy.semaphore = _proxy.asyncio.Semaphore(10)
    proxy.peers = _proxy.PeerConnections("ws", proxy.service_api, None)  # type: ignore[arg-type]
    same = proxy.spec.user_config()
    await proxy.reconfigure(same)  # Serve's first call after __init__: nothing to do
    assert proxy.server.registered == []
    semaphore = proxy.semaphore
    await proxy.reconfigure({**same, "authorized_users": {"*": ["alice"]}, "max_ongoing_requests": 2})
    assert proxy.spec.authorized_users == {"*": ["alice"]} and proxy.spec.max_ongoing_requests == 2
    assert proxy.semaphore is not semaphore and proxy.server.registered == []  # rules apply at call time
    api = proxy.service_api()
    with pytest.raises(PermissionError, match="User 'bob' may not call 'ping'"):
        proxy.spec = proxy.spec.model_copy(update={"methods": [_builder.MethodSpec(name="ping")]})
        await proxy.service_api()["ping"](context={"user": {"id": "bob"}})
    await proxy.reconfigure({**proxy.spec.user_config(), "methods": [{"name": "ping"}, {"name": "run"}]})
    # registered again, same connection
    assert proxy.server.registered == [["get_load", "get_num_pcs", "get_rtc_service_id", "ping", "run"]]
    assert api["id"] == "app-x"
