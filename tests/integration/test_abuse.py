"""Abuse suite: every method of every service, called directly by every kind of principal.

The worker's four services run against a real Hypha server (with the S3 store) and a real Ray
head, as the launcher runs them (one services user). The methods are read from the schemas
the running services registered, so a new method is covered without a new test: it is expected
to refuse everyone but admins unless it is listed in ``OPEN`` below.

Principals, as an attacker would hold them:
(a) anonymous; (b) a read token of the workspace made with Hypha's own ``generate_token``;
(c) a read_write token of another user; (d) an app's token, generated exactly as apps-svc does;
(e) a client of another workspace; plus (f) the worker's admin, who may do everything on its
own behalf but, like everyone else but the services, may not pass a caller on. Each calls every
method with and without a forged ``caller`` naming the admin.

A real app whose code tries the same from inside Ray (with the token it can read) and registers
a look-alike ``bioengine-cluster`` is in ``test_an_app_cannot_act_as_a_worker_service``. The
datasets server's HTTP probes are in ``test_datasets_http_probes``, and the last test checks
that no token of any kind was written to any file under the workspace dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from bioengine_common import SERVICES_USER, connect, mint_token, trusted_service_id
from bioengine_common.testing import ADMIN_USER, launch_service, stop_all_apps, wait_for_service

pytestmark = pytest.mark.integration

GATEWAY = "bioengine-worker"
INTERNAL = ("bioengine-cluster", "bioengine-apps", "bioengine-datasets")
PRIVATE_DATASET = "private-ds"

#: Methods a caller may use on its own behalf without being an admin. Everything else must
#: refuse every principal below. The gateway is public: its open methods answer anyone.
OPEN: dict[str, set[str]] = {
    "bioengine-cluster": {"get_status", "get_history"},
    "bioengine-apps": {"get_status", "get_app_status"},
    "bioengine-datasets": {"get_status", "list_datasets"},
    GATEWAY: {"get_status", "check_access", "get_app_status", "list_datasets"},
}
#: Who reaches the workspace's protected services at all (Hypha refuses the others).
MEMBERS = {"read", "other_rw", "app", "admin"}
FORGED = {"id": ADMIN_USER, "email": None, "is_anonymous": False}
REFUSED_CALLER = "may not pass a caller on"
#: What a refusal may say: ours (PermissionDenied, or not found for a dataset one may not read)
#: or Hypha's for a protected service.
REFUSAL = re.compile(r"PermissionError|PermissionDenied|Permission denied|not authorized|not found", re.I)
ATTACKER_APP = "attacker-app"


def _write_attacker_app(root: Path) -> None:
    folder = root / ATTACKER_APP
    folder.mkdir(parents=True)
    (folder / "manifest.yaml").write_text(
        textwrap.dedent(
            """\
            name: Attacker
            id: attacker-app
            id_emoji: "🕵"
            description: tries to act as a worker service with what it can read
            type: ray-serve
            version: "1.0.0"
            format_version: 0.5.0
            deployments:
              - attacker_app:Attacker
            authorized_users:
              "*": ["*"]
            """
        )
    )
    (folder / "attacker_app.py").write_text(
        textwrap.dedent(
            '''\
            import os

            from hypha_rpc import connect_to_server
            from hypha_rpc.utils.schema import schema_method
            from pydantic import Field
            from ray import serve


            @serve.deployment(ray_actor_options={"num_cpus": 0.1})
            class Attacker:
                def __init__(self):
                    self.impostor = None
                    self.intercepted = []

                @schema_method
                async def attack(
                    self,
                    admin_id: str = Field(..., description="whom to impersonate"),
                    workspace: str = Field(..., description="the worker's workspace"),
                ) -> dict:
                    """Use every credential the app can read to act as a worker service."""
                    from bioengine_app_runtime import kv

                    app_id = os.environ["BIOENGINE_APPLICATION_ID"]
                    secrets = kv.get_json(kv.secrets_key(app_id)) or {}
                    report = {
                        "env_with_token_values": sorted(
                            name for name, value in os.environ.items()
                            if value.startswith("eyJ") or name in ("BIOENGINE_TOKEN", "RAY_AUTH_TOKEN")
                        ),
                        "has_proxy_token": bool(secrets.get("proxy_token")),
                        "calls": {},
                    }
                    server = await connect_to_server({
                        "server_url": os.environ["HYPHA_SERVER_URL"], "workspace": workspace,
                        "token": secrets["proxy_token"],
                    })
                    caller = {"id": admin_id, "email": None, "is_anonymous": False}
                    attempts = {
                        "cluster.run_code": ("bioengine-cluster", "run_code",
                                             {"code": "def analyze():\\n    return 'pwned'"}),
                        "cluster.get_logs": ("bioengine-cluster", "get_logs", {"tail": 5}),
                        "apps.list_apps": ("bioengine-apps", "list_apps", {}),
                        "datasets.list_datasets": ("bioengine-datasets", "list_datasets", {}),
                    }
                    for label, (service_id, method, kwargs) in attempts.items():
                        service = await server.get_service(service_id, {"mode": "random"})
                        for forged in (False, True):
                            extra = {"caller": caller} if forged else {}
                            try:
                                result = await getattr(service, method)(**kwargs, **extra)
                                outcome = "ok: " + repr(result)[:200]
                            except Exception as exc:
                                outcome = "refused: " + str(exc)[-300:]
                            report["calls"][label + (" forged" if forged else "")] = outcome
                    # A look-alike of bioengine-cluster, to catch what the services send it.
                    intercepted = self.intercepted

                    async def run_code(**kwargs):
                        intercepted.append(sorted(kwargs))
                        return {"result": "intercepted"}

                    async def get_status(**kwargs):
                        intercepted.append(["get_status"])
                        return {"ready": True, "service": "bioengine-cluster"}

                    await server.register_service({
                        "id": "bioengine-cluster", "config": {"visibility": "protected"},
                        "run_code": run_code, "get_status": get_status,
                        "get_connection_info": run_code, "check_resources": run_code,
                    })
                    self.impostor = server
                    return report

                @schema_method
                async def intercepted_calls(self) -> list:
                    """What the look-alike service received."""
                    return list(self.intercepted)
            '''
        )
    )


@pytest.fixture(scope="module")
def worker_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("abuse-worker")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("abuse-data")
    (root / PRIVATE_DATASET).mkdir()
    (root / PRIVATE_DATASET / "manifest.yaml").write_text(
        f"name: Private\nauthorized_users: [{ADMIN_USER}]\n"
    )
    (root / PRIVATE_DATASET / "secret.txt").write_text("top secret")
    (root / "open-ds").mkdir()
    (root / "open-ds" / "manifest.yaml").write_text("name: Open\npublic: true\n")
    (root / "open-ds" / "hello.txt").write_text("hello")
    return root


@pytest.fixture(scope="module")
def stack(hypha_server, ray_head, worker_dir, data_dir, tmp_path_factory):
    """The four services as the launcher runs them: one workspace dir, the services' own user."""
    apps_root = tmp_path_factory.mktemp("abuse-apps")
    _write_attacker_app(apps_root)
    services = [
        launch_service("cluster", hypha_server, worker_dir, "--mode", "external-cluster",
                       "--head-address", ray_head.address, "--status-interval", "1"),
        launch_service("apps", hypha_server, worker_dir, "--local-apps-dir", str(apps_root),
                       "--reconcile-interval", "1"),
        launch_service("datasets", hypha_server, worker_dir, "--data-dir", str(data_dir)),
        launch_service("gateway", hypha_server, worker_dir, "--status-interval", "1"),
    ]  # fmt: skip
    yield {service.name: service for service in services}
    stop_all_apps(hypha_server)
    for service in services:
        service.stop()


