"""App records and the reconciler: pure functions from (desired, observed) to actions.

An :class:`AppRecord` is the desired state of one app (kept in apps-svc's workspace dir, so it
outlives apps-svc and the Ray head), with the hash of the spec Serve last received. :func:`plan_reconcile` compares the
records with what Serve runs and decides what to deploy or delete, including ``auto_redeploy``
with backoff and a cap. An unchanged spec is never deployed again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from bioengine_app_runtime import AppSpec

__all__ = [
    "SECRET_MASK",
    "AppRecord",
    "AppsKV",
    "Decision",
    "ObservedApp",
    "ReconcilePlan",
    "RestartPlan",
    "after_head_restart",
    "apply_bookkeeping",
    "failure_reason",
    "format_time",
    "newer_records_in_kv",
    "plan_reconcile",
    "reported_state",
    "resolve_authorized_users",
    "session_started_at",
    "spec_hash",
    "split_env_vars",
    "unavailable_message",
    "wait_outcome",
]

SECRET_MASK = "*****"
REDEPLOY_BASE_DELAY_S = 10.0
REDEPLOY_MAX_DELAY_S = 300.0
REDEPLOY_MAX_ATTEMPTS = 5
FAILED_STATES = ("DEPLOY_FAILED", "UNHEALTHY")
#: Longest failure reason shown at the top of an app's status (the detail stays in its deployments).
REASON_MAX_CHARS = 300
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
    #: deploy_app's scaling (per class), proxy memory (GiB) and debug switch, as requested.
    scaling: dict[str, dict[str, Any]] | None = None
    proxy_memory_in_gb: float | None = None
    debug: bool | None = None
    #: deploy_app's ice_servers, as requested (inherited by an update); the proxy's WebRTC
    #: service reads them from the app's secrets.
    ice_servers: list[dict[str, Any]] | None = None
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
    #: Set when apps-svc redeployed the app on a new Ray head ("redeployed after the Ray head
    #: restarted at ..."); shown in the app's status until the app is deployed again by a user.
    recovery_note: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict, description="The AppSpec given to the builder.")


class AppsKV(Protocol):
    """Ray's KV store as apps-svc uses it: one JSON record and one JSON secrets entry per app
    (``bioengine_app_runtime.kv.RayKV``; a dict in tests). Every method may block."""

    def record_ids(self) -> list[str]: ...
    def get_record(self, application_id: str) -> dict[str, Any] | None: ...
    def put_record(self, application_id: str, record: dict[str, Any]) -> None: ...
    def get_secrets(self, application_id: str) -> dict[str, Any] | None: ...
    def put_secrets(self, application_id: str, secrets: dict[str, Any]) -> None: ...
    def delete_app(self, application_id: str) -> None: ...


def newer_records_in_kv(records: Mapping[str, AppRecord], kv: AppsKV) -> list[AppRecord]:
    """The records of the KV store that ``records`` lacks or holds an older version of
    (``last_updated_at``): kept there by another replica of apps-svc, or by a version that kept
    them only there. Blocks (reads the store)."""
    newer = []
    for app_id in kv.record_ids():
        raw = kv.get_record(app_id)
        if not raw:
            continue
        record = AppRecord.model_validate(raw)
        mine = records.get(record.application_id)
        if mine is None or record.last_updated_at > mine.last_updated_at:
            newer.append(record)
    return newer


class ObservedApp(BaseModel):
    """What Serve reports for one app."""

    status: str
    #: Deployed by a BioEngine worker (it has the BioEngineProxy ingress).
    ours: bool = False


class Decision(BaseModel):
    """One decision of apps-svc, in the shape of cluster-svc's autoscaler decisions: when, what,
    why (``message``, for people) and what it was based on (``inputs``)."""

    at: float
    action: Literal["deploy", "redeploy", "delete", "give_up", "head_restarted", "not_redeployed"]
    message: str
    inputs: dict[str, Any] = Field(default_factory=dict)


class ReconcilePlan(BaseModel):
    deploy: list[str] = Field(default_factory=list)
    delete: list[str] = Field(default_factory=list)
    #: Subset of ``deploy``: auto-redeploys, which count against the retry cap.
    redeploy: list[str] = Field(default_factory=list)
    give_up: dict[str, str] = Field(default_factory=dict)
    reset_attempts: list[str] = Field(default_factory=list)
    decisions: list[Decision] = Field(default_factory=list)


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


def plan_reconcile(
    records: Mapping[str, AppRecord], observed: Mapping[str, ObservedApp], now: float
) -> ReconcilePlan:
    """What to do so Serve runs exactly the recorded apps.

    - a recorded app that Serve lacks, or whose spec changed since Serve got it -> deploy;
    - a spec whose build failed is not retried (unless ``auto_redeploy``, see below);
    - an app of ours that has no record -> delete (unless Serve is deleting it already);
    - an ``auto_redeploy`` app in DEPLOY_FAILED/UNHEALTHY, or whose build failed -> redeploy
      once its backoff has passed (10 s doubling to 5 min); give up after 5 attempts; RUNNING
      resets the count. Apps of others are never touched.
    """
    result = ReconcilePlan()
    for app_id, record in sorted(records.items()):
        seen = observed.get(app_id)
        desired = spec_hash(record.spec)
        build_failed = record.failed_hash == desired
        inputs = {
            "application_id": app_id,
            "serve_status": seen.status if seen else None,
            "auto_redeploy": record.auto_redeploy,
            "redeploy_attempts": record.redeploy_attempts,
        }
        if not build_failed and (seen is None or record.applied_hash != desired):
            result.deploy.append(app_id)
            reason = "not in Serve" if seen is None else "spec changed"
            result.decisions.append(
                Decision(at=now, action="deploy", message=f"{app_id}: {reason} -> deploy", inputs=inputs)
            )
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
            result.decisions.append(
                Decision(at=now, action="give_up", message=f"{app_id}: {reason}", inputs=inputs)
            )
        elif now >= record.next_redeploy_at:
            result.redeploy.append(app_id)
            result.deploy.append(app_id)
            message = f"{app_id}: {status} -> auto-redeploy attempt {record.redeploy_attempts + 1}"
            result.decisions.append(
                Decision(at=now, action="redeploy", message=message, inputs={**inputs, "state": status})
            )
    for app_id, seen in sorted(observed.items()):
        if app_id not in records and seen.ours and seen.status != "DELETING":
            result.delete.append(app_id)
            message = f"{app_id}: in Serve without a record -> delete"
            inputs = {"application_id": app_id, "serve_status": seen.status, "recorded": False}
            result.decisions.append(Decision(at=now, action="delete", message=message, inputs=inputs))
    return result


def apply_bookkeeping(records: Mapping[str, AppRecord], plan: ReconcilePlan, now: float) -> list[str]:
    """Write a plan's auto_redeploy bookkeeping into the records (before anything is deployed);
    the ids of the changed records, to save.

    RUNNING again resets the attempts; giving up is recorded with its reason; a redeploy bumps
    the spec's ``redeploy`` (so Serve rebuilds the app), counts the attempt and sets when the
    next one may come (:func:`redeploy_delay`).
    """
    changed: list[str] = []
    for app_id in plan.reset_attempts:
        records[app_id].redeploy_attempts, records[app_id].gave_up = 0, None
        changed.append(app_id)
    for app_id, reason in plan.give_up.items():
        records[app_id].gave_up = reason
        changed.append(app_id)
    for app_id in plan.redeploy:
        record = records[app_id]
        record.spec["redeploy"] = int(record.spec.get("redeploy", 0)) + 1
        record.next_redeploy_at = now + redeploy_delay(record.redeploy_attempts)
        record.redeploy_attempts += 1
        changed.append(app_id)
    return changed


# ---- the Ray head restarting under the apps -------------------------------------------------------
_SESSION = re.compile(r"^session_(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d{6})_\d+$")


def format_time(timestamp: float) -> str:
    """A wall-clock time for messages: ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def session_started_at(session_name: str | None) -> float | None:
    """When a Ray head started, from its session name (``session_<local time>_<pid>``); None if
    the name has another form."""
    match = _SESSION.match(session_name or "")
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d_%H-%M-%S_%f").timestamp()


