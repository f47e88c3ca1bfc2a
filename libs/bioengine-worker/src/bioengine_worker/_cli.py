"""``bioengine``: talk to a running BioEngine worker.

The server URL, workspace and token come from flags, then ``BIOENGINE_SERVER_URL``,
``BIOENGINE_WORKSPACE`` and ``BIOENGINE_TOKEN``, then the connection file that
``bioengine-worker`` writes into its workspace dir (``~/.bioengine/worker.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from bioengine_common import ServiceUnavailable, connect, error_summary

from ._launcher import CONNECTION_FILE

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _connection(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.workspace_dir).expanduser() / CONNECTION_FILE
    saved: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError, OSError):
            saved = json.loads(path.read_text())
    resolved = {
        "server_url": args.server_url or os.environ.get("BIOENGINE_SERVER_URL") or saved.get("server_url"),
        "workspace": args.workspace or os.environ.get("BIOENGINE_WORKSPACE") or saved.get("workspace"),
        "token": None
        if args.anonymous
        else (args.token or os.environ.get("BIOENGINE_TOKEN") or saved.get("token")),
    }
    if not resolved["server_url"]:
        raise CliError(
            f"no worker to talk to: pass --server-url (or BIOENGINE_SERVER_URL), or start one "
            f"with `bioengine-worker` (it writes {path})",
            EXIT_USAGE,
        )
    resolved["workspace"] = resolved["workspace"] or "bioengine"
    return resolved


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_arguments(pairs: Sequence[str]) -> dict[str, Any]:
    """``["k=v", ...]`` to keyword arguments; values are JSON when they parse as JSON."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise CliError(f"--arg expects NAME=VALUE, got '{pair}'", EXIT_USAGE)
        kwargs[key] = _parse_value(value)
    return kwargs


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "-"
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes and not days else []
    parts += [f"{seconds}s"] if not days and not hours else []
    return " ".join(parts) or "0s"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def _count(value: Any) -> str:
    """CPUs or GPUs: at most 2 decimals, none when whole (``1.5``, ``8``, ``0.3``)."""
    return f"{round(float(value), 2):g}"


def _gib(value: Any) -> str:
    """Bytes as GiB with 1 or 2 decimals (``2.0``, ``6.12``)."""
    text = f"{float(value) / 1024**3:.2f}"
    return text[:-1] if text.endswith("0") else text


def _used(used: Any, total: Any, show: Callable[[Any], str] = _count, unit: str = "") -> str:
    if not isinstance(total, (int, float)):
        return "-"
    used_value = used if isinstance(used, (int, float)) else 0.0
    return f"{show(used_value)}/{show(total)}{unit}"


def _has_gpus(ray_cluster: dict[str, Any]) -> bool:
    figures = [*(ray_cluster.get("nodes") or {}).values(), ray_cluster.get("cluster") or {}]
    return any(isinstance(f.get("total_gpu"), (int, float)) and f["total_gpu"] > 0 for f in figures)


