"""App records and the reconciler: pure functions from (desired, observed) to actions.

An :class:`AppRecord` is the desired state of one app (kept in Ray's GCS key-value store, so it
outlives apps-svc). :func:`serve_config` turns all records into Serve's declarative config,
deterministically, so an unchanged app is never rebuilt. :func:`plan` compares the records with
what Serve reports and decides what to do, including ``auto_redeploy`` with backoff and a cap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from bioengine_app_runtime import AppSpec

__all__ = [
    "BUILDER_IMPORT_PATH",
    "SECRET_MASK",
    "AppRecord",
    "ObservedApp",
    "Plan",
    "plan",
    "resolve_authorized_users",
    "serve_config",
    "split_env_vars",
]

BUILDER_IMPORT_PATH = "bioengine_app_runtime:build"
SECRET_MASK = "*****"
REDEPLOY_BASE_DELAY_S = 10.0
REDEPLOY_MAX_DELAY_S = 300.0
REDEPLOY_MAX_ATTEMPTS = 5
FAILED_STATES = ("DEPLOY_FAILED", "UNHEALTHY")
_ENV_NAME = re.compile(r"^_?[A-Za-z_][A-Za-z0-9_]*\Z")


class AppRecord(BaseModel):
    """Desired state and metadata of one app (no secret values)."""

    application_id: str
    artifact_id: str
    version: str | None = None
    source: str = Field("artifact", description="'artifact' or 'local'.")
    display_name: str = ""
    description: str = ""
    application_kwargs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: As the caller gave them, secrets masked: {ClassName: {KEY or _SECRET: value or *****}}.
    application_env_vars: dict[str, dict[str, str]] = Field(default_factory=dict)
    disable_gpu: bool = False
    max_ongoing_requests: int = 10
    auto_redeploy: bool = False
    requested_authorized_users: list[str] | dict[str, list[str]] | None = None
    authorized_users: dict[str, list[str]] = Field(default_factory=dict)
    resources: dict[str, float] = Field(default_factory=dict)
    methods: list[str] = Field(default_factory=list)
    code_hash: str = ""
    start_time: float = 0.0
    last_updated_at: float = 0.0
    last_updated_by: str | None = None
    #: auto_redeploy bookkeeping.
    redeploy_attempts: int = 0
    next_redeploy_at: float = 0.0
    gave_up: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict, description="The AppSpec given to the builder.")


class ObservedApp(BaseModel):
    """What Serve reports for one app."""

    status: str
    args: dict[str, Any] | None = None
    import_path: str | None = None


class Plan(BaseModel):
    apply: bool = False
    redeploy: list[str] = Field(default_factory=list)
    give_up: dict[str, str] = Field(default_factory=dict)
    reset_attempts: list[str] = Field(default_factory=list)
    decisions: list[str] = Field(default_factory=list)


def split_env_vars(
    env_vars: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """``{Class: {KEY: v, _SECRET: v}}`` -> (plain, secret values without '_', masked for display).

    Every value must be a string (Ray's env_vars are strings); a ValueError names the culprit.
    """
    plain: dict[str, dict[str, str]] = {}
    secret: dict[str, dict[str, str]] = {}
    masked: dict[str, dict[str, str]] = {}
    for scope, variables in (env_vars or {}).items():
        if not isinstance(variables, Mapping):
            raise ValueError(f"application_env_vars.{scope}: must map names to string values")
        for name, value in variables.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name) or not name.lstrip("_"):
                raise ValueError(
                    f"application_env_vars.{scope}: invalid variable name {name!r} "
                    "(letters, digits and underscores; a leading '_' marks a secret)"
                )
            other = name[1:] if name.startswith("_") else f"_{name}"
            if other in variables:
                raise ValueError(
                    f"application_env_vars.{scope}: '{name}' and '{other}' set the same variable"
                )
            if not isinstance(value, str):
                raise ValueError(f"application_env_vars.{scope}.{name}: values must be strings")
            if name.startswith("_"):
                secret.setdefault(scope, {})[name[1:]] = value
                masked.setdefault(scope, {})[name] = SECRET_MASK
            else:
                plain.setdefault(scope, {})[name] = value
                masked.setdefault(scope, {})[name] = value
    return plain, secret, masked


def resolve_authorized_users(
    requested: list[str] | dict[str, list[str]] | None,
    manifest_rule: list[str] | dict[str, list[str]] | None,
    deployer: Iterable[str],
    admins: Iterable[str],
) -> dict[str, list[str]]:
    """Per-method rules as the public worker resolves them.

    The deploy argument wins over the manifest, default ``["*"]``; a list means every method;
    every rule that is not public gets the deploying user and the admins added, and a ``*`` rule
    with them is added when missing.
    """
    rule = requested if requested is not None else manifest_rule
    if rule is None:
        rule = ["*"]
    rules: dict[str, list[str]] = (
        {"*": list(rule)} if isinstance(rule, list) else {k: list(v) for k, v in rule.items()}
    )
    always = [u for u in (*deployer, *admins) if u]
    for method, users in rules.items():
        if "*" not in users:
            rules[method] = list(dict.fromkeys([*users, *always]))
    if "*" not in rules:
        rules["*"] = list(dict.fromkeys(always))
    return rules


def serve_config(records: Iterable[AppRecord], proxy_location: str = "Disabled") -> dict[str, Any]:
    """Serve's declarative config for every app, sorted by id (deterministic)."""
    applications = []
    for record in sorted(records, key=lambda r: r.application_id):
        applications.append(
            {
                "name": record.application_id,
                "route_prefix": None,
                "import_path": BUILDER_IMPORT_PATH,
                # No app-level runtime_env: the builder imports from the spec's code_dir, so the
                # build task can run in an idle worker; user deployments get their working_dir.
                "args": AppSpec.model_validate(record.spec).model_dump(mode="json"),
            }
        )
    return {"proxy_location": proxy_location, "applications": applications}


def redeploy_delay(attempts: int) -> float:
    return min(REDEPLOY_BASE_DELAY_S * 2**attempts, REDEPLOY_MAX_DELAY_S)


def plan(records: Mapping[str, AppRecord], observed: Mapping[str, ObservedApp], now: float) -> Plan:
    """What to do so Serve runs exactly the recorded apps.

    - a recorded app that Serve lacks, or runs with other args -> apply the config;
    - an app of ours (our builder) that has no record -> apply (Serve then deletes it);
    - an ``auto_redeploy`` app in DEPLOY_FAILED/UNHEALTHY -> redeploy once its backoff has
      passed (10 s doubling to 5 min), give up after 5 attempts; RUNNING resets the count.
    """
    result = Plan()
    for app_id, record in sorted(records.items()):
        seen = observed.get(app_id)
        desired_args = AppSpec.model_validate(record.spec).model_dump(mode="json")
        if seen is None:
            result.apply = True
            result.decisions.append(f"{app_id}: not in Serve -> deploy")
            continue
        if seen.args != desired_args:
            result.apply = True
            result.decisions.append(f"{app_id}: Serve runs other args -> update")
            continue
        if seen.status == "RUNNING" and record.redeploy_attempts:
            result.reset_attempts.append(app_id)
        if not record.auto_redeploy or seen.status not in FAILED_STATES or record.gave_up:
            continue
        if record.redeploy_attempts >= REDEPLOY_MAX_ATTEMPTS:
            reason = f"gave up after {record.redeploy_attempts} redeploys (still {seen.status})"
            result.give_up[app_id] = reason
            result.decisions.append(f"{app_id}: {reason}")
        elif now >= record.next_redeploy_at:
            result.redeploy.append(app_id)
            result.apply = True
            result.decisions.append(
                f"{app_id}: {seen.status} -> auto-redeploy attempt {record.redeploy_attempts + 1}"
            )
    for app_id, seen in sorted(observed.items()):
        if app_id not in records and seen.import_path == BUILDER_IMPORT_PATH and seen.status != "DELETING":
            result.apply = True
            result.decisions.append(f"{app_id}: in Serve without a record -> remove")
    return result