class RestartPlan(BaseModel):
    """What to do about a Ray cluster apps-svc connects to."""

    #: The cluster is not the one the apps were last deployed to: they are gone from Serve.
    restarted: bool = False
    #: Apps to deploy again, each with the note its status shows.
    redeploy: dict[str, str] = Field(default_factory=dict)
    decisions: list[Decision] = Field(default_factory=list)


def after_head_restart(
    records: Mapping[str, AppRecord],
    known_session: str | None,
    session: str,
    started_at: float | None,
    *,
    now: float,
) -> RestartPlan:
    """Compare the Ray session apps-svc last deployed to with the one it just connected to.

    A different session is a new head (a head restart loses Serve and every app on it, unless
    the GCS is fault tolerant, in which case the session is kept): every app that was deployed
    is redeployed and says so. An app whose current spec failed to build was not running and
    is left as it was. No known session (first start, or state of an older version): nothing
    to tell.
    """
    result = RestartPlan()
    if not known_session or known_session == session:
        return result
    result.restarted = True
    when = format_time(started_at) if started_at is not None else "an unknown time"
    note = f"redeployed after the Ray head restarted at {when}"
    for app_id, record in sorted(records.items()):
        if record.failed_hash is not None and record.failed_hash == spec_hash(record.spec):
            message = f"{app_id}: its build had failed, not redeployed after the head restart"
            inputs: dict[str, Any] = {"application_id": app_id, "failed_hash": record.failed_hash}
            result.decisions.append(Decision(at=now, action="not_redeployed", message=message, inputs=inputs))
            continue
        result.redeploy[app_id] = note
    names = ", ".join(result.redeploy) or "none"
    message = (
        f"Ray head restarted at {when} (session {session}, was {known_session}): "
        f"redeploying {len(result.redeploy)} app(s): {names}"
    )
    inputs = {"session": session, "previous_session": known_session, "head_started_at": started_at}
    result.decisions.insert(0, Decision(at=now, action="head_restarted", message=message, inputs=inputs))
    return result