def format_cluster(ray_cluster: dict[str, Any] | None) -> str:
    """The Ray cluster as a table: one row per node, then the totals and pending demand. CPUs
    with at most 2 decimals, memory in GiB with 1-2; the GPU columns only when there are GPUs
    (else the first line says "no GPUs")."""
    if not ray_cluster:
        return "The Ray cluster is not reported (is bioengine-cluster up?)"
    gpus = _has_gpus(ray_cluster)
    state = "ready" if ray_cluster.get("ready") else f"NOT READY: {ray_cluster.get('error')}"
    lines = [
        f"Ray cluster ({ray_cluster.get('mode')}, Ray {ray_cluster.get('ray_version')}) at "
        f"{ray_cluster.get('head_address')}: {state}" + ("" if gpus else "; no GPUs")
    ]

    def row(name: str, role: str, figures: dict[str, Any], accelerator: str, job: str) -> tuple[str, ...]:
        cells = [name, role, _used(figures.get("used_cpu"), figures.get("total_cpu"))]
        cells += [_used(figures.get("used_gpu"), figures.get("total_gpu"))] if gpus else []
        cells += [
            _used(figures.get("used_memory"), figures.get("total_memory"), _gib, " GiB"),
            _used(
                figures.get("used_object_store_memory"),
                figures.get("total_object_store_memory"),
                _gib,
                " GiB",
            ),
        ]
        cells += [accelerator] if gpus else []
        return (*cells, job)

    rows = [("NODE", "ROLE", "CPU", *(["GPU"] if gpus else []), "MEMORY", "OBJECT STORE",
             *(["ACCELERATOR"] if gpus else []), "SLURM JOB")]  # fmt: skip
    for node in (ray_cluster.get("nodes") or {}).values():
        role = ("head" if node.get("head") else "worker") + ("" if node.get("alive", True) else " (dead)")
        accelerator = str(node.get("accelerator_type") or "NA")
        rows.append(
            row(str(node.get("node_ip")), role, node, accelerator, str(node.get("slurm_job_id") or "-"))
        )
    totals = ray_cluster.get("cluster") or {}
    if totals:
        rows.append(row("TOTAL", "", totals, "", ""))
    lines += _table(rows)
    for demand in ray_cluster.get("pending_demand") or []:
        resources = {
            name: round(amount, 2) if isinstance(amount, float) else amount
            for name, amount in (demand.get("resources") or {}).items()
        }
        lines.append(f"  pending: {demand.get('count')} x {resources} ({demand.get('source')})")
    return "\n".join(lines)


def format_datasets(datasets: dict[str, Any]) -> str:
    if not datasets:
        return "No datasets you may read."
    rows: list[tuple[str, ...]] = [("ID", "NAME", "ACCESS", "ZARR STORES")]
    for dataset_id, info in sorted(datasets.items()):
        stores = ", ".join(info.get("zarr_stores") or []) or "-"
        rows.append(
            (
                dataset_id,
                str(info.get("name") or dataset_id),
                "public" if info.get("public") else "restricted",
                stores,
            )
        )
    return "\n".join(_table(rows))


