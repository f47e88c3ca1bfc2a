"""One app, either format: read ``manifest.yaml``, pick the format, check it, one typed result.

- ``format_version: 0.6.0`` -> the 0.6.0 rules (:mod:`._v06`) and source checks (:mod:`._sources`);
- a manifest with ``deployments`` (with ``format_version: 0.5.0`` or none) -> the current format's
  rules (:mod:`._manifest`, unchanged) and its static analysis (:mod:`._analysis`);
- any other ``format_version`` is refused by name.

Manifest problems carry the line of their field (YAML node marks); source problems the file and
line of the code (:mod:`ast`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from ._analysis import analyze_app
from ._manifest import MANIFEST_NAMES, validate_manifest, version_key
from ._problems import AppFormatError, Problem
from ._replica import replica_files
from ._sources import check_sources_06, syntax_problems
from ._v06 import ENTRY_PATTERN, FORMAT_06, parse_version, validate_manifest_06

__all__ = [
    "FORMAT_05",
    "AppCheck",
    "AppManifest",
    "check_app",
    "format_version_of",
    "load_app_manifest",
    "load_manifest",
    "validate_upload",
    "version_action",
]

#: The current format (``deployments:``); manifests without ``format_version`` are read as it.
FORMAT_05 = "0.5.0"
_OLDER = re.compile(r"^0\.[45](\.|$)")


@dataclass(frozen=True)
class AppManifest:
    """A valid manifest of either format."""

    format_version: str  #: "0.6.0", or "0.5.0" for the current format
    manifest: dict[str, Any]  #: the parsed manifest (``version`` as a string)
    file: str = "manifest.yaml"  #: manifest.yaml or manifest.yml
    lines: dict[str, int] = field(default_factory=dict)  #: top-level key -> line
    entry: str | None = None  #: 0.6.0: ``module.sub:Class``
    deployments: tuple[str, ...] = ()  #: current format: ``file_stem:Class``, the entry first
    version: str | None = None
    authorized_users: list[str] | dict[str, list[str]] | None = None
    frontend_entry: str | None = None

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @property
    def name(self) -> str:
        return str(self.manifest["name"])


@dataclass
class AppCheck:
    """Everything the files tell without running them: the manifest when it is valid, all problems."""

    manifest: AppManifest | None
    problems: list[Problem]
    format_version: str | None = None
    #: 0.6.0: the files that reach the replicas (:func:`replica_files`); None for the current format.
    replica_files: list[str] | None = None


def format_version_of(manifest: Mapping[str, Any] | None) -> str:
    """The format of a stored manifest: "0.6.0", else what it says, "0.5.0" when it says nothing."""
    value = (manifest or {}).get("format_version")
    return FORMAT_05 if value in (None, "") else str(value)


def _read(files: Mapping[str, bytes]) -> tuple[str, Any, dict[str, int]]:
    name = next((n for n in MANIFEST_NAMES if n in files), None)
    if name is None:
        raise AppFormatError(
            "the app has no manifest.yaml", [Problem("manifest.yaml", None, "the app has no manifest.yaml")]
        )
    try:
        text = files[name].decode("utf-8")
        manifest = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise AppFormatError(
            f"{name} is not valid YAML: {exc}", [Problem(name, line, f"not valid YAML: {exc}")]
        ) from exc
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines.setdefault(str(key.value), key.start_mark.line + 1)
    return name, manifest, lines


def _field_of(problem: str) -> str:
    return re.split(r"[:.\[ ]", problem, maxsplit=1)[0]


def _manifest_problems(
    name: str, manifest: Any, lines: Mapping[str, int], files: Mapping[str, bytes]
) -> tuple[str, list[Problem]]:
    """(format, problems of the manifest) for a parsed manifest."""
    if isinstance(manifest, Mapping) and str(manifest.get("format_version")) == FORMAT_06:
        return FORMAT_06, [
            Problem(name, lines.get(key), message)
            for key, message in validate_manifest_06(manifest, files.keys())
        ]
    version = manifest.get("format_version") if isinstance(manifest, Mapping) else None
    if (
        isinstance(manifest, Mapping)
        and "deployments" not in manifest
        and version not in (None, "")
        and not _OLDER.match(str(version))
    ):
        return str(version), [
            Problem(
                name,
                lines.get("format_version"),
                f"format_version {version!r} is not supported: use '{FORMAT_06}' (entry: module:Class) "
                f"or the older '{FORMAT_05}' (a deployments list)",
            )
        ]
    # The current format: today's rules, word for word.
    problems = [Problem(name, lines.get(_field_of(p)), p) for p in validate_manifest(manifest, files.keys())]
    if isinstance(manifest, Mapping) and "entry" in manifest and "deployments" not in manifest:
        problems.append(
            Problem(
                name,
                lines.get("entry"),
                f"format_version: 'entry' belongs to format {FORMAT_06}; add format_version: {FORMAT_06} "
                "(without it the manifest is read as the older format, which needs deployments)",
            )
        )
    return FORMAT_05, problems


def _result(
    format_version: str, name: str, manifest: Mapping[str, Any], lines: dict[str, int]
) -> AppManifest:
    data = dict(manifest)
    if data.get("version") is not None:
        data["version"] = str(data["version"])
    return AppManifest(
        format_version=format_version,
        manifest=data,
        file=name,
        lines=lines,
        entry=data.get("entry") if format_version == FORMAT_06 else None,
        deployments=tuple(data.get("deployments") or ()) if format_version != FORMAT_06 else (),
        version=data.get("version"),
        authorized_users=data.get("authorized_users"),
        frontend_entry=data.get("frontend_entry"),
    )


def load_app_manifest(files: Mapping[str, bytes]) -> AppManifest:
    """The valid manifest of an app's files ``{relative name: bytes}``.

    Raises :class:`AppFormatError` (a ValueError) listing every problem. For the current format
    the message is today's ``invalid manifest.yaml: a; b``; for 0.6.0 each problem reads
    ``manifest.yaml:<line>: <field> ...``.
    """
    name, manifest, lines = _read(files)
    format_version, problems = _manifest_problems(name, manifest, lines, files)
    if problems:
        if format_version == FORMAT_05:
            message = f"invalid {name}: " + "; ".join(p.message for p in problems)
        else:
            message = "; ".join(map(str, problems))
        raise AppFormatError(message, problems)
    return _result(format_version, name, manifest, lines)


def load_manifest(files: Mapping[str, bytes]) -> dict[str, Any]:
    """The parsed and validated manifest (either format) as a dict; ValueError lists every problem."""
    return load_app_manifest(files).manifest


def validate_upload(files: Mapping[str, bytes]) -> AppManifest:
    """What an upload checks: the manifest, and for 0.6.0 also the sources (:mod:`._sources`).

    The current format checks its code at deploy time (with the deploy's init kwargs), as before.
    """
    app = load_app_manifest(files)
    if app.format_version == FORMAT_06 and app.entry:
        problems = check_sources_06(files, app.entry, app.file, app.lines.get("entry"))
        if problems:
            raise AppFormatError("; ".join(map(str, problems)), problems)
    return app


def _analysis_problems(
    files: Mapping[str, bytes], name: str, manifest: Mapping[str, Any], lines: Mapping[str, int]
) -> list[Problem]:
    """The current format's static analysis as problems with files and lines. Init kwargs are given
    at deploy time, so what concerns them (``application_kwargs...``) is left out here."""
    deployments = [str(d) for d in manifest.get("deployments") or []]
    analysis = analyze_app(files, deployments)
    problems: list[Problem] = []
    for text in analysis.problems:
        syntax = re.match(r"^(\S+\.py) line (\d+): (.*)\Z", text, re.DOTALL)
        if text.startswith("application_kwargs."):
            continue
        # "Class: ...", "Class.__init__: ..." or "module:Class: ...": the class's file and line.
        head = re.split(r"[:.]", text, maxsplit=1)[0]
        owner = analysis.classes.get(head) or analysis.classes.get(text.split(": ", 1)[0].partition(":")[2])
        if syntax:
            problems.append(Problem(syntax[1], int(syntax[2]), syntax[3]))
        elif owner is not None:
            problems.append(Problem(f"{owner.module}.py", owner.node.lineno, text))
        elif any(text.startswith(f"{d}:") for d in deployments):
            problems.append(Problem(name, lines.get("deployments"), text))
        else:
            problems.append(Problem(name, None, text))
    return problems


def check_app(files: Mapping[str, bytes]) -> AppCheck:
    """Every problem of an app folder's files, either format, without importing its code."""
    try:
        name, manifest, lines = _read(files)
    except AppFormatError as exc:
        return AppCheck(None, exc.problems)
    format_version, problems = _manifest_problems(name, manifest, lines, files)
    shipped: list[str] | None = None
    if format_version == FORMAT_06:
        entry = manifest.get("entry")
        shipped = replica_files(files)
        if isinstance(entry, str) and ENTRY_PATTERN.match(entry):
            problems += check_sources_06(files, entry, name, lines.get("entry"))
        else:
            problems += syntax_problems(files)
    elif (
        format_version == FORMAT_05
        and isinstance(manifest, Mapping)
        and manifest.get("deployments")
        and not any(_field_of(p.message) == "deployments" for p in problems)
    ):
        problems += _analysis_problems(files, name, manifest, lines)
    valid = _result(format_version, name, manifest, lines) if not problems else None
    return AppCheck(valid, problems, format_version, shipped)


def version_action(app: AppManifest, tags: list[str], artifact_id: str) -> Literal["in_place", "new"]:
    """How an upload of ``app`` lands on an artifact whose versions are ``tags`` (oldest first).

    Current format: no version or the latest one updates the latest in place; a new version
    makes a new one; an older one is refused. 0.6.0: every upload is a new, strictly higher
    PEP 440 version. Raises ValueError saying why an upload is refused.
    """
    version = app.version
    latest = tags[-1] if tags else None
    if app.format_version != FORMAT_06:
        if version is None or version == latest:
            return "in_place"
        if version in tags:
            raise ValueError(
                f"version {version} of {artifact_id} is older than the latest ({latest}); "
                "bump the version in manifest.yaml to upload a new one"
            )
        new_key, latest_key = version_key(version), version_key(latest) if latest else None
        if new_key is not None and latest_key is not None and new_key < latest_key:
            raise ValueError(
                f"version {version} of {artifact_id} is older than the latest ({latest}); "
                "bump the version in manifest.yaml"
            )
        return "new"
    new = parse_version(version)
    if new is None:
        raise ValueError(f"version {version!r} of {artifact_id} is not a PEP 440 version")
    known = sorted((v, t) for t in tags if (v := parse_version(t)) is not None)
    if version in tags or any(v == new for v, _ in known):
        raise ValueError(
            f"version {version} of {artifact_id} exists already; every upload of a format {FORMAT_06} "
            f"app needs a higher version (latest: {known[-1][1] if known else latest}): bump version "
            "in manifest.yaml"
        )
    if known and new < known[-1][0]:
        raise ValueError(
            f"version {version} of {artifact_id} is older than the latest ({known[-1][1]}); versions "
            f"of a format {FORMAT_06} app only go up: bump version in manifest.yaml"
        )
    return "new"