@pytest.fixture(scope="module")
async def admin(hypha_server, stack):
    client = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint(ADMIN_USER, "admin")
    )
    gateway = None
    deadline = time.monotonic() + 120
    for service_id in (*INTERNAL, GATEWAY):
        await wait_for_service(client, service_id, timeout=90)
    while time.monotonic() < deadline:
        gateway = await client.get_service(GATEWAY)
        if (await gateway.get_status())["is_ready"]:
            break
        await asyncio.sleep(1)
    else:
        raise AssertionError(f"the stack did not get ready: {await gateway.get_status()}")
    yield client
    await client.disconnect()


@pytest.fixture(scope="module")
def tokens() -> dict[str, str]:
    """The tokens the principals hold (filled by ``principals``)."""
    return {}


@pytest.fixture(scope="module")
async def principals(hypha_server, admin, tokens) -> Any:
    """One connection per kind of principal."""
    ws, url = hypha_server.workspace, hypha_server.url
    read_token = await admin.generate_token({"workspace": ws, "permission": "read", "expires_in": 3600})
    services_admin = await connect(url, workspace=ws, token=hypha_server.mint(SERVICES_USER, "admin"))
    app_token = await services_admin.generate_token(
        {"workspace": ws, "permission": "read_write", "expires_in": 3600}
    )
    await services_admin.disconnect()
    outsider = mint_token(
        hypha_server.jwt_secret, "outsider", "ws-user-outsider", "admin", pin_workspace=False
    )
    tokens.update(read=read_token, app=app_token, other_workspace=outsider)
    clients = {
        "anonymous": await connect(url),
        "read": await connect(url, workspace=ws, token=read_token),
        "other_rw": await connect(url, workspace=ws, token=hypha_server.mint("mallory", "read_write")),
        "app": await connect(url, workspace=ws, token=app_token),
        "other_workspace": await connect(url, token=outsider),
        "admin": admin,
    }
    yield clients
    for name, client in clients.items():
        if name != "admin":
            with contextlib.suppress(Exception):
                await client.disconnect()


