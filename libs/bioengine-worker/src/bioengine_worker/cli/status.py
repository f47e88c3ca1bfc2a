"""``bioengine status`` and ``bioengine cluster status``: the worker's services and its Ray cluster."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

from ._common import _call, _common_options, _duration, _print, _table


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


def add_parsers(sub: Any, worker: argparse.ArgumentParser) -> None:
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


def run_status(args: argparse.Namespace) -> None:
    started = time.monotonic()
    status = asyncio.run(_call(args, args.service_id, "get_status", {}))
    if args.json:
        _print(status, True)
    else:
        print(format_status(status, args.service_id))
        print(f"  (answered in {1000 * (time.monotonic() - started):.0f} ms)")


def run_cluster(args: argparse.Namespace) -> None:
    status = asyncio.run(_call(args, args.service_id, "get_status", {}))
    if args.json:
        _print(status.get("ray_cluster"), True)
    else:
        print(format_cluster(status.get("ray_cluster")))
