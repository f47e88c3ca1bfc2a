"""``bioengine apps validate|upload|run|deploy|list|status|logs|stop``: app folders (checked
without a server by ``validate``), deployment options, following a deployment until it runs or
fails."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bioengine_app_format import FORMAT_06, AppCheck, check_app, decode_files
from bioengine_common.contracts.worker import WAIT_MAX_S  # the longest wait_for_app accepts

from ._common import EXIT_USAGE, Caller, CliError, _common_options, _session, _timeout
from .app_output import app_summary, format_app_status, format_apps, format_logs

MANIFEST_NAMES = ("manifest.yaml", "manifest.yml")


def read_app_folder(directory: str | os.PathLike[str]) -> list[dict[str, str]]:
    """All files of an app folder as ``upload_app`` takes them: ``[{name, content, type}]``.

    Names are relative POSIX paths; hidden files and folders and ``__pycache__`` are skipped; a file
    is ``text`` when it decodes as UTF-8, else ``base64``. A missing folder or manifest is a usage error.
    """
    root = Path(directory).expanduser()
    if not root.exists():
        raise CliError(f"app folder '{directory}' does not exist", EXIT_USAGE)
    if not root.is_dir():
        raise CliError(f"'{directory}' is not a folder; give the app's folder", EXIT_USAGE)
    if not any((root / name).is_file() for name in MANIFEST_NAMES):
        raise CliError(
            f"'{directory}' has no manifest.yaml; an app folder needs one (name, id, entry or deployments, ...)",
            EXIT_USAGE,
        )
    files: list[dict[str, str]] = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d != "__pycache__")
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            if not path.is_file():
                continue
            data = path.read_bytes()
            relative = path.relative_to(root).as_posix()
            try:
                files.append({"name": relative, "content": data.decode("utf-8"), "type": "text"})
            except UnicodeDecodeError:
                files.append(
                    {"name": relative, "content": base64.b64encode(data).decode("ascii"), "type": "base64"}
                )
    return files


def validate_app_folder(directory: str | os.PathLike[str]) -> AppCheck:
    """Check an app folder of either format as it would be uploaded, without a server.

    The files are those ``read_app_folder`` gives ``upload_app``; the checks are
    ``bioengine_app_format.check_app`` (manifest, and the code read with ``ast``, never imported).
    """
    try:
        files = decode_files(read_app_folder(directory))
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    return check_app(files)


def validate_report(directory: str | os.PathLike[str], check: AppCheck) -> list[str]:
    """What ``apps validate`` prints: a line per problem (``DIR/file:line: message``), or one summary line."""
    root = Path(directory)
    if check.problems:
        return [
            f"{(root / p.file).as_posix()}{f':{p.line}' if p.line else ''}: {p.message}"
            for p in check.problems
        ]
    app = check.manifest
    assert app is not None
    what = (
        f"entry {app.entry}"
        if app.format_version == FORMAT_06
        else "deployments " + ", ".join(app.deployments)
    )
    line = f"{root.as_posix()}: valid app '{app.id}'{f' {app.version}' if app.version else ''} (format {app.format_version}, {what})"
    if check.replica_files is not None:
        line += f"; {len(check.replica_files)} file(s) reach the replicas"
    return [line]


def _validate(args: argparse.Namespace) -> None:
    check = validate_app_folder(args.directory)
    lines = validate_report(args.directory, check)
    if args.json:
        print(
            json.dumps(
                {
                    "valid": not check.problems,
                    "format_version": check.format_version,
                    "problems": [
                        {"file": p.file, "line": p.line, "message": p.message} for p in check.problems
                    ],
                    "replica_files": check.replica_files,
                }
            )
        )
    else:
        for line in lines:
            print(line)
    if check.problems:
        raise CliError(f"{len(check.problems)} problem(s) in {args.directory}", 1)


def parse_env_vars(pairs: Sequence[str], scope: str | None = None) -> dict[str, dict[str, str]] | None:
    """``--env KEY=VALUE`` pairs to ``application_env_vars``: ``{scope: {KEY: VALUE}}``.

    ``scope`` is a deployment class name, or ``*`` (the default) for every deployment. Values stay
    strings; a ``_KEY`` is a secret. No pairs gives None (an update keeps the previous values).
    """
    if not pairs:
        if scope is not None:
            raise CliError("--env-class applies to --env KEY=VALUE; give at least one --env", EXIT_USAGE)
        return None
    scope = scope or "*"
    if scope != "*" and not scope.isidentifier():
        raise CliError(f"--env-class expects a deployment class name or '*', got '{scope}'", EXIT_USAGE)
    variables: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise CliError(f"--env expects KEY=VALUE (KEY a variable name), got '{pair}'", EXIT_USAGE)
        variables[key] = value
    return {scope: variables}


def parse_app_kwargs(raw: str | None) -> dict[str, dict[str, Any]] | None:
    """``--kwargs '{"ClassName": {"name": value}}'`` to ``application_kwargs`` (None when not given)."""
    if raw is None:
        return None
    usage = """--kwargs expects a JSON object of init arguments per deployment class, e.g. '{"MyApp": {"size": 3}}'"""
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise CliError(f"{usage}; not valid JSON: {exc}", EXIT_USAGE) from exc
    if not isinstance(value, dict):
        raise CliError(f"{usage}; got a JSON {type(value).__name__}", EXIT_USAGE)
    for name, kwargs in value.items():
        if not isinstance(kwargs, dict):
            raise CliError(f"{usage}; the value for '{name}' is not an object", EXIT_USAGE)
    return value


def deploy_arguments(args: argparse.Namespace, artifact_id: str) -> dict[str, Any]:
    """The ``deploy_app`` keyword arguments from ``apps run``/``apps deploy`` options.

    Options not given are left out, so an update (``--app-id`` of a running app) keeps its values.
    """
    arguments: dict[str, Any] = {
        "artifact_id": artifact_id,
        "version": args.version,
        "application_id": args.app_id,
        "application_kwargs": parse_app_kwargs(args.kwargs),
        "application_env_vars": parse_env_vars(args.env, args.env_class),
        "hypha_token": args.hypha_token,
        "disable_gpu": True if args.no_gpu else None,
        "max_ongoing_requests": args.max_ongoing_requests,
        "auto_redeploy": True if args.auto_redeploy else None,
    }
    return {k: v for k, v in arguments.items() if v is not None}


class DeployFailed(CliError):
    """The app failed, or did not run in time; ``status`` is its last status."""

    def __init__(self, message: str, status: dict[str, Any]):
        super().__init__(message, 1)
        self.status = status


async def follow_deployment(
    worker: Caller, app_id: str, deadline: float, out: Callable[[str], None]
) -> dict[str, Any]:
    """Wait for the app with the worker's ``wait_for_app``; print what to call; its status.

    The worker decides when the app runs (RUNNING with its Hypha service registered) and why it
    failed. ``deadline`` is a ``time.monotonic()`` value. A failure or a timeout raises
    :class:`DeployFailed` with the worker's reason and the app's last log lines; the app keeps
    deploying after a timeout.
    """
    remaining = max(1.0, deadline - time.monotonic())
    out(f"Waiting for {app_id} to run (up to {remaining:.0f} s) ...")
    try:
        status = await worker.call(
            "wait_for_app",
            {"application_id": app_id, "timeout": min(remaining, WAIT_MAX_S)},
            timeout=remaining + 15.0,
        )
    except CliError as exc:
        last: dict[str, Any] = {}
        with contextlib.suppress(CliError):
            statuses = await worker.call(
                "get_app_status", {"application_ids": [app_id], "logs_tail": 20}, timeout=30.0
            )
            last = (statuses or {}).get(app_id) or {}
        logs = format_logs(last, indent="  ")
        if logs:
            out("Last log lines:")
            out(logs)
        for deployment in (last.get("deployments") or {}).values():
            deployment.pop("logs", None)
        hint = (
            f"see `bioengine apps logs {app_id}`"
            if last.get("status") in ("DEPLOY_FAILED", "UNHEALTHY")
            else f"follow it with `bioengine apps status {app_id}`, stop it with `bioengine apps stop {app_id}`"
        )
        raise DeployFailed(f"{exc} ({hint})", last) from exc
    for line in app_summary(app_id, status):
        out(line)
    return dict(status)


def _confirm(question: str) -> bool:
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


async def _apps(args: argparse.Namespace) -> None:
    """``bioengine apps ...``: all calls of one command share one connection."""
    command = args.apps_command
    as_json = args.json
    # Progress goes to stderr with --json, so stdout stays one JSON document.
    out: Callable[[str], None] = (
        (lambda line: print(line, file=sys.stderr, flush=True))
        if as_json
        else (lambda line: print(line, flush=True))
    )
    # Check the input before connecting.
    files = read_app_folder(args.directory) if command in ("upload", "deploy") else []
    wait = False
    if command in ("run", "deploy"):
        deploy_arguments(args, "")
        wait = args.wait if args.wait is not None else command == "deploy"
    artifact_id = str(getattr(args, "artifact_id", ""))
    timeout = _timeout(args, {"upload": 120.0, "run": 300.0, "deploy": 300.0}.get(command, 30.0))
    deadline = time.monotonic() + timeout
    async with _session(args, args.service_id, timeout) as worker:
        if command in ("upload", "deploy"):
            upload: dict[str, Any] = {"files": files}
            if command == "upload" and getattr(args, "public", False):
                upload["public"] = True  # only when asked: a worker before 0.6.0 apps lacks it
            artifact_id = await worker.call("upload_app", upload)
            if command == "upload":
                print(json.dumps({"artifact_id": artifact_id}) if as_json else artifact_id)
                return
            out(f"Uploaded {args.directory} ({len(files)} files) as {artifact_id}")
        if command in ("run", "deploy"):
            if wait:
                out(f"Deploying {artifact_id} ...")
            app_id = await worker.call(
                "deploy_app",
                deploy_arguments(args, artifact_id),
                timeout=max(1.0, deadline - time.monotonic()),
            )
            result: dict[str, Any] = {"artifact_id": artifact_id, "application_id": app_id}
            if not wait:
                print(json.dumps(result) if as_json else app_id)
                return
            out(f"Application id: {app_id}")
            try:
                result["status"] = await follow_deployment(worker, app_id, deadline, out)
            except DeployFailed as exc:
                result["status"] = exc.status
                raise
            finally:
                if as_json:
                    print(json.dumps(result, default=str))
        elif command == "list":
            apps = await worker.call("list_apps")
            print(json.dumps(apps, default=str) if as_json else format_apps(apps))
        elif command == "status":
            statuses = await worker.call(
                "get_app_status", {"application_ids": args.app_ids or None, "logs_tail": args.logs}
            )
            print(json.dumps(statuses, default=str) if as_json else format_app_status(statuses))
        elif command == "logs":
            statuses = await worker.call(
                "get_app_status", {"application_ids": [args.app_id], "logs_tail": args.tail}
            )
            status = (statuses or {}).get(args.app_id) or {}
            if status.get("status") in (None, "NOT_RUNNING"):
                raise CliError(str(status.get("message") or f"app '{args.app_id}' is not deployed"))
            if as_json:
                logs = {n: d.get("logs") or {} for n, d in (status.get("deployments") or {}).items()}
                print(json.dumps(logs, default=str))
            else:
                print(
                    format_logs(status)
                    or f"No replica of '{args.app_id}' reports logs (status {status['status']})."
                )
        elif command == "stop":
            if not args.yes and sys.stdin.isatty() and not _confirm(f"Stop app '{args.app_id}'?"):
                raise CliError(f"not stopped: '{args.app_id}' keeps running")
            stopped = await worker.call("stop_app", {"application_id": args.app_id})
            # Older workers answer None: the app is being stopped.
            stopped = stopped or {"application_id": args.app_id, "status": "stopping"}
            if as_json:
                print(json.dumps({"stopped": args.app_id, **stopped}, default=str))
            elif stopped.get("status") == "stopping":
                print(f"Stopping {args.app_id}; it is removed in the background.")
            else:
                print(stopped.get("message") or f"{args.app_id}: {stopped.get('status')}")


def run(args: argparse.Namespace) -> None:
    if args.apps_command == "validate":  # no server
        _validate(args)
        return
    asyncio.run(_apps(args))


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expects a whole number >= 1, got '{raw}'")
    return value


def _log_lines(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -2
    if value < -1:
        raise argparse.ArgumentTypeError(f"expects a number of lines (-1 for all), got '{raw}'")
    return value


def add_parser(sub: Any, worker: argparse.ArgumentParser) -> None:
    apps = sub.add_parser("apps", help="Upload, deploy, follow and stop BioEngine apps")
    apps_sub = apps.add_subparsers(dest="apps_command", required=True)

    def common(timeout_default: str = "30") -> list[argparse.ArgumentParser]:
        return [_common_options(False, f"Seconds to wait for an answer (default: {timeout_default})"), worker]

    validate = apps_sub.add_parser(
        "validate",
        help="Check an app folder (format 0.6.0 or deployments:) without a server; every problem "
        "with file and line, exit 1 when there are any",
    )
    validate.add_argument("directory", metavar="DIR", help="App folder with manifest.yaml and code")
    # SUPPRESS: `bioengine --json apps validate DIR` (the top-level flag) works as well.
    validate.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="Print the result as one JSON object"
    )

    upload = apps_sub.add_parser(
        "upload", parents=common("120"), help="Upload an app folder; prints the artifact id"
    )
    upload.add_argument("directory", metavar="DIR", help="App folder with manifest.yaml and code")
    upload.add_argument(
        "--public",
        action="store_true",
        help="Let anyone read the app's artifact: its files and its frontend page (frontend_entry)",
    )

    deploy_options = argparse.ArgumentParser(add_help=False)
    add = deploy_options.add_argument
    add("--app-id", help="Application id; an existing id updates that app (default: a new random id)")
    add("--version", help="Artifact version (default: the latest)")
    add("--no-gpu", action="store_true", help="Run without GPUs")
    add(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Environment variable of the app (repeatable); a _KEY is a secret",
    )
    add(
        "--env-class",
        metavar="CLASS",
        help="Deployment class that gets the --env variables (default: '*', every deployment)",
    )
    add("--kwargs", metavar="JSON", help='Init arguments per deployment class: \'{"MyApp": {"size": 3}}\'')
    add("--hypha-token", metavar="TOKEN", help="Token given to the app's code as the secret HYPHA_TOKEN")
    add("--max-ongoing-requests", type=_positive_int, metavar="N", help="Concurrent calls (default: 10)")
    add("--auto-redeploy", action="store_true", help="Redeploy the app when it fails")
    wait_help = "Wait until the app runs (its Hypha service registered) or fails (default: {})"
    wait_timeout = "Seconds for the whole command, incl. waiting for RUNNING (default: 300)"

    run = apps_sub.add_parser(
        "run",
        parents=[_common_options(False, wait_timeout), worker, deploy_options],
        help="Deploy an uploaded app; prints the application id",
    )
    run.add_argument("artifact_id", metavar="ARTIFACT_ID", help="'alias' or 'workspace/alias'")
    run.add_argument("--wait", action=argparse.BooleanOptionalAction, help=wait_help.format("no"))
    deploy = apps_sub.add_parser(
        "deploy",
        parents=[_common_options(False, wait_timeout), worker, deploy_options],
        help="Upload an app folder and deploy it, following the deployment",
    )
    deploy.add_argument("directory", metavar="DIR", help="App folder with manifest.yaml and code")
    deploy.add_argument("--wait", action=argparse.BooleanOptionalAction, help=wait_help.format("yes"))

    apps_sub.add_parser(
        "list", parents=common(), help="Uploaded apps: artifact id, name, app format, versions"
    )
    status = apps_sub.add_parser(
        "status", parents=common(), help="Deployed apps: state, methods, service id, deployments"
    )
    status.add_argument("app_ids", nargs="*", metavar="APP_ID", help="Application ids (default: all)")
    status.add_argument(
        "--logs", type=_log_lines, default=0, metavar="N", help="Also show N log lines per replica"
    )
    logs = apps_sub.add_parser("logs", parents=common(), help="Log lines of an app's replicas")
    logs.add_argument("app_id", metavar="APP_ID", help="Application id")
    logs.add_argument(
        "--tail", type=_log_lines, default=100, metavar="N", help="Lines per replica, -1 all (default: 100)"
    )
    stop = apps_sub.add_parser("stop", parents=common(), help="Stop a deployed app")
    stop.add_argument("app_id", metavar="APP_ID", help="Application id")
    stop.add_argument("--yes", "-y", action="store_true", help="Do not ask for confirmation")
