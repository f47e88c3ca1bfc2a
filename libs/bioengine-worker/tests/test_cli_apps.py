"""`bioengine apps ...` without a server: folder reading, option parsing, tables, waiting for an app."""

import base64
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bioengine_worker import cli
from bioengine_worker.cli import CliError, build_parser
from bioengine_worker.cli import apps as cli_apps
from bioengine_worker.cli.app_output import app_summary, format_app_status, format_apps, format_logs
from bioengine_worker.cli.apps import (
    DeployFailed,
    deploy_arguments,
    follow_deployment,
    parse_app_kwargs,
    parse_env_vars,
    read_app_folder,
)

DEMO_APP = Path(__file__).resolve().parents[3] / "apps" / "demo-app"
SERVICE = "bioengine/worker-1-abcd:brave-otter-1a2b"


def _status(state: str, message: str = "", deployments: dict | None = None, **extra: Any) -> dict:
    return {"status": state, "message": message, "deployments": deployments or {}, **extra}


def _deployment(state: str, replicas: dict[str, int], message: str = "") -> dict:
    return {"status": state, "message": message, "replica_states": replicas}


def _running(service: str | None = SERVICE) -> dict:
    return _status(
        "RUNNING",
        deployments={"DemoApp": _deployment("HEALTHY", {"RUNNING": 1})},
        available_methods=["ping", "ascii_art"],
        service_ids=[{"websocket_service_id": service, "webrtc_service_id": None}],
    )


# ---- reading an app folder ---------------------------------------------------------------------------
def test_read_app_folder_reads_the_demo_app_as_text():
    files = read_app_folder(DEMO_APP)
    assert [f["name"] for f in files] == ["demo_app.py", "manifest.yaml"]
    assert all(f["type"] == "text" for f in files)
    by_name = {f["name"]: f["content"] for f in files}
    assert by_name["manifest.yaml"] == (DEMO_APP / "manifest.yaml").read_text()
    assert "class DemoApp" in by_name["demo_app.py"]


def test_read_app_folder_base64_for_binary_skips_hidden_and_pycache(tmp_path):
    (tmp_path / "manifest.yaml").write_text("id: x\n")
    (tmp_path / "weights.bin").write_bytes(b"\x00\xff\xfe binary")
    (tmp_path / "frontend").mkdir()
    (tmp_path / "frontend" / "index.html").write_text("<p>héllo</p>")
    for hidden in ("__pycache__", ".git", "frontend/__pycache__"):
        (tmp_path / hidden).mkdir()
        (tmp_path / hidden / "junk.pyc").write_bytes(b"\x00")
    (tmp_path / ".env").write_text("SECRET=1")
    files = {f["name"]: f for f in read_app_folder(tmp_path)}
    assert set(files) == {"manifest.yaml", "weights.bin", "frontend/index.html"}
    assert files["weights.bin"]["type"] == "base64"
    assert base64.b64decode(files["weights.bin"]["content"]) == b"\x00\xff\xfe binary"
    assert files["frontend/index.html"] == {
        "name": "frontend/index.html",
        "content": "<p>héllo</p>",
        "type": "text",
    }


def test_read_app_folder_rejects_missing_folder_file_and_manifest(tmp_path):
    cases = {
        tmp_path / "nope": "does not exist",
        tmp_path / "file.txt": "is not a folder",
        tmp_path: "has no manifest.yaml",
    }
    (tmp_path / "file.txt").write_text("x")
    for path, expected in cases.items():
        with pytest.raises(CliError, match=expected) as caught:
            read_app_folder(path)
        assert caught.value.code == 2


