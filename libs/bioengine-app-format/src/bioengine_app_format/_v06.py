"""Manifest format 0.6.0 (the public BioEngine worker since 0.11): ``entry: module:Class``.

The rules run in the public worker's order: ``format_version``; a ``deployments`` key (the older
format) is explained; the required fields; ``type``; the shape of ``entry``. Then the optional
fields this worker uses: ``version`` (required for an upload, a PEP 440 version), ``id`` (an
artifact alias), ``authorized_users``, ``frontend_entry``. Other keys are free metadata.
Where the public worker stops at the first problem, this reports all of them, in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from packaging.version import InvalidVersion, Version

from bioengine.composition import ENTRY_PATTERN  # the SDK loads entries by the same rule

from ._manifest import ID_PATTERN, check_authorized_users

__all__ = ["ENTRY_PATTERN", "FORMAT_06", "REQUIRED_FIELDS_06", "parse_version", "validate_manifest_06"]

FORMAT_06 = "0.6.0"
REQUIRED_FIELDS_06 = ("name", "id", "id_emoji", "description", "type", "entry")

_DEPLOYMENTS_MOVED = (
    "deployments is the older format's list; format 0.6.0 names one class instead: remove "
    "deployments and set entry: 'module:ClassName' (the class decorated with @bioengine.app; the "
    "classes it composes are found from its __init__ type hints)"
)


def parse_version(value: Any) -> Version | None:
    """``value`` as a PEP 440 version, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        return Version(str(value))
    except InvalidVersion:
        return None


def validate_manifest_06(
    manifest: Mapping[str, Any], file_names: Iterable[str] | None = None
) -> list[tuple[str, str]]:
    """Every problem of a 0.6.0 manifest as ``(field, message)``, the message naming the field."""
    problems: list[tuple[str, str]] = []
    version_field = manifest.get("format_version")
    if str(version_field) != FORMAT_06:
        problems.append(("format_version", f"format_version must be '{FORMAT_06}', got {version_field!r}"))
    if "deployments" in manifest:
        problems.append(("deployments", _DEPLOYMENTS_MOVED))
    for field in REQUIRED_FIELDS_06:
        if manifest.get(field) in (None, ""):
            problems.append((field, f"{field} is required"))
    for field in ("name", "id_emoji", "description", "type", "entry"):
        value = manifest.get(field)
        if value not in (None, "") and not isinstance(value, str):
            problems.append((field, f"{field} must be a string, got {type(value).__name__}"))
    kind = manifest.get("type")
    if isinstance(kind, str) and kind and kind != "ray-serve":
        problems.append(("type", f"type must be 'ray-serve', got {kind!r}"))
    entry = manifest.get("entry")
    if isinstance(entry, str) and entry and not ENTRY_PATTERN.match(entry):
        problems.append(("entry", f"entry {entry!r} must look like 'module.sub:ClassName'"))

    app_id = manifest.get("id")
    if app_id not in (None, "") and (not isinstance(app_id, str) or not ID_PATTERN.match(app_id)):
        problems.append(
            ("id", f"id {app_id!r} must be lowercase letters, digits and single hyphens (no _ or /)")
        )
    version = manifest.get("version")
    if version in (None, ""):
        problems.append(("version", "version is required (a PEP 440 version such as '1.0.0')"))
    elif parse_version(version) is None:
        problems.append(("version", f"version {version!r} is not a PEP 440 version such as '1.0.0'"))
    if "authorized_users" in manifest:
        problems += [("authorized_users", p) for p in check_authorized_users(manifest["authorized_users"])]
    frontend = manifest.get("frontend_entry")
    names = set(file_names) if file_names is not None else None
    if frontend is not None and (
        not isinstance(frontend, str) or (names is not None and frontend not in names)
    ):
        problems.append(("frontend_entry", f"frontend_entry {frontend!r} is not a file of the app"))
    return problems