def unavailable_message(
    reason: str, since: float | None, head_down: bool, last_status: str | None, last_seen: float | None
) -> str:
    """The status message of an app while apps-svc cannot see Serve."""
    if head_down:
        text = f"Ray head down since {format_time(since) if since else 'an unknown time'}"
    else:
        text = "Ray cluster not reachable" + (f" since {format_time(since)}" if since else "")
    text += f" ({reason})" if reason else ""
    if last_status and last_seen:
        text += f"; last seen {last_status} at {format_time(last_seen)}"
    if head_down:
        return text + "; apps-svc redeploys the app when the head is back"
    return text + "; the app may still be serving"


# ---- what an app's status says -------------------------------------------------------------------
def reported_state(
    serve_status: str | None,
    serve_message: str,
    service_id: str | None,
    registration_error: str | None = None,
    build_error: str | None = None,
) -> tuple[str, str]:
    """The (status, message) an app's status reports, from what Serve and the app's proxy say.

    Invariant: RUNNING only once the app's Hypha service is registered (``service_id`` known), so
    a caller that sees RUNNING can call ``get_service`` with the id at once. Until then an app
    Serve calls RUNNING is DEPLOYING ("registering its Hypha service"). An app Serve does not
    have is DEPLOY_FAILED when its current spec failed to build, else NOT_STARTED.
    """
    if serve_status is None:
        if build_error:
            return "DEPLOY_FAILED", f"building the app failed: {build_error}"
        return "NOT_STARTED", "waiting for Serve to start the deployment"
    if serve_status == "RUNNING" and not service_id:
        message = "replicas running; registering the app's Hypha service"
        if registration_error:
            message += f" (last attempt: {registration_error})"
        return "DEPLOYING", message
    return serve_status, serve_message


_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failure)\b.*)$"
)


def _one_line(text: str) -> str:
    """The line of ``text`` that says what went wrong: the last exception line of a traceback
    (``ValueError: weights missing``, module prefix dropped), else its first non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match:
            line = match.group(1)
            return line if len(line) <= REASON_MAX_CHARS else line[: REASON_MAX_CHARS - 3] + "..."
    first = lines[0] if lines else ""
    return first if len(first) <= REASON_MAX_CHARS else first[: REASON_MAX_CHARS - 3] + "..."


def failure_reason(status: str, message: str, deployments: Mapping[str, Mapping[str, Any]]) -> str | None:
    """One short line saying why a DEPLOY_FAILED or UNHEALTHY app failed, None otherwise.

    The first failed deployment's message is the most precise (e.g. the exception raised in its
    replica's ``__init__``), prefixed by the deployment's name; else the app's own message.
    """
    if status not in FAILED_STATES:
        return None
    for name, deployment in sorted(deployments.items()):
        if str(deployment.get("status")) in FAILED_STATES and str(deployment.get("message") or "").strip():
            return f"{name}: {_one_line(str(deployment['message']))}"
    return _one_line(message) or f"the app is {status} (Serve gave no reason)"


def wait_outcome(status: Mapping[str, Any]) -> str | None:
    """What waiting for an app makes of one status entry: "running" (RUNNING, so its service
    id is known), "failed" (DEPLOY_FAILED, UNHEALTHY, or no longer deployed) or None (keep
    waiting)."""
    state = status.get("status")
    if state == "RUNNING":
        return "running"
    if state in (*FAILED_STATES, "NOT_RUNNING"):
        return "failed"
    return None