def format_status(status: dict[str, Any], service_id: str) -> str:
    state = "ready" if status.get("is_ready") else "NOT READY"
    lines = [f"BioEngine worker {service_id}: {state}"]
    if not status.get("is_ready"):
        # Why, one line per cause ("<service>: <reason>"; the service's log is logs/<service>.log).
        reasons = status.get("not_ready_reasons")
        if reasons is None:
            reasons = ["(this worker's gateway does not report reasons)"]
        lines += [f"  - {reason}" for reason in reasons]
    lines.append(
        f"  mode {status.get('worker_mode') or '-'}, version {status.get('bioengine_version')}, "
        f"up {_duration(status.get('service_uptime'))}"
    )
    rows = [("SERVICE", "STATE", "VERSION", "UPTIME", "CLIENT / ERROR")]
    for name, entry in (status.get("services") or {}).items():
        inner = entry.get("status") or {}
        if entry.get("up"):
            rows.append(
                (
                    name,
                    "up",
                    str(inner.get("version", "-")),
                    _duration(inner.get("uptime")),
                    str(inner.get("client_id", "-")),
                )
            )
        else:
            rows.append((name, "DOWN", "-", "-", str(entry.get("error") or "")))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        lines.append(
            "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        )
    if "admin_users" in status:
        lines.append(f"  admins: {', '.join(status['admin_users'])}")
    return "\n".join(lines)


# ---- apps ------------------------------------------------------------------------------------------
MANIFEST_NAMES = ("manifest.yaml", "manifest.yml")
#: Longest wait the worker's wait_for_app accepts.
WAIT_MAX_S = 3600.0


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
            f"'{directory}' has no manifest.yaml; an app folder needs one (name, id, deployments, ...)",
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


def format_apps(apps: dict[str, Any]) -> str:
    """``list_apps`` as a table: artifact id, name, versions."""
    if not apps:
        return "No uploaded apps; upload one with `bioengine apps upload DIR`."
    rows: list[tuple[str, ...]] = [("ARTIFACT ID", "NAME", "VERSIONS")]
    for artifact_id, info in sorted(apps.items()):
        manifest = (info or {}).get("manifest") or {}
        versions = [str(v) for v in (info or {}).get("versions") or [] if v]
        rows.append((artifact_id, str(manifest.get("name") or "-"), ", ".join(versions) or "-"))
    return "\n".join(_table(rows))


def _service_ids(status: dict[str, Any]) -> list[str]:
    return [
        str(entry["websocket_service_id"])
        for entry in status.get("service_ids") or []
        if isinstance(entry, dict) and entry.get("websocket_service_id")
    ]


def _replicas(replica_states: Any) -> str:
    if not replica_states:
        return "-"
    return ", ".join(f"{state} {count}" for state, count in dict(replica_states).items())


def format_app_status(statuses: dict[str, Any]) -> str:
    """``get_app_status``: a block per app with its state, methods, service ids and deployments."""
    if not statuses:
        return "No apps deployed by this worker."
    blocks: list[str] = []
    for app_id, status in statuses.items():
        state = str(status.get("status") or "UNKNOWN")
        origin = " ".join(
            str(v) for v in (status.get("artifact_id"), status.get("version")) if v and v != "latest"
        )
        title = ", ".join(str(v) for v in (status.get("display_name"), origin) if v)
        lines = [f"{app_id}: {state}" + (f" ({title})" if title else "")]
        if state != "RUNNING" and status.get("message"):
            lines.append(f"  message: {status['message']}")
        if status.get("available_methods"):
            lines.append(f"  methods: {', '.join(map(str, status['available_methods']))}")
        if "service_ids" in status:
            lines.append(f"  service: {', '.join(_service_ids(status)) or '- (not registered)'}")
        deployments = status.get("deployments") or {}
        if deployments:
            rows: list[tuple[str, ...]] = [("DEPLOYMENT", "STATUS", "REPLICAS", "MESSAGE")]
            for name, deployment in deployments.items():
                rows.append(
                    (
                        str(name),
                        str(deployment.get("status") or "-"),
                        _replicas(deployment.get("replica_states")),
                        str(deployment.get("message") or "") if deployment.get("status") != "HEALTHY" else "",
                    )
                )
            lines += _table(rows)
        logs = format_logs(status, indent="  ")
        if logs:
            lines.append(logs)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_logs(status: dict[str, Any], indent: str = "") -> str:
    """The replica logs in one app's status: a header per deployment/replica, then its lines."""
    lines: list[str] = []
    for name, deployment in (status.get("deployments") or {}).items():
        for replica_id, entry in (deployment.get("logs") or {}).items():
            entry = entry or {}
            details = ", ".join(str(entry[k]) for k in ("state", "node_ip") if entry.get(k))
            lines.append(f"{indent}== {name} / {replica_id}" + (f" ({details})" if details else "") + " ==")
            if entry.get("error"):
                lines.append(f"{indent}  (no logs: {entry['error']})")
            for stream in ("stdout", "stderr"):
                stream_lines = [str(line).rstrip("\n") for line in entry.get(stream) or []]
                if stream_lines:
                    lines.append(f"{indent}  [{stream}]")
                    lines += [f"{indent}  {line}" for line in stream_lines]
            if not entry.get("error") and not any(entry.get(s) for s in ("stdout", "stderr")):
                lines.append(f"{indent}  (no output)")
    return "\n".join(lines)


def app_summary(app_id: str, status: dict[str, Any]) -> list[str]:
    """What to call once an app runs: its Hypha service ids and methods."""
    methods = ", ".join(map(str, status.get("available_methods") or [])) or "-"
    services = _service_ids(status)
    return [
        f"{app_id}: RUNNING",
        *(f"  service: {service}" for service in services),
        f"  methods: {methods}",
        f"  call it: bioengine call {services[0] if services else app_id} METHOD --arg NAME=VALUE",
    ]


class CallTimeout(CliError):
    """A call to the worker did not answer in time."""


class Caller(Protocol):
    async def call(
        self, method: str, kwargs: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any: ...


class _Worker:
    """One worker service on an open connection: ``await worker.call(method, kwargs)``."""

    def __init__(self, service: Any, service_id: str, timeout: float):
        self.service = service
        self.service_id = service_id
        self.timeout = timeout

    async def call(
        self, method: str, kwargs: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        service, service_id = self.service, self.service_id
        function = service.get(method) if hasattr(service, "get") else getattr(service, method, None)
        if function is None:
            names = sorted(k for k in service if callable(service[k])) if hasattr(service, "keys") else []
            raise CliError(f"'{service_id}' has no method '{method}'; it has: {', '.join(names)}", EXIT_USAGE)
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(function(**(kwargs or {})), timeout=limit)
        except TimeoutError as exc:
            raise CallTimeout(f"{service_id}.{method} did not answer within {limit:g} s") from exc
        except Exception as exc:
            raise CliError(error_summary(exc)) from exc


def _timeout(args: argparse.Namespace, default: float = 30.0) -> float:
    """``--timeout`` if given, else the command's own default."""
    value = getattr(args, "timeout", None)
    return float(value) if value is not None else default


@contextlib.asynccontextmanager
async def _session(args: argparse.Namespace, service_id: str, timeout: float) -> AsyncIterator[_Worker]:
    """Connect once and yield the service; ``timeout`` bounds each call (and the connection, up to 60 s)."""
    conn = _connection(args)
    try:
        server = await connect(
            conn["server_url"],
            workspace=conn["workspace"] if conn["token"] else None,
            token=conn["token"],
            method_timeout=timeout,
            timeout=min(timeout, 60.0),
        )
    except ServiceUnavailable as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from exc
    try:
        if "/" not in service_id:
            service_id = f"{conn['workspace']}/{service_id}"
        try:
            service = await server.get_service(service_id, {"mode": "random"})
        except Exception as exc:
            raise CliError(
                f"service '{service_id}' is not available at {conn['server_url']} "
                f"({error_summary(exc)}); is the worker running?",
                EXIT_UNAVAILABLE,
            ) from exc
        yield _Worker(service, service_id, timeout)
    finally:
        with contextlib.suppress(Exception):
            await server.disconnect()


async def _call(args: argparse.Namespace, service_id: str, method: str, kwargs: dict[str, Any]) -> Any:
    async with _session(args, service_id, _timeout(args)) as worker:
        return await worker.call(method, kwargs)


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
            artifact_id = await worker.call("upload_app", {"files": files})
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


def _print(value: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, default=str))
    elif isinstance(value, str):
        print(value)
    else:
        print(json.dumps(value, indent=2, default=str))


def _common_options(defaults: bool, timeout_help: str | None = None) -> argparse.ArgumentParser:
    """Connection options, accepted before or after the subcommand.

    The copy attached to a subcommand has no defaults, so it cannot undo a value given before
    the subcommand.
    """
    parser = argparse.ArgumentParser(add_help=False)

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    add = parser.add_argument
    add(
        "--server-url",
        default=default(None),
        help="Hypha server URL (default: BIOENGINE_SERVER_URL or the connection file)",
    )
    add(
        "--workspace",
        default=default(None),
        help="Workspace of the worker (default: BIOENGINE_WORKSPACE or the connection file)",
    )
    add(
        "--token", default=default(None), help="Hypha token (default: BIOENGINE_TOKEN or the connection file)"
    )
    add(
        "--anonymous",
        action="store_true",
        default=default(False),
        help="Connect without any token, as an anonymous user",
    )
    add(
        "--workspace-dir",
        default=default(os.environ.get("BIOENGINE_WORKSPACE_DIR", "~/.bioengine")),
        help="Where bioengine-worker wrote its connection file (default: ~/.bioengine)",
    )
    add(
        "--timeout",
        type=float,
        # None: each command's own default (30 s; longer for apps upload/run/deploy).
        default=default(None),
        help=timeout_help or "Seconds to wait for an answer (default: 30)",
    )
    add("--json", action="store_true", default=default(False), help="Print machine-readable JSON")
    add(
        "--debug",
        action="store_true",
        default=default(False),
        help="On an error, print the whole traceback (a remote service's included), not one line",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bioengine",
        parents=[_common_options(True)],
        description="Talk to a running BioEngine worker.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    worker = argparse.ArgumentParser(add_help=False)
    worker.add_argument(
        "--service-id", default="bioengine-worker", help="Worker service id (default: %(default)s)"
    )
    sub.add_parser(
        "status", parents=[_common_options(False), worker], help="Show the worker's status and its services"
    )
    cluster = sub.add_parser("cluster", help="The worker's Ray cluster")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    cluster_sub.add_parser(
        "status",
        parents=[_common_options(False), worker],
        help="Nodes and resources of the Ray cluster, as a table",
    )
    datasets = sub.add_parser("datasets", help="Datasets served by the worker")
    datasets_sub = datasets.add_subparsers(dest="datasets_command", required=True)
    datasets_sub.add_parser("list", parents=[_common_options(False)], help="Datasets you may read")
    info = datasets_sub.add_parser("info", parents=[_common_options(False)], help="One dataset in full")
    info.add_argument("dataset_id", help="Dataset id")
    datasets.set_defaults(service_id="bioengine-worker")
    call = sub.add_parser(
        "call",
        parents=[_common_options(False)],
        help="Call a method of any service: bioengine call SERVICE_ID METHOD --arg k=v",
    )
    call.add_argument("service_id", help="Service id, e.g. bioengine-worker or ws/client:bioengine-worker")
    call.add_argument("method", help="Method name, e.g. get_status")
    call.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="Keyword argument; VALUE is parsed as JSON when possible (repeatable)",
    )
    _add_apps_parser(sub, worker)
    return parser


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


def _add_apps_parser(sub: Any, worker: argparse.ArgumentParser) -> None:
    apps = sub.add_parser("apps", help="Upload, deploy, follow and stop BioEngine apps")
    apps_sub = apps.add_subparsers(dest="apps_command", required=True)

    def common(timeout_default: str = "30") -> list[argparse.ArgumentParser]:
        return [_common_options(False, f"Seconds to wait for an answer (default: {timeout_default})"), worker]

    upload = apps_sub.add_parser(
        "upload", parents=common("120"), help="Upload an app folder; prints the artifact id"
    )
    upload.add_argument("directory", metavar="DIR", help="App folder with manifest.yaml and code")

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

    apps_sub.add_parser("list", parents=common(), help="Uploaded apps: artifact id, name, versions")
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


def _print_error(line: str, exc: BaseException, debug: bool) -> None:
    if debug:
        # The chained causes carry the remote traceback (hypha-rpc puts it in the error's text).
        print("".join(traceback.format_exception(exc)), end="", file=sys.stderr)
    print(f"error: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # hypha-rpc reports every normal disconnect as a warning on stdout; keep output parseable.
    for name in ("RPC", "websocket-client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        if args.command == "status":
            started = time.monotonic()
            status = asyncio.run(_call(args, args.service_id, "get_status", {}))
            if args.json:
                _print(status, True)
            else:
                print(format_status(status, args.service_id))
                print(f"  (answered in {1000 * (time.monotonic() - started):.0f} ms)")
        elif args.command == "datasets":
            found = asyncio.run(_call(args, args.service_id, "list_datasets", {}))
            if args.datasets_command == "list":
                print(json.dumps(found, default=str) if args.json else format_datasets(found))
            elif args.dataset_id not in found:
                raise CliError(f"dataset '{args.dataset_id}' not found, or you may not read it", 1)
            else:
                _print(found[args.dataset_id], args.json)
        elif args.command == "cluster":
            status = asyncio.run(_call(args, args.service_id, "get_status", {}))
            if args.json:
                _print(status.get("ray_cluster"), True)
            else:
                print(format_cluster(status.get("ray_cluster")))
        elif args.command == "apps":
            asyncio.run(_apps(args))
        else:
            _print(
                asyncio.run(_call(args, args.service_id, args.method, parse_arguments(args.arg))), args.json
            )
    except CliError as exc:
        _print_error(str(exc), exc, args.debug)
        sys.exit(exc.code)
    except Exception as exc:  # a bug or an unexpected remote error: one line, all of it with --debug
        _print_error(error_summary(exc), exc, args.debug)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted (a deployment in progress goes on in the background)", file=sys.stderr)
        sys.exit(130)