def _value(name: str, schema: dict[str, Any]) -> Any:
    """A valid value for a required parameter, aimed at something that exists and is private."""
    if name == "dataset_id":
        return PRIVATE_DATASET
    if name == "code":
        return "def analyze():\n    return 'pwned'"
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    return {"integer": 1, "number": 1.0, "boolean": False, "array": [], "object": {}}.get(
        str(kind), "abuse-probe"
    )


async def _methods(admin: Any, service_id: str) -> dict[str, dict[str, Any]]:
    """{method: required kwargs} from the schema the running service registered."""
    info = await admin.get_service_info(service_id, {"mode": "random"})
    methods = {}
    for name, schema in (info.get("service_schema") or {}).items():
        function = (schema or {}).get("function") or {}
        if not isinstance(function, dict) or not function.get("name"):
            continue
        parameters = function.get("parameters") or {}
        properties = parameters.get("properties") or {}
        methods[name] = {
            key: _value(key, properties.get(key) or {}) for key in parameters.get("required") or []
        }
    assert methods, f"{service_id} registered no method schemas: {info}"
    return methods


async def _call(client: Any, service_id: str, method: str, kwargs: dict[str, Any]) -> str:
    try:
        service = await client.get_service(service_id, {"mode": "random"})
        result = await asyncio.wait_for(getattr(service, method)(**kwargs), 30)
    except Exception as exc:
        return f"refused: {type(exc).__name__}: {exc}"
    return f"ok: {repr(result)[:120]}"


async def test_every_method_refuses_every_principal_and_every_forged_caller(admin, principals, hypha_server):
    full_ids = {
        sid: (await admin.get_service_info(sid, {"mode": "random"}))["id"] for sid in (*INTERNAL, GATEWAY)
    }
    wrong: list[str] = []
    calls = 0
    for service_id in (*INTERNAL, GATEWAY):
        methods = await _methods(admin, service_id)
        for who, client in principals.items():
            reaches = service_id == GATEWAY or who in MEMBERS
            for method, kwargs in sorted(methods.items()):
                for forged in (False, True):
                    if who == "admin" and not forged:
                        continue  # admins may do everything on their own behalf
                    call_kwargs = {**kwargs, "caller": FORGED} if forged else kwargs
                    # The full id, as an attacker would find it in list_services.
                    outcome = await _call(client, full_ids[service_id], method, call_kwargs)
                    calls += 1
                    label = f"{who:<15} {service_id}.{method}{' (forged caller)' if forged else ''}"
                    if not forged and reaches and method in OPEN[service_id]:
                        if not outcome.startswith("ok"):
                            wrong.append(f"{label}: should work, got {outcome}")
                    elif outcome.startswith("ok"):
                        wrong.append(f"{label}: should be refused, got {outcome}")
                    elif forged and reaches and service_id != GATEWAY and REFUSED_CALLER not in outcome:
                        wrong.append(f"{label}: refused, but not as a forged caller: {outcome}")
                    elif not REFUSAL.search(outcome) and not (forged and service_id == GATEWAY):
                        wrong.append(f"{label}: refused without saying why: {outcome}")
    assert calls > 200
    assert not wrong, "\n".join(wrong)


def _forge_context(client: Any, user: dict[str, Any], workspace: str) -> None:
    """Make ``client`` write its own hypha-rpc context into every call it sends, claiming ``user``
    (the Hypha server stamps the real user beside it; hypha-rpc as released trusts the claim)."""
    send = client.rpc._emit_message

    async def forged(data: bytes) -> Any:
        unpacker = msgpack.Unpacker(io.BytesIO(data), max_buffer_size=len(data) + 1)
        main = unpacker.unpack()
        rest = data[unpacker.tell() :]
        if main.get("type") == "method":
            main["ctx"] = {"user": user, "ws": workspace, "from": f"{workspace}/gateway"}
        return await send(msgpack.packb(main) + rest)

    client.rpc._emit_message = forged