# ---- options ---------------------------------------------------------------------------------------
def test_parse_env_vars():
    assert parse_env_vars([]) is None
    assert parse_env_vars(["A=1", "_TOKEN=x=y", "EMPTY="]) == {"*": {"A": "1", "_TOKEN": "x=y", "EMPTY": ""}}
    assert parse_env_vars(["A=1"], "DemoApp") == {"DemoApp": {"A": "1"}}
    for pairs, scope, expected in (
        (["NOVALUE"], None, "KEY=VALUE"),
        (["=1"], None, "KEY=VALUE"),
        (["BAD-NAME=1"], None, "KEY=VALUE"),
        (["A=1"], "not a class", "--env-class"),
        ([], "DemoApp", "give at least one --env"),
    ):
        with pytest.raises(CliError, match=expected) as caught:
            parse_env_vars(pairs, scope)
        assert caught.value.code == 2


def test_parse_app_kwargs():
    assert parse_app_kwargs(None) is None
    assert parse_app_kwargs('{"DemoApp": {"greeting": "hi"}}') == {"DemoApp": {"greeting": "hi"}}
    for raw, expected in (
        ("{greeting: hi}", "not valid JSON"),
        ("[1, 2]", "got a JSON list"),
        ('{"DemoApp": 3}', "'DemoApp' is not an object"),
    ):
        with pytest.raises(CliError, match=expected) as caught:
            parse_app_kwargs(raw)
        assert caught.value.code == 2


def test_deploy_arguments_send_only_given_options():
    args = build_parser().parse_args(["apps", "run", "ws/demo-app"])
    assert deploy_arguments(args, "ws/demo-app") == {"artifact_id": "ws/demo-app"}
    args = build_parser().parse_args(
        [
            "apps", "run", "ws/demo-app", "--app-id", "my-demo", "--version", "1.0.0", "--no-gpu",
            "--env", "A=1", "--env", "_SECRET=s", "--env-class", "DemoApp",
            "--kwargs", '{"DemoApp": {"greeting": "hi"}}', "--hypha-token", "tok",
            "--max-ongoing-requests", "4", "--auto-redeploy",
        ]
    )  # fmt: skip
    assert deploy_arguments(args, "ws/demo-app") == {
        "artifact_id": "ws/demo-app",
        "version": "1.0.0",
        "application_id": "my-demo",
        "application_kwargs": {"DemoApp": {"greeting": "hi"}},
        "application_env_vars": {"DemoApp": {"A": "1", "_SECRET": "s"}},
        "hypha_token": "tok",
        "disable_gpu": True,
        "max_ongoing_requests": 4,
        "auto_redeploy": True,
    }


# ---- argparse --------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["upload", "run", "deploy", "list", "status", "logs", "stop"])
def test_every_apps_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["apps", command, "--help"])
    assert caught.value.code == 0
    assert f"bioengine apps {command}" in capsys.readouterr().out


def test_apps_arguments_parse():
    parse = build_parser().parse_args
    args = parse(["apps", "status", "a", "b", "--logs", "5", "--json"])
    assert (args.apps_command, args.app_ids, args.logs, args.json) == ("status", ["a", "b"], 5, True)
    args = parse(["--timeout", "60", "apps", "deploy", "some/dir", "--no-wait", "--env", "A=1"])
    assert (args.directory, args.wait, args.env, args.timeout) == ("some/dir", False, ["A=1"], 60.0)
    assert parse(["apps", "run", "x"]).wait is None and parse(["apps", "run", "x", "--wait"]).wait is True
    assert (
        parse(["apps", "logs", "x"]).tail == 100 and parse(["apps", "logs", "x", "--tail", "-1"]).tail == -1
    )
    assert parse(["apps", "stop", "x", "-y"]).yes is True
    assert parse(["apps", "list"]).service_id == "bioengine-worker"
    assert parse(["apps", "list"]).timeout is None  # each command picks its own default


