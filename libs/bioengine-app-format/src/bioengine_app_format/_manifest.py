"""The current app format (``deployments:``, ``format_version: 0.5.0``) and the app files shared by
both formats: decoding uploads, ``authorized_users`` rules, sortable versions. Pure functions.

The manifest schema follows the public BioEngine worker before 0.11: required ``name``, ``id``,
``id_emoji``, ``description``, ``type: ray-serve`` and ``deployments`` (``"<file stem>:<Class>"``,
the entry deployment first); optional ``version``, ``authorized_users`` (a list for every
method, or ``{method_or_*: [users]}``), ``frontend_entry`` and free metadata.
Format 0.6.0 (``entry: module:Class``) is in :mod:`._v06`; :mod:`._app` picks the format.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any

__all__ = [
    "ID_PATTERN",
    "MANIFEST_NAMES",
    "REQUIRED_FIELDS",
    "check_authorized_users",
    "decode_files",
    "validate_manifest",
    "version_key",
]

REQUIRED_FIELDS = ("name", "id", "id_emoji", "description", "type", "deployments")
MANIFEST_NAMES = ("manifest.yaml", "manifest.yml")
#: Artifact alias rules: lowercase letters, digits and single hyphens.
#: ``\Z``, not ``$``: ``$`` also matches before a trailing newline ("demo-app\n").
ID_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*\Z")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_FILE_BYTES = 50 * 1024**2


def _check_name(name: Any) -> str | None:
    if not isinstance(name, str) or not name.strip():
        return "a file has no name"
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        return f"file name '{name}' must be a relative path inside the app"
    return None


def decode_files(files: Any) -> dict[str, bytes]:
    """``[{name, content, type: text|base64}]`` -> ``{name: bytes}``; every problem is reported."""
    if not isinstance(files, list) or not files:
        raise ValueError("files must be a non-empty list of {name, content, type}")
    decoded: dict[str, bytes] = {}
    problems: list[str] = []
    for index, entry in enumerate(files):
        where = f"files[{index}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where} must be a dict with name, content and type")
            continue
        name = entry.get("name")
        problem = _check_name(name)
        if problem:
            problems.append(f"{where}.name: {problem}")
            continue
        kind = entry.get("type", "text")
        content = entry.get("content")
        if kind == "text":
            if not isinstance(content, str):
                problems.append(f"{where}.content ('{name}') must be a string for type 'text'")
                continue
            data = content.encode()
        elif kind == "base64":
            if not isinstance(content, str):
                problems.append(f"{where}.content ('{name}') must be a string for type 'base64'")
                continue
            if content.startswith("data:") and "," in content:
                content = content.partition(",")[2]
            try:  # a data: URL without "," fails here instead of giving an empty file
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, TypeError, ValueError):
                problems.append(f"{where}.content ('{name}') is not valid base64")
                continue
        else:
            problems.append(f"{where}.type ('{name}') must be 'text' or 'base64', got {kind!r}")
            continue
        if len(data) > _MAX_FILE_BYTES:
            problems.append(f"{where} ('{name}') is larger than {_MAX_FILE_BYTES // 1024**2} MB")
            continue
        if name in decoded:
            problems.append(f"{where}.name: '{name}' appears twice")
            continue
        decoded[str(name)] = data
    if problems:
        raise ValueError("invalid app files: " + "; ".join(problems))
    return decoded


def check_authorized_users(value: Any) -> list[str]:
    """Problems of an ``authorized_users`` rule: a list of users or ``{method: [users]}``."""

    def is_user_list(users: Any) -> bool:
        return isinstance(users, list) and all(isinstance(u, str) and u for u in users)

    if isinstance(value, list):
        return [] if is_user_list(value) else ["authorized_users: every entry must be a non-empty string"]
    if isinstance(value, dict):
        return [
            f"authorized_users.{method}: must be a list of user ids or emails"
            for method, users in value.items()
            if not isinstance(method, str) or not is_user_list(users)
        ]
    return ["authorized_users: must be a list of users or a {method: [users]} mapping"]


def validate_manifest(manifest: Any, file_names: Iterable[str] | None = None) -> list[str]:
    """Every problem of ``manifest``, each naming its field; empty when valid."""
    if not isinstance(manifest, Mapping):
        return ["manifest: must be a YAML mapping"]
    problems = [f"{field}: required" for field in REQUIRED_FIELDS if manifest.get(field) in (None, "")]
    for field in ("name", "id_emoji", "description"):
        if field in manifest and manifest[field] is not None and not isinstance(manifest[field], str):
            problems.append(f"{field}: must be a string")
    app_id = manifest.get("id")
    if app_id is not None and (not isinstance(app_id, str) or not ID_PATTERN.match(app_id)):
        problems.append(
            f"id: '{app_id}' must be lowercase letters, digits and single hyphens (no underscores or slashes)"
        )
    if manifest.get("type") not in (None, "", "ray-serve"):
        problems.append(f"type: must be 'ray-serve', got {manifest.get('type')!r}")
    deployments = manifest.get("deployments")
    names = set(file_names) if file_names is not None else None
    if deployments is not None:
        if not isinstance(deployments, list) or not deployments:
            problems.append("deployments: must be a non-empty list of '<file stem>:<ClassName>'")
        else:
            for index, entry in enumerate(deployments):
                module, sep, class_name = (
                    str(entry).partition(":") if isinstance(entry, str) else ("", "", "")
                )
                if not sep or not _IDENTIFIER.match(module) or not _IDENTIFIER.match(class_name):
                    problems.append(
                        f"deployments[{index}]: {entry!r} must look like '<file stem>:<ClassName>'"
                    )
                elif names is not None and f"{module}.py" not in names:
                    problems.append(f"deployments[{index}]: the app has no file '{module}.py'")
            if len(set(map(str, deployments))) != len(deployments):
                problems.append("deployments: an entry appears twice")
    version = manifest.get("version")
    if version is not None and not isinstance(version, str | int | float):
        problems.append("version: must be a string such as '1.0.0'")
    if "authorized_users" in manifest:
        problems += check_authorized_users(manifest["authorized_users"])
    frontend = manifest.get("frontend_entry")
    if frontend is not None and (
        not isinstance(frontend, str) or (names is not None and frontend not in names)
    ):
        problems.append(f"frontend_entry: {frontend!r} is not a file of the app")
    return problems


def version_key(version: str) -> tuple[Any, ...] | None:
    """A sortable key for dotted numeric versions ('1.2.0', 'v2'); None when not comparable."""
    match = re.fullmatch(r"v?(\d+(?:\.\d+)*)", version.strip())
    if not match:
        return None
    parts = [int(p) for p in match.group(1).split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)