async def test_no_method_trusts_a_context_written_by_the_caller(admin, hypha_server, principals):
    """The read token and another member forge the context itself (not the ``caller`` argument),
    as the services' own user and as the admin, with and without a forwarded admin caller."""
    ws, url = hypha_server.workspace, hypha_server.url
    read_token = await admin.generate_token({"workspace": ws, "permission": "read", "expires_in": 3600})
    wrong: list[str] = []
    calls = 0
    for who, token in (("read", read_token), ("other_rw", hypha_server.mint("mallory", "read_write"))):
        for claimed in (SERVICES_USER, ADMIN_USER):
            client = await connect(url, workspace=ws, token=token)
            _forge_context(client, {"id": claimed, "email": None, "roles": ["admin"], "scope": {}}, ws)
            try:
                for service_id in (*INTERNAL, GATEWAY):
                    for method, kwargs in sorted((await _methods(admin, service_id)).items()):
                        if method in OPEN[service_id]:
                            continue
                        for call_kwargs in (kwargs, {**kwargs, "caller": FORGED}):
                            outcome = await _call(client, service_id, method, call_kwargs)
                            calls += 1
                            if outcome.startswith("ok"):
                                wrong.append(f"{who} as {claimed}: {service_id}.{method}: {outcome}")
            finally:
                with contextlib.suppress(Exception):
                    await client.disconnect()
    assert calls > 100
    assert not wrong, "\n".join(wrong)


async def test_the_admin_cannot_forward_a_caller_but_the_gateway_does(admin, principals):
    """The admin's own notebook is not a service; the gateway (the services' user) is."""
    cluster = await admin.get_service("bioengine-cluster", {"mode": "random"})
    with pytest.raises(Exception, match=REFUSED_CALLER):
        await cluster.get_logs(tail=1, caller={"id": "someone-else"})
    gateway = await principals["read"].get_service(GATEWAY)
    with pytest.raises(Exception, match="not authorized to access 'run_code'"):
        await gateway.run_code(code="def analyze():\n    return 1")
    assert (await (await admin.get_service(GATEWAY)).run_code(code="def analyze():\n    return 41 + 1"))[
        "result"
    ] == 42


async def test_refused_attempts_are_logged_without_tokens(admin, worker_dir, principals):
    cluster = await principals["other_rw"].get_service("bioengine-cluster", {"mode": "random"})
    with pytest.raises(Exception, match=REFUSED_CALLER):
        await cluster.get_status(caller=FORGED)
    log = (worker_dir / "logs" / "cluster.log").read_text()
    assert "Refused a forwarded caller from" in log and "(user 'mallory')" in log


async def test_an_app_cannot_act_as_a_worker_service(admin, hypha_server):
    apps = await admin.get_service("bioengine-apps", {"mode": "random"})
    app_id = await apps.deploy_app(artifact_id=ATTACKER_APP, application_id="attacker")
    deadline = time.monotonic() + 120
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = (await apps.get_app_status(application_ids=[app_id], logs_tail=0))[app_id]
        if status["status"] == "RUNNING" and status["service_ids"][0]["websocket_service_id"]:
            break
        assert status["status"] not in ("DEPLOY_FAILED", "UNHEALTHY"), status
        await asyncio.sleep(1)
    else:
        raise AssertionError(f"the attacker app did not start: {status}")
    app = await admin.get_service(status["service_ids"][0]["websocket_service_id"])
    try:
        report = await app.attack(admin_id=ADMIN_USER, workspace=hypha_server.workspace)
        # Nothing in its environment is a token; the one it can read is its own proxy token.
        assert report["env_with_token_values"] == [], report
        assert report["has_proxy_token"] is True
        calls = report["calls"]
        for label, outcome in calls.items():
            if label == "datasets.list_datasets":
                # On its own behalf the app sees what any member sees: not the private dataset.
                assert outcome.startswith("ok") and PRIVATE_DATASET not in outcome, outcome
            elif label.endswith("forged"):
                assert outcome.startswith("refused") and REFUSED_CALLER in outcome, (label, outcome)
            else:
                assert outcome.startswith("refused") and "not authorized" in outcome, (label, outcome)
        # Its look-alike bioengine-cluster is registered now, by the app's user ...
        listed = await admin.list_services(
            {"workspace": hypha_server.workspace, "service_id": "bioengine-cluster"}
        )
        owners = {(s.get("config") or {}).get("created_by", {}).get("id") for s in listed}
        assert SERVICES_USER in owners and len(owners) == 2, listed
        # ... and the worker's services never choose it: a second deploy asks bioengine-cluster
        # whether the app fits, and the gateway runs code where it always did.
        for _ in range(20):
            chosen = await trusted_service_id(
                admin, hypha_server.workspace, "bioengine-cluster", {SERVICES_USER}
            )
            assert chosen == stack_cluster_id(listed), chosen
        second = await apps.deploy_app(artifact_id=ATTACKER_APP, application_id="attacker-2")
        assert second == "attacker-2"
        answer = await (await admin.get_service(GATEWAY)).run_code(code="def analyze():\n    return 'real'")
        assert answer["result"] == "real", answer
        assert await app.intercepted_calls() == []
    finally:
        await apps.stop_all_apps()