@pytest.mark.parametrize(
    "argv",
    [
        ["apps"],
        ["apps", "bogus"],
        ["apps", "upload"],
        ["apps", "run"],
        ["apps", "run", "x", "--max-ongoing-requests", "0"],
        ["apps", "run", "x", "--unknown"],
        ["apps", "status", "--logs", "many"],
        ["apps", "logs"],
        ["apps", "logs", "x", "--tail", "-5"],
        ["apps", "stop"],
    ],
)
def test_bad_apps_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == 2
    assert "usage: bioengine" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["apps", "upload", "/no/such/app"], "app folder '/no/such/app' does not exist"),
        (["apps", "deploy", "/no/such/app"], "does not exist"),
        (["apps", "deploy", str(DEMO_APP), "--env", "NOVALUE"], "--env expects KEY=VALUE"),
        (["apps", "run", "ws/demo-app", "--kwargs", "{bad"], "--kwargs expects a JSON object"),
        (["apps", "run", "ws/demo-app", "--env-class", "DemoApp"], "give at least one --env"),
    ],
)
def test_bad_input_is_a_usage_error_before_connecting(argv, expected, capsys, monkeypatch):
    monkeypatch.setattr(cli_apps, "_session", None)  # connecting would fail loudly
    with pytest.raises(SystemExit) as caught:
        cli.main([*argv, "--server-url", "http://127.0.0.1:9"])
    assert caught.value.code == 2
    assert expected in capsys.readouterr().err


# ---- tables ----------------------------------------------------------------------------------------
def test_format_apps():
    assert "No uploaded apps" in format_apps({})
    text = format_apps(
        {
            "bioengine/demo-app": {
                "manifest": {"name": "Demo App"},
                "format_version": "0.6.0",
                "versions": ["1.0.0", "1.1.0"],
            },
            "bioengine/bare": {"manifest": {}, "files": []},
        }
    )
    lines = text.splitlines()
    assert lines[0].split() == ["ARTIFACT", "ID", "NAME", "FORMAT", "VERSIONS"]
    assert lines[1].split() == ["bioengine/bare", "-", "-", "-"]
    assert "Demo App" in lines[2] and " 0.6.0 " in lines[2] and "1.0.0, 1.1.0" in lines[2]


def test_format_app_status():
    assert "No apps" in format_app_status({})
    failed = _status(
        "DEPLOY_FAILED",
        "The deployment failed to start 3 times in a row.",
        {"DemoApp": _deployment("UNHEALTHY", {}, "ImportError: no module named foo")},
        service_ids=[{"websocket_service_id": None, "webrtc_service_id": None}],
        display_name="Demo App",
        artifact_id="bioengine/demo-app",
        version="1.0.0",
    )
    running = {**_running(), "display_name": "Demo App", "artifact_id": "bioengine/demo-app"}
    text = format_app_status({"brave-otter-1a2b": running, "sad-fish-0000": failed})
    assert "brave-otter-1a2b: RUNNING (Demo App, bioengine/demo-app)" in text
    assert f"service: {SERVICE}" in text and "methods: ping, ascii_art" in text
    assert "sad-fish-0000: DEPLOY_FAILED (Demo App, bioengine/demo-app 1.0.0)" in text
    assert "message: The deployment failed to start 3 times in a row." in text
    assert "service: - (not registered)" in text
    assert "ImportError: no module named foo" in text
    assert [line.split()[:3] for line in text.splitlines() if line.strip().startswith("DemoApp")] == [
        ["DemoApp", "HEALTHY", "RUNNING"],
        ["DemoApp", "UNHEALTHY", "-"],
    ]
    not_running = format_app_status({"gone": {"status": "NOT_RUNNING", "message": "No app 'gone'"}})
    assert not_running == "gone: NOT_RUNNING\n  message: No app 'gone'"


def test_format_logs():
    status = _status(
        "RUNNING",
        deployments={
            "DemoApp": {
                **_deployment("HEALTHY", {"RUNNING": 1}),
                "logs": {
                    "r1": {
                        "state": "RUNNING",
                        "node_ip": "10.0.0.1",
                        "stdout": ["hello\n"],
                        "stderr": ["warn"],
                    },
                    "r2": {"state": "RUNNING", "error": "node gone"},
                    "r3": {"stdout": [], "stderr": []},
                },
            }
        },
    )
    assert format_logs(status).splitlines() == [
        "== DemoApp / r1 (RUNNING, 10.0.0.1) ==",
        "  [stdout]",
        "  hello",
        "  [stderr]",
        "  warn",
        "== DemoApp / r2 (RUNNING) ==",
        "  (no logs: node gone)",
        "== DemoApp / r3 ==",
        "  (no output)",
    ]
    assert format_logs(_status("RUNNING")) == ""


