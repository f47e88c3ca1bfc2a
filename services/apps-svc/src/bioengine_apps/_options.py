"""Checks of ``deploy_app``'s optional settings and the startup apps, pure (no Ray calls, no Hypha).

- :func:`scaling_problems`: ``scaling`` is ``{ClassName: {num_replicas: n}}`` or
  ``{ClassName: {autoscaling_config: {...}}}`` (Ray Serve's autoscaling options), for classes
  the app has;
- :func:`ice_server_problems`: ``ice_servers`` is a list of ``{urls, username?, credential?}``;
- :func:`parse_startup_applications`: ``--startup-applications``, a JSON list of ``deploy_app``
  keyword arguments, with ``${VAR}`` taken from the environment.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from bioengine_common.contracts import worker

__all__ = [
    "STARTUP_APP_FIELDS",
    "expand_env",
    "ice_server_problems",
    "parse_startup_applications",
    "scaling_problems",
]

#: ``deploy_app`` parameters a startup app may set (``wait``/``timeout`` are the service's own).
STARTUP_APP_FIELDS = frozenset(worker.deploy_app.parameters) - {"wait", "timeout"}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _autoscaling_fields() -> frozenset[str]:
    from ray.serve.config import AutoscalingConfig

    return frozenset(AutoscalingConfig.model_fields)


def scaling_problems(scaling: Any, class_names: Iterable[str] | None) -> list[str]:
    """What is wrong with a ``scaling`` setting, each naming the class and key; ``class_names``
    are the app's deployment classes (None: not known here, so names are not checked)."""
    if scaling is None:
        return []
    if not isinstance(scaling, Mapping):
        return ["scaling must be {ClassName: {num_replicas: n} or {autoscaling_config: {...}}}"]
    known = set(class_names) if class_names is not None else None
    problems = []
    for name, rule in scaling.items():
        where = f"scaling['{name}']"
        if known is not None and name not in known:
            problems.append(
                f"{where}: the app has no deployment class '{name}' (it has: {', '.join(sorted(known))})"
            )
            continue
        if not isinstance(rule, Mapping) or set(rule) not in ({"num_replicas"}, {"autoscaling_config"}):
            problems.append(f"{where}: give exactly one of num_replicas or autoscaling_config")
            continue
        if "num_replicas" in rule:
            count = rule["num_replicas"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                problems.append(f"{where}.num_replicas: must be a whole number >= 1, got {count!r}")
            continue
        problems += _autoscaling_problems(where, rule["autoscaling_config"])
    return problems


def _autoscaling_problems(where: str, config: Any) -> list[str]:
    if not isinstance(config, Mapping):
        return [f"{where}.autoscaling_config: must be a mapping of Ray Serve autoscaling options"]
    unknown = sorted(set(config) - _autoscaling_fields())
    if unknown:
        return [f"{where}.autoscaling_config: unknown option(s) {', '.join(unknown)}"]
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig

    try:
        AutoscalingConfig(**config)
    except (ValidationError, TypeError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else [{"msg": str(exc), "loc": ()}]
        return [
            f"{where}.autoscaling_config{''.join(f'.{p}' for p in e.get('loc') or ())}: {e.get('msg')}"
            for e in errors
        ]
    return []


def ice_server_problems(ice_servers: Any) -> list[str]:
    """What is wrong with ``ice_servers`` (a list of ``{urls, username?, credential?}``)."""
    if ice_servers is None:
        return []
    if not isinstance(ice_servers, list):
        return ["ice_servers must be a list of {urls, username?, credential?}"]
    problems = []
    for i, server in enumerate(ice_servers):
        where = f"ice_servers[{i}]"
        if not isinstance(server, Mapping):
            problems.append(f"{where}: must be a mapping with 'urls'")
            continue
        urls = server.get("urls")
        if not (isinstance(urls, str) and urls) and not (
            isinstance(urls, list) and urls and all(isinstance(u, str) and u for u in urls)
        ):
            problems.append(f"{where}.urls: a URL or a non-empty list of URLs")
        extra = sorted(set(server) - {"urls", "username", "credential"})
        if extra:
            problems.append(f"{where}: unknown key(s) {', '.join(extra)}")
        for key in ("username", "credential"):
            if key in server and not isinstance(server[key], str):
                problems.append(f"{where}.{key}: must be a string")
    return problems


def expand_env(value: Any, environ: Mapping[str, str]) -> Any:
    """``value`` with every ``${VAR}`` in its strings (keys and values, nested) replaced from
    ``environ``. Raises ValueError naming a variable that is not set."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise ValueError(f"environment variable '{name}' is not set")
            return environ[name]

        return _VAR.sub(one, value)
    if isinstance(value, list):
        return [expand_env(v, environ) for v in value]
    if isinstance(value, dict):
        return {expand_env(k, environ): expand_env(v, environ) for k, v in value.items()}
    return value


def parse_startup_applications(
    raw: str | None, environ: Mapping[str, str] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """(the startup apps, the problems) of ``--startup-applications``: a JSON list (or one
    object) of ``deploy_app`` keyword arguments, each with an ``artifact_id``. ``${VAR}`` in
    strings is taken from ``environ`` (default the process environment). A bad entry is left
    out with a problem naming it; the others stand."""
    if raw is None or not raw.strip():
        return [], []
    try:
        value = json.loads(raw)
    except ValueError as exc:
        return [], [f"--startup-applications is not JSON: {exc}"]
    entries = [value] if isinstance(value, dict) else value
    if not isinstance(entries, list):
        return [], ["--startup-applications must be a JSON list of deploy_app keyword arguments"]
    apps: list[dict[str, Any]] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        where = f"--startup-applications[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be an object of deploy_app keyword arguments")
            continue
        unknown = sorted(set(entry) - STARTUP_APP_FIELDS)
        if unknown:
            problems.append(
                f"{where}: unknown key(s) {', '.join(unknown)} (deploy_app takes "
                f"{', '.join(sorted(STARTUP_APP_FIELDS))})"
            )
            continue
        if not isinstance(entry.get("artifact_id"), str) or not entry["artifact_id"]:
            problems.append(f"{where}: needs an artifact_id")
            continue
        try:
            apps.append(expand_env(entry, os.environ if environ is None else environ))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    return apps, problems
