"""App records and the reconciler: pure functions from (desired, observed) to actions.

An :class:`AppRecord` is the desired state of one app (kept in Ray's GCS key-value store, so it
outlives apps-svc), with the hash of the spec Serve last received. :func:`plan` compares the
records with what Serve runs and decides what to deploy or delete, including ``auto_redeploy``
with backoff and a cap. An unchanged spec is never deployed again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from bioengine_app_runtime import AppSpec

__all__ = [
    "SECRET_MASK",
    "AppRecord",
    "ObservedApp",
    "Plan",
    "plan",
    "resolve_authorized_users",
    "spec_hash",
    "split_env_vars",
]

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
    #: Hash of the spec Serve last received, and of a spec whose build failed (with the error).
    applied_hash: str | None = None
    failed_hash: str | None = None
    last_error: str | None = None
    #: auto_redeploy bookkeeping.
    redeploy_attempts: int = 0
    next_redeploy_at: float = 0.0
    gave_up: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict, description="The AppSpec given to the builder.")


class ObservedApp(BaseModel):
    """What Serve reports for one app."""

    status: str
    #: Deployed by a BioEngine worker (it has the BioEngineProxy ingress).
    ours: bool = False


class Plan(BaseModel):
    deploy: list[str] = Field(default_factory=list)
    delete: list[str] = Field(default_factory=list)
    #: Subset of ``deploy``: auto-redeploys, which count against the retry cap.
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


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A stable hash of an app spec (defaults filled in), to tell what Serve already has."""
    normal = AppSpec.model_validate(spec).model_dump(mode="json")
    return hashlib.sha256(json.dumps(normal, sort_keys=True).encode()).hexdigest()


def redeploy_delay(attempts: int) -> float:
    return min(REDEPLOY_BASE_DELAY_S * 2**attempts, REDEPLOY_MAX_DELAY_S)


def plan(records: Mapping[str, AppRecord], observed: Mapping[str, ObservedApp], now: float) -> Plan:
    """What to do so Serve runs exactly the recorded apps.

    - a recorded app that Serve lacks, or whose spec changed since Serve got it -> deploy;
    - a spec whose build failed is not retried (unless ``auto_redeploy``, see below);
    - an app of ours that has no record -> delete (unless Serve is deleting it already);
    - an ``auto_redeploy`` app in DEPLOY_FAILED/UNHEALTHY, or whose build failed -> redeploy
      once its backoff has passed (10 s doubling to 5 min); give up after 5 attempts; RUNNING
      resets the count. Apps of others are never touched.
    """
    result = Plan()
    for app_id, record in sorted(records.items()):
        seen = observed.get(app_id)
        desired = spec_hash(record.spec)
        build_failed = record.failed_hash == desired
        if not build_failed and (seen is None or record.applied_hash != desired):
            result.deploy.append(app_id)
            reason = "not in Serve" if seen is None else "spec changed"
            result.decisions.append(f"{app_id}: {reason} -> deploy")
            continue
        status = "BUILD_FAILED" if build_failed else seen.status if seen else "MISSING"
        if status == "RUNNING" and record.redeploy_attempts:
            result.reset_attempts.append(app_id)
        failed = status in (*FAILED_STATES, "BUILD_FAILED")
        if not record.auto_redeploy or not failed or record.gave_up:
            continue
        if record.redeploy_attempts >= REDEPLOY_MAX_ATTEMPTS:
            reason = f"gave up after {record.redeploy_attempts} redeploys (still {status})"
            result.give_up[app_id] = reason
            result.decisions.append(f"{app_id}: {reason}")
        elif now >= record.next_redeploy_at:
            result.redeploy.append(app_id)
            result.deploy.append(app_id)
            result.decisions.append(
                f"{app_id}: {status} -> auto-redeploy attempt {record.redeploy_attempts + 1}"
            )
    for app_id, seen in sorted(observed.items()):
        if app_id not in records and seen.ours and seen.status != "DELETING":
            result.delete.append(app_id)
            result.decisions.append(f"{app_id}: in Serve without a record -> delete")
    return result