# ---- waiting for an app ----------------------------------------------------------------------------
def test_app_summary_says_what_to_call():
    assert app_summary("brave-otter-1a2b", _running()) == [
        "brave-otter-1a2b: RUNNING",
        f"  service: {SERVICE}",
        "  methods: ping, ascii_art",
        f"  call it: bioengine call {SERVICE} METHOD --arg NAME=VALUE",
    ]


class FakeWorker:
    """Stands in for the worker service: scripted app states, recorded calls.

    ``wait_for_app`` goes through ``statuses`` as the worker would: the first RUNNING one is
    returned, a failed one raises with its message, none of them raises a timeout.
    """

    def __init__(self, statuses: list[dict], app_id: str = "brave-otter-1a2b"):
        self.statuses = statuses
        self.app_id = app_id
        self.calls: list[tuple[str, dict]] = []

    async def call(self, method: str, kwargs: dict | None = None, timeout: float | None = None) -> Any:
        kwargs = kwargs or {}
        self.calls.append((method, kwargs))
        if method == "upload_app":
            return "bioengine/demo-app"
        if method == "deploy_app":
            return self.app_id
        if method == "get_app_status":
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return {self.app_id: status}
        if method == "wait_for_app":
            # Time passes: the statuses before the outcome are gone once the wait returns.
            while True:
                status = self.statuses[0]
                if status["status"] == "RUNNING":
                    return status
                if status["status"] in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise CliError(f"app '{self.app_id}' is {status['status']}: {status['message']}")
                if len(self.statuses) == 1:
                    break
                self.statuses.pop(0)
            last = self.statuses[-1]
            raise CliError(
                f"app '{self.app_id}' is not running after {kwargs['timeout']:g} s; last state {last['status']}"
            )
        if method == "stop_app":
            return {"application_id": kwargs["application_id"], "status": "stopping"}
        return None


async def test_follow_deployment_waits_with_the_worker():
    worker = FakeWorker([_status("DEPLOYING"), _running()])
    lines: list[str] = []
    status = await follow_deployment(worker, "brave-otter-1a2b", time.monotonic() + 10, lines.append)
    assert status["status"] == "RUNNING"
    assert [method for method, _ in worker.calls] == ["wait_for_app"]
    assert worker.calls[0][1]["application_id"] == "brave-otter-1a2b"
    assert 0 < worker.calls[0][1]["timeout"] <= 10
    assert lines[0].startswith("Waiting for brave-otter-1a2b to run")
    assert f"  service: {SERVICE}" in lines


async def test_follow_deployment_failure_shows_the_reason_and_logs():
    failed = _status("DEPLOY_FAILED", "boom", {"DemoApp": {"logs": {"r1": {"stderr": ["Traceback: boom"]}}}})
    worker = FakeWorker([_status("DEPLOYING"), failed])
    lines: list[str] = []
    with pytest.raises(DeployFailed, match="is DEPLOY_FAILED: boom") as caught:
        await follow_deployment(worker, "brave-otter-1a2b", time.monotonic() + 10, lines.append)
    assert caught.value.code == 1 and caught.value.status["status"] == "DEPLOY_FAILED"
    assert "bioengine apps logs brave-otter-1a2b" in str(caught.value)
    assert "Last log lines:" in lines and "Traceback: boom" in lines[-1]
    assert worker.calls[-1][1]["logs_tail"] == 20


async def test_follow_deployment_times_out_with_the_last_state():
    worker = FakeWorker([_status("DEPLOYING")])
    with pytest.raises(DeployFailed, match=r"last state DEPLOYING \(follow it with `bioengine apps status"):
        await follow_deployment(worker, "brave-otter-1a2b", time.monotonic() + 2, lambda line: None)


