"""What ``bioengine apps ...`` prints: the tables of uploaded and deployed apps, replica logs, and
what to call once an app runs."""

from __future__ import annotations

from typing import Any

from ._common import _table


def format_apps(apps: dict[str, Any]) -> str:
    """``list_apps`` as a table: artifact id, name, app format, versions."""
    if not apps:
        return "No uploaded apps; upload one with `bioengine apps upload DIR`."
    rows: list[tuple[str, ...]] = [("ARTIFACT ID", "NAME", "FORMAT", "VERSIONS")]
    for artifact_id, info in sorted(apps.items()):
        manifest = (info or {}).get("manifest") or {}
        versions = [str(v) for v in (info or {}).get("versions") or [] if v]
        app_format = str((info or {}).get("format_version") or "-")  # older workers do not say
        rows.append((artifact_id, str(manifest.get("name") or "-"), app_format, ", ".join(versions) or "-"))
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
        if status.get("static_site_url"):
            lines.append(f"  frontend: {status['static_site_url']}")
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
        *([f"  frontend: {status['static_site_url']}"] if status.get("static_site_url") else []),
        f"  call it: bioengine call {services[0] if services else app_id} METHOD --arg NAME=VALUE",
    ]
