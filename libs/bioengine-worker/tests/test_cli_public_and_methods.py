"""`bioengine apps upload --public` and `bioengine call SERVICE --list-methods`, against fakes."""

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from bioengine_worker import cli
from bioengine_worker.cli import apps as cli_apps
from bioengine_worker.cli import call as cli_call
from bioengine_worker.cli.call import format_methods, method_list

DEMO_APP = Path(__file__).resolve().parents[3] / "apps" / "demo-app"


class Uploads:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    async def call(self, method: str, kwargs: dict | None = None, timeout: float | None = None) -> Any:
        self.calls.append((method, kwargs or {}))
        return "bioengine/demo-app"


@pytest.fixture
def uploads(monkeypatch):
    worker = Uploads()

    @contextlib.asynccontextmanager
    async def session(args, service_id, timeout):
        yield worker

    monkeypatch.setattr(cli_apps, "_session", session)
    return worker


def test_upload_public_asks_for_a_public_artifact(uploads, capsys):
    cli.main(["apps", "upload", str(DEMO_APP), "--public"])
    assert capsys.readouterr().out == "bioengine/demo-app\n"
    method, kwargs = uploads.calls[-1]
    assert method == "upload_app" and kwargs["public"] is True


def test_upload_without_public_sends_no_public_argument(uploads, capsys):
    # So a worker that predates the argument still takes the upload.
    cli.main(["apps", "upload", str(DEMO_APP)])
    assert "public" not in uploads.calls[-1][1]


class RemoteFunction:
    def __init__(self, schema: dict | None) -> None:
        if schema is not None:
            self.__schema__ = schema

    def __call__(self, **kwargs: Any) -> None:
        return None


SCHEMAS = {
    "ping": {"name": "ping", "description": "Answer pong.\n\nMore detail.", "parameters": {"properties": {}}},
    "reverse": {
        "name": "reverse",
        "description": "Reverse a text.",
        "parameters": {
            "properties": {
                "text": {"type": "string", "description": "What to reverse"},
                "times": {"anyOf": [{"type": "integer"}, {"type": "null"}], "description": ""},
            },
            "required": ["text"],
        },
    },
}


def _service() -> dict[str, Any]:
    return {
        "id": "ws/client:demo",
        "name": "Demo",
        "ping": RemoteFunction(SCHEMAS["ping"]),
        "reverse": RemoteFunction(SCHEMAS["reverse"]),
        "plain": RemoteFunction(None),
        "_private": RemoteFunction(None),
    }


def test_method_list_reads_the_registered_schemas():
    methods = method_list(_service())
    assert [m["name"] for m in methods] == ["ping", "plain", "reverse"]
    assert methods[0] == {"name": "ping", "description": "Answer pong.", "parameters": []}
    assert methods[1] == {"name": "plain", "description": "", "parameters": []}
    assert methods[2]["parameters"] == [
        {"name": "text", "type": "string", "required": True, "description": "What to reverse"},
        {"name": "times", "type": "integer | null", "required": False, "description": ""},
    ]
    assert format_methods("demo", methods) == [
        "demo: 3 method(s)",
        "  ping(): Answer pong.",
        "  plain()",
        "  reverse(text, times?): Reverse a text.",
        "      text (string, required): What to reverse",
        "      times (integer | null)",
    ]


@pytest.fixture
def remote(monkeypatch):
    class Session:
        service = _service()

    @contextlib.asynccontextmanager
    async def session(args, service_id, timeout):
        yield Session()

    monkeypatch.setattr(cli_call, "_session", session)


def test_call_list_methods_prints_them(remote, capsys):
    cli.main(["call", "demo", "--list-methods"])
    out = capsys.readouterr().out
    assert out.startswith("demo: 3 method(s)\n") and "reverse(text, times?): Reverse a text." in out
    cli.main(["call", "demo", "--list-methods", "--json"])
    assert [m["name"] for m in json.loads(capsys.readouterr().out)] == ["ping", "plain", "reverse"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["call", "demo", "ping", "--list-methods"], "--list-methods takes no METHOD or --arg"),
        (["call", "demo"], "give a METHOD to call, or --list-methods"),
    ],
)
def test_call_usage_errors(argv, expected, remote, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2 and expected in capsys.readouterr().err


# ---- the launcher hands --startup-applications to bioengine-apps ---------------------------------------
def test_the_launcher_hands_startup_applications_to_apps_svc_only(tmp_path):
    from bioengine_worker._launcher import Launcher, WorkerSettings

    startup = '[{"artifact_id": "demo-app", "hypha_token": "${MY_TOKEN}"}]'
    launcher = Launcher(
        WorkerSettings(workspace_dir=tmp_path, server_url="http://hypha:9527", startup_applications=startup)
    )
    argv = {p.name: p.argv for p in launcher._processes()}
    assert argv["apps"][-2:] == ["--startup-applications", startup]
    assert all("--startup-applications" not in a for name, a in argv.items() if name != "apps")
    plain = Launcher(WorkerSettings(workspace_dir=tmp_path, server_url="http://hypha:9527"))
    assert all("--startup-applications" not in p.argv for p in plain._processes())


# ---- an app's frontend in the CLI's status and summary -------------------------------------------------
def test_status_and_summary_show_the_frontend_url():
    from bioengine_worker.cli.app_output import app_summary, format_app_status

    url = "http://h/ws/view/demo/?server=http%3A%2F%2Fh&ws_service_id=ws%2Fc%3Ademo"
    status = {
        "status": "RUNNING",
        "available_methods": ["ping"],
        "service_ids": [{"websocket_service_id": "ws/c:demo", "webrtc_service_id": None}],
        "static_site_url": url,
    }
    assert f"  frontend: {url}" in format_app_status({"demo": status}).splitlines()
    assert f"  frontend: {url}" in app_summary("demo", status)
    without = {**status, "static_site_url": None}
    assert "frontend" not in format_app_status({"demo": without}) and not any(
        "frontend" in line for line in app_summary("demo", without)
    )


# ---- the metrics sockets -------------------------------------------------------------------------------
def test_a_metrics_host_the_launcher_cannot_listen_on_is_a_clear_error_before_anything_starts(tmp_path):
    from bioengine_worker._launcher import Launcher, WorkerSettings

    settings = WorkerSettings(
        workspace_dir=tmp_path, server_url="http://hypha:9527", token="t", metrics_host="203.0.113.7"
    )
    launcher = Launcher(settings)
    with pytest.raises(SystemExit, match=r"--metrics-host '203.0.113.7': cannot listen there"):
        launcher.run()
    assert launcher.supervisor is None  # no service was started
    assert not (tmp_path / "run" / "worker.pid").exists()  # the lock is released