# ---- whole commands against a fake worker ----------------------------------------------------------
@pytest.fixture
def fake_worker(monkeypatch):
    worker = FakeWorker([_status("DEPLOYING"), _running()])

    @contextlib.asynccontextmanager
    async def session(args, service_id, timeout):
        worker.timeout = timeout  # type: ignore[attr-defined]
        yield worker

    monkeypatch.setattr(cli_apps, "_session", session)
    return worker


def test_deploy_uploads_deploys_and_follows(fake_worker, capsys):
    cli.main(["apps", "deploy", str(DEMO_APP), "--env", "GREETING=hi"])
    out = capsys.readouterr().out
    methods = [method for method, _ in fake_worker.calls]
    assert methods == ["upload_app", "deploy_app", "wait_for_app"]
    assert [f["name"] for f in fake_worker.calls[0][1]["files"]] == ["demo_app.py", "manifest.yaml"]
    assert fake_worker.calls[1][1] == {
        "artifact_id": "bioengine/demo-app",
        "application_env_vars": {"*": {"GREETING": "hi"}},
    }
    assert fake_worker.timeout == 300.0
    assert "Application id: brave-otter-1a2b" in out and "brave-otter-1a2b: RUNNING" in out


def test_run_prints_the_id_and_does_not_wait(fake_worker, capsys):
    cli.main(["apps", "run", "bioengine/demo-app", "--no-gpu"])
    assert capsys.readouterr().out == "brave-otter-1a2b\n"
    assert [m for m, _ in fake_worker.calls] == ["deploy_app"]
    assert fake_worker.calls[0][1] == {"artifact_id": "bioengine/demo-app", "disable_gpu": True}


def test_deploy_json_reports_failure_with_exit_1(fake_worker, capsys):
    fake_worker.statuses = [_status("DEPLOY_FAILED", "boom")]
    with pytest.raises(SystemExit) as caught:
        cli.main(["apps", "deploy", str(DEMO_APP), "--json"])
    assert caught.value.code == 1
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["application_id"] == "brave-otter-1a2b" and result["status"]["status"] == "DEPLOY_FAILED"
    assert "error: app 'brave-otter-1a2b' is DEPLOY_FAILED: boom" in captured.err


def test_upload_list_status_logs_stop(fake_worker, capsys, monkeypatch):
    cli.main(["apps", "upload", str(DEMO_APP)])
    assert capsys.readouterr().out == "bioengine/demo-app\n"
    assert fake_worker.timeout == 120.0
    cli.main(["apps", "status", "brave-otter-1a2b", "--logs", "3"])
    assert fake_worker.calls[-1] == (
        "get_app_status",
        {"application_ids": ["brave-otter-1a2b"], "logs_tail": 3},
    )
    assert "brave-otter-1a2b: DEPLOYING" in capsys.readouterr().out
    cli.main(["apps", "status"])
    assert fake_worker.calls[-1][1]["application_ids"] is None
    capsys.readouterr()
    fake_worker.statuses = [{"status": "NOT_RUNNING", "message": "No app 'x' is deployed by this worker"}]
    with pytest.raises(SystemExit) as caught:
        cli.main(["apps", "logs", "brave-otter-1a2b"])
    assert caught.value.code == 1 and "No app 'x'" in capsys.readouterr().err
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    with pytest.raises(SystemExit) as caught:
        cli.main(["apps", "stop", "brave-otter-1a2b"])
    assert caught.value.code == 1 and fake_worker.calls[-1][0] != "stop_app"
    capsys.readouterr()
    cli.main(["apps", "stop", "brave-otter-1a2b", "--yes"])
    assert fake_worker.calls[-1] == ("stop_app", {"application_id": "brave-otter-1a2b"})
    assert "Stopping brave-otter-1a2b" in capsys.readouterr().out
