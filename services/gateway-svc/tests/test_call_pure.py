"""The gateway's call() and forwarders against a fake backend: no Hypha, no services."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bioengine_common import NotFound, PermissionDenied, ServiceUnavailable
from bioengine_common.contracts import WORKER
from bioengine_gateway._service import BACKENDS, GatewayService, GatewaySettings

ADMIN = {"user": {"id": "admin-id", "email": "admin@example.org"}, "from": "ws/client-1"}
STRANGER = {"user": {"id": "someone", "email": "someone@example.org"}, "from": "ws/client-2"}


class FakeBackend:
    """A proxy of an internal service: records calls, answers with ``answer`` or raises ``error``."""

    def __init__(self, answer: Any = "ok", error: BaseException | None = None, delay: float = 0.0):
        self.answer, self.error, self.delay = answer, error, delay
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, method: str) -> Any:
        async def call(**kwargs: Any) -> Any:
            self.calls.append((method, kwargs))
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.error is not None:
                raise self.error
            return self.answer

        return call


@pytest.fixture
def gateway(tmp_path, monkeypatch) -> GatewayService:
    settings = GatewaySettings(
        workspace_dir=tmp_path, log_file="off", admin_users=["admin-id"], call_timeout=5
    )
    service = GatewayService(settings)
    service.fetched: list[str] = []  # type: ignore[misc]
    service.backends: dict[str, list[Any]] = {}  # type: ignore[misc]

    async def get_internal_service(service_id: str) -> Any:
        service.fetched.append(service_id)
        queue = service.backends[service_id]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    monkeypatch.setattr(service, "get_internal_service", get_internal_service)
    return service


def use(gateway: GatewayService, service_id: str, *backends: FakeBackend) -> None:
    gateway.backends[service_id] = list(backends)  # type: ignore[attr-defined]


async def test_call_forwards_the_original_caller(gateway):
    backend = FakeBackend({"x": 1})
    use(gateway, "bioengine-datasets", backend)
    assert await gateway.call("datasets", "list_datasets", STRANGER) == {"x": 1}
    ((method, kwargs),) = backend.calls
    assert method == "list_datasets"
    assert kwargs["caller"]["id"] == "someone" and kwargs["caller"]["from"] == "ws/client-2"


async def test_call_without_context_passes_no_caller(gateway):
    backend = FakeBackend()
    use(gateway, "bioengine-apps", backend)
    await gateway.call("apps", "get_status")
    assert backend.calls == [("get_status", {})]


async def test_a_call_that_times_out_says_which_method_and_how_long(gateway):
    backend = FakeBackend(delay=1.0)
    use(gateway, "bioengine-apps", backend)
    with pytest.raises(
        ServiceUnavailable, match=r"^bioengine-apps\.list_apps did not answer within 0\.05 s$"
    ):
        await gateway.call("apps", "list_apps", ADMIN, call_timeout=0.05)
    assert len(backend.calls) == 1  # never repeated: it may still be running


async def test_a_stale_proxy_is_dropped_and_the_call_made_once_more(gateway):
    stale = FakeBackend(error=ConnectionError("connection closed"))
    fresh = FakeBackend("fresh answer")
    use(gateway, "bioengine-apps", stale, fresh)
    assert await gateway.call("apps", "list_apps", ADMIN) == "fresh answer"
    assert gateway.fetched == ["bioengine-apps", "bioengine-apps"]
    assert len(stale.calls) == 1 and len(fresh.calls) == 1
    # The fresh proxy is kept for the next call.
    assert await gateway.call("apps", "list_apps", ADMIN) == "fresh answer"
    assert gateway.fetched == ["bioengine-apps", "bioengine-apps"]


async def test_a_proxy_stale_twice_makes_the_service_unavailable(gateway):
    use(gateway, "bioengine-apps", FakeBackend(error=Exception("Service not found: bioengine-apps")))
    with pytest.raises(ServiceUnavailable, match=r"bioengine-apps is not available: .*Service not found"):
        await gateway.call("apps", "list_apps", ADMIN)
    assert gateway.fetched == ["bioengine-apps", "bioengine-apps"]


async def test_no_proxy_at_all_makes_the_service_unavailable(gateway, monkeypatch):
    async def missing(service_id: str) -> Any:
        raise KeyError(f"{service_id} is not registered")

    monkeypatch.setattr(gateway, "get_internal_service", missing)
    with pytest.raises(ServiceUnavailable, match="bioengine-cluster is not available: KeyError"):
        await gateway.call("cluster", "run_code", ADMIN)


async def test_a_remote_bioengine_error_is_raised_again_as_its_own_type(gateway):
    remote = Exception(
        'Traceback (most recent call last):\n  File "x.py", line 1, in f\n'
        "bioengine_common.errors.NotFound: no app artifact 'bioengine/missing'"
    )
    use(gateway, "bioengine-apps", FakeBackend(error=remote))
    with pytest.raises(NotFound) as info:
        await gateway.call("apps", "get_app_manifest", ADMIN, artifact_id="missing")
    assert str(info.value) == "no app artifact 'bioengine/missing'"
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_any_other_error_goes_on_unchanged(gateway):
    error = ValueError("plain")
    use(gateway, "bioengine-apps", FakeBackend(error=error))
    with pytest.raises(ValueError) as info:
        await gateway.call("apps", "list_apps", ADMIN)
    assert info.value is error


# ---- the forwarders built from the contracts -------------------------------------------------------


def test_the_gateway_exposes_every_contract_and_nothing_else():
    methods = {name for name in dir(GatewayService) if hasattr(getattr(GatewayService, name), "__schema__")}
    assert methods == set(WORKER.methods)
    for contract in WORKER:
        assert getattr(GatewayService, contract.name).__schema__ == contract.method_schema(caller=False)
    assert set(BACKENDS.values()) == {c.service_id for c in WORKER if c.forwarded}


async def test_a_forwarder_checks_the_admin_rule_before_calling(gateway):
    backend = FakeBackend()
    use(gateway, "bioengine-apps", backend)
    with pytest.raises(PermissionDenied, match=r"'list_apps' \(admin only\)"):
        await gateway.list_apps(context=STRANGER)
    assert backend.calls == []
    assert await gateway.list_apps(context=ADMIN) == "ok"


async def test_upload_app_into_another_workspace_needs_no_admin(gateway):
    backend = FakeBackend("other/app")
    use(gateway, "bioengine-apps", backend)
    with pytest.raises(PermissionDenied):
        await gateway.upload_app(files=[], context=STRANGER)
    assert await gateway.upload_app([], "other", "token", context=STRANGER) == "other/app"
    ((_, kwargs),) = backend.calls
    assert kwargs["workspace"] == "other" and kwargs["hypha_token"] == "token"


async def test_a_forwarder_passes_the_given_parameters_and_leaves_defaults_to_the_service(
    gateway, monkeypatch
):
    seen: dict[str, Any] = {}

    async def call(name: str, method: str, context: Any = None, *, call_timeout: Any = None, **kwargs: Any):
        seen.update(name=name, method=method, context=context, call_timeout=call_timeout, kwargs=kwargs)
        return "app-id"

    monkeypatch.setattr(gateway, "call", call)
    assert await gateway.deploy_app("my-app", context=ADMIN) == "app-id"
    assert seen["name"] == "apps" and seen["method"] == "deploy_app" and seen["context"] is ADMIN
    # The rest are the contract's defaults: apps-svc fills them in from the same contract.
    assert seen["kwargs"] == {"artifact_id": "my-app"}
    assert seen["call_timeout"] == 120.0
    await gateway.deploy_app("my-app", wait=True, timeout=60, context=ADMIN)
    assert seen["call_timeout"] == 180.0
    assert seen["kwargs"] == {"artifact_id": "my-app", "wait": True, "timeout": 60}
    await gateway.stop_all_apps(timeout_seconds=10, context=ADMIN)
    assert seen["call_timeout"] == 40.0
    await gateway.get_app_manifest("my-app", context=ADMIN)
    assert seen["call_timeout"] is None  # the gateway's --call-timeout


async def test_run_code_relays_the_callers_callbacks(gateway):
    backend = FakeBackend({"result": 1})
    use(gateway, "bioengine-cluster", backend)
    lines: list[str] = []

    async def write_stdout(line: str) -> None:
        lines.append(line)

    await gateway.run_code(code="def analyze(): pass", write_stdout=write_stdout, timeout=5, context=ADMIN)
    ((_, kwargs),) = backend.calls
    assert kwargs["write_stdout"] is not write_stdout and "write_stderr" not in kwargs
    await kwargs["write_stdout"]("a line")
    assert lines == ["a line"]
