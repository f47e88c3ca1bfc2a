"""apps-svc's Prometheus gauges: apps by state and replicas by state, from the last look at
Serve (the reconcile loop's). No app id is a label value: a scrape tells how many apps run, not
which (ids can name a person's project)."""

from __future__ import annotations

import collections
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from bioengine_common.metrics import gauge

from ._serve import enum_value

__all__ = ["ServeCounts", "count_serve", "families"]

#: Serve's application states, reported even at zero (so a dashboard sees each series).
APP_STATES = ("NOT_STARTED", "DEPLOYING", "DEPLOY_FAILED", "RUNNING", "UNHEALTHY", "DELETING")
#: Serve's replica states.
REPLICA_STATES = ("STARTING", "UPDATING", "RECOVERING", "RUNNING", "STOPPING", "PENDING_MIGRATION")

ServeCounts = tuple[dict[str, int], dict[str, int]]


def count_serve(details: Mapping[str, Any], ours: Collection[str]) -> ServeCounts:
    """(apps by state, replicas by state) of the apps in ``ours`` (this worker's records) from
    Serve's details; an app recorded but not in Serve counts as ``NOT_STARTED``."""
    applications = details.get("applications") or {}
    apps: collections.Counter[str] = collections.Counter()
    replicas: collections.Counter[str] = collections.Counter()
    for app_id in ours:
        app = applications.get(app_id)
        if app is None:
            apps["NOT_STARTED"] += 1
            continue
        apps[enum_value(app.get("status")) or "UNKNOWN"] += 1
        for deployment in (app.get("deployments") or {}).values():
            for replica in deployment.get("replicas") or []:
                replicas[enum_value(replica.get("state")) or "UNKNOWN"] += 1
    return dict(apps), dict(replicas)


def families(counts: ServeCounts | None, recorded: int) -> Iterable[Any]:
    """The gauge families of one scrape; ``counts`` None before the first look at Serve."""
    apps, replicas = counts or ({}, {})
    by_state = gauge("bioengine_apps", "Apps of this worker by Serve application state.", ["state"])
    for state in sorted({*APP_STATES, *apps}):
        by_state.add_metric([state], apps.get(state, 0))
    replica_gauge = gauge(
        "bioengine_app_replicas", "Serve replicas of this worker's apps by replica state.", ["state"]
    )
    for state in sorted({*REPLICA_STATES, *replicas}):
        replica_gauge.add_metric([state], replicas.get(state, 0))
    recorded_gauge = gauge("bioengine_apps_recorded", "Apps this worker is asked to run (its records).")
    recorded_gauge.add_metric([], recorded)
    return [by_state, replica_gauge, recorded_gauge]
