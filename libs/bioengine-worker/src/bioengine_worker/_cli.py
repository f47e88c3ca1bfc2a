"""``bioengine``: talk to a running BioEngine worker.

The server URL, workspace and token come from flags, then ``BIOENGINE_SERVER_URL``,
``BIOENGINE_WORKSPACE`` and ``BIOENGINE_TOKEN``, then the connection file that
``bioengine-worker`` writes into its workspace dir (``~/.bioengine/worker.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def _used(used: Any, total: Any, scale: float = 1.0, unit: str = "") -> str:
    if not isinstance(total, (int, float)):
        return "-"
    used_value = used if isinstance(used, (int, float)) else 0.0
    return f"{used_value / scale:.3g}/{total / scale:.3g}{unit}"


def format_cluster(ray_cluster: dict[str, Any] | None) -> str:
    """The Ray cluster as a table: one row per node, then the totals and pending demand."""
    if not ray_cluster:
        return "The Ray cluster is not reported (is bioengine-cluster up?)"
    gib = 1024**3
    state = "ready" if ray_cluster.get("ready") else f"NOT READY: {ray_cluster.get('error')}"
    lines = [
        f"Ray cluster ({ray_cluster.get('mode')}, Ray {ray_cluster.get('ray_version')}) at "
        f"{ray_cluster.get('head_address')}: {state}"
    ]
    rows: list[tuple[str, ...]] = [
        ("NODE", "ROLE", "CPU", "GPU", "MEMORY", "OBJECT STORE", "ACCELERATOR", "SLURM JOB")
    ]
    for node in (ray_cluster.get("nodes") or {}).values():
        role = ("head" if node.get("head") else "worker") + ("" if node.get("alive", True) else " (dead)")
        rows.append((
            str(node.get("node_ip")), role,
            _used(node.get("used_cpu"), node.get("total_cpu")),
            _used(node.get("used_gpu"), node.get("total_gpu")),
            _used(node.get("used_memory"), node.get("total_memory"), gib, " GiB"),
            _used(node.get("used_object_store_memory"), node.get("total_object_store_memory"), gib, " GiB"),
            str(node.get("accelerator_type") or "NA"), str(node.get("slurm_job_id") or "-"),
        ))  # fmt: skip
    totals = ray_cluster.get("cluster") or {}
    if totals:
        rows.append((
            "TOTAL", "", _used(totals.get("used_cpu"), totals.get("total_cpu")),
            _used(totals.get("used_gpu"), totals.get("total_gpu")),
            _used(totals.get("used_memory"), totals.get("total_memory"), gib, " GiB"),
            _used(totals.get("used_object_store_memory"), totals.get("total_object_store_memory"), gib, " GiB"),
            "", "",
        ))  # fmt: skip
    lines += _table(rows)
    for demand in ray_cluster.get("pending_demand") or []:
        lines.append(f"  pending: {demand.get('count')} x {demand.get('resources')} ({demand.get('source')})")
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
    lines = [
        f"BioEngine worker {service_id}: {state}",
        f"  mode {status.get('worker_mode') or '-'}, version {status.get('bioengine_version')}, "
        f"up {_duration(status.get('service_uptime'))}",
    ]
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


async def _call(args: argparse.Namespace, service_id: str, method: str, kwargs: dict[str, Any]) -> Any:
    conn = _connection(args)
    try:
        server = await connect(
            conn["server_url"],
            workspace=conn["workspace"] if conn["token"] else None,
            token=conn["token"],
            method_timeout=args.timeout,
            timeout=args.timeout,
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
        function = service.get(method) if hasattr(service, "get") else getattr(service, method, None)
        if function is None:
            names = sorted(k for k in service if callable(service[k])) if hasattr(service, "keys") else []
            raise CliError(f"'{service_id}' has no method '{method}'; it has: {', '.join(names)}", EXIT_USAGE)
        try:
            return await asyncio.wait_for(function(**kwargs), timeout=args.timeout)
        except TimeoutError as exc:
            raise CliError(f"{service_id}.{method} did not answer within {args.timeout:g} s") from exc
        except Exception as exc:
            raise CliError(f"{service_id}.{method} failed: {error_summary(exc)}") from exc
    finally:
        with contextlib.suppress(Exception):
            await server.disconnect()


def _print(value: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, default=str))
    elif isinstance(value, str):
        print(value)
    else:
        print(json.dumps(value, indent=2, default=str))


def _common_options(defaults: bool) -> argparse.ArgumentParser:
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
    add("--timeout", type=float, default=default(30.0), help="Seconds to wait for an answer (default: 30)")
    add("--json", action="store_true", default=default(False), help="Print machine-readable JSON")
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
    return parser


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
        else:
            _print(
                asyncio.run(_call(args, args.service_id, args.method, parse_arguments(args.arg))), args.json
            )
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.code)