def stack_cluster_id(listed: list[dict[str, Any]]) -> str:
    return next(str(s["id"]) for s in listed if s["config"]["created_by"]["id"] == SERVICES_USER)


async def test_datasets_http_probes(admin, tokens):
    """Traversal, header abuse and enumeration against the datasets server: never a byte of
    the private dataset, never a server error, private answered like missing."""
    datasets = await admin.get_service("bioengine-datasets", {"mode": "random"})
    base = (await datasets.get_status())["http_url"].rstrip("/")
    member = {"Authorization": f"Bearer {tokens['read']}"}
    probes = [
        ("GET", f"/data/{PRIVATE_DATASET}/secret.txt", {}),
        ("GET", "/data/open-ds/../private-ds/secret.txt", {}),
        ("GET", "/data/open-ds/%2e%2e/private-ds/secret.txt", {}),
        ("GET", "/data/open-ds/%2e%2e%2fprivate-ds%2fsecret.txt", {}),
        ("GET", "/data/open-ds/..%5c..%5cprivate-ds%5csecret.txt", {}),
        ("GET", "/data/open-ds/%252e%252e/private-ds/secret.txt", {}),
        ("GET", "/data/open-ds//etc/passwd", {}),
        ("GET", "/data/open-ds/%2fetc%2fpasswd", {}),
        ("GET", "/data/open-ds/hello.txt%00.png", {}),
        ("GET", "/data/open-ds/hello.txt", {"Range": "bytes=" + "9" * 400 + "-"}),
        ("GET", "/data/open-ds/hello.txt", {"Range": "bytes=0-1," * 500 + "0-1"}),
        ("GET", "/data/open-ds/hello.txt", {"Range": "bytes=\u0661-\u0665"}),
        ("GET", "/data/open-ds/hello.txt", {"Authorization": "Bearer " + "x" * 20000}),
        ("GET", "/data/open-ds/hello.txt", {"Authorization": "Basic YWRtaW46YWRtaW4="}),
        ("GET", f"/data/{PRIVATE_DATASET}/secret.txt", {"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."}),
        ("GET", "/data/open-ds/a%0d%0a2026-01-01 00:00:00 INFO forged", {}),
        ("POST", f"/data/{PRIVATE_DATASET}/", {"Content-Type": "application/json"}),
    ]
    async with aiohttp.ClientSession() as session:
        for method, path, headers in [*probes, *(("GET", p, {**h, **member}) for _, p, h in probes[:2])]:
            async with session.request(
                method, base + path, headers=headers, data=b'{"get": [{"key": "secret.txt"}]}'
            ) as response:
                body = await response.read()
            assert response.status < 500, (method, path, response.status, body[:200])
            assert response.status not in (200, 206) or b"top secret" not in body, (path, body[:200])
            assert b"top secret" not in body and b"root:" not in body, (path, body[:200])
        # Enumeration: the private dataset answers like one that does not exist.
        answers = []
        for dataset in (PRIVATE_DATASET, "no-such-dataset"):
            async with session.get(f"{base}/data/{dataset}/secret.txt") as response:
                answers.append((response.status, (await response.read()).replace(dataset.encode(), b"<id>")))
        assert answers[0] == answers[1], answers


def test_no_token_is_written_under_the_workspace_dir(worker_dir, stack, hypha_server):
    """After everything above: no JWT and no token of the run in any file under the workspace dir."""
    jwt = re.compile(rb"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}")
    found = []
    for path in worker_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if jwt.search(data) or hypha_server.jwt_secret.encode() in data:
                found.append(str(path.relative_to(worker_dir)))
    assert not found, f"tokens found in {found}"
    assert (worker_dir / "logs" / "cluster.log").exists()
